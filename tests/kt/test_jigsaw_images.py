"""Stored 255x255 images: decoding like cv2.IMREAD_COLOR, errors naming the file, skip, resume; the CLI."""
import json
import os

import cv2
import numpy as np
import pytest

from caffe_compat.cli import main
from caffe_compat.errors import CaffeFormatError
from caffekt.kt import images as I
from caffekt.kt.puzzle import stored_image


def _write_set(d):
    rng = np.random.default_rng(0)
    os.makedirs(d / "sub", exist_ok=True)
    cv2.imwrite(str(d / "a_colour.png"), (rng.random((300, 400, 3)) * 255).astype(np.uint8))
    cv2.imwrite(str(d / "b_gray.png"), (rng.random((260, 260)) * 255).astype(np.uint8))
    rgba = (rng.random((280, 270, 4)) * 255).astype(np.uint8)
    cv2.imwrite(str(d / "sub" / "c_rgba.png"), rgba)
    cv2.imwrite(str(d / "sub" / "d.jpg"), (rng.random((256, 512, 3)) * 255).astype(np.uint8))
    return sorted(str(p) for p in [d / "a_colour.png", d / "b_gray.png", d / "sub" / "c_rgba.png",
                                   d / "sub" / "d.jpg"])


def test_prep_matches_imread_color_and_the_fork_resize(tmp_path):
    files = _write_set(tmp_path / "img")
    man = I.prep_stored(str(tmp_path / "img"), str(tmp_path / "st"))
    st = I.StoredImages(str(tmp_path / "st"))
    assert man["count"] == len(st) == 4 and st.sources == files
    for k, f in enumerate(files):
        want = stored_image(cv2.imread(f, cv2.IMREAD_COLOR))  # gray -> 3 equal channels, RGBA -> BGR
        assert np.array_equal(st[k], want)
    assert np.array_equal(st[1][..., 0], st[1][..., 2])
    assert os.path.getsize(tmp_path / "st" / "images.u8") == 4 * 255 * 255 * 3
    # a list file (Caffe style, labels dropped) gives the same set
    lst = tmp_path / "list.txt"
    lst.write_text("".join(f"{os.path.relpath(f, tmp_path)} 3\n" for f in files))
    assert I.list_images(str(lst)) == files


def test_corrupt_file_is_named_or_skipped(tmp_path):
    files = _write_set(tmp_path / "img")
    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    with pytest.raises(CaffeFormatError, match=r"broken\.jpg.*--skip-bad"):
        I.prep_stored(str(tmp_path / "img"), str(tmp_path / "st"))
    man = I.prep_stored(str(tmp_path / "img"), str(tmp_path / "st2"), skip_bad=True)
    assert man["count"] == 4 and [s["path"] for s in man["skipped"]] == [str(tmp_path / "img" / "broken.jpg")]
    assert I.StoredImages(str(tmp_path / "st2")).sources == files


def test_prep_resumes_after_a_kill_and_refuses_another_set(tmp_path):
    files = _write_set(tmp_path / "img")
    ref = I.prep_stored(files, str(tmp_path / "ref"))
    out = tmp_path / "st"
    I.prep_stored(files[:2], str(out), chunk=1)           # pretend: first two done ...
    os.remove(out / "manifest.json")
    prog = {"inputs_sha256": I._inputs_digest(files), "next": 2, "count": 2, "skipped": [],
            "stored_index": [0, 1]}
    (out / "progress.json").write_text(json.dumps(prog))
    with open(out / "images.u8", "ab") as f:              # ... plus a torn write of the third
        f.write(b"\x07" * 1000)
    with pytest.raises(CaffeFormatError, match="preparation unfinished"):
        I.StoredImages(str(out))
    I.prep_stored(files, str(out), chunk=1)
    a, b = I.StoredImages(str(out)), I.StoredImages(str(tmp_path / "ref"))
    assert ref["count"] == 4
    assert a.sources == b.sources and np.array_equal(np.asarray(a._array()), np.asarray(b._array()))
    with pytest.raises(CaffeFormatError, match="different image set"):
        I.prep_stored(files[:3], str(out))
    with open(out / "images.u8", "ab") as f:
        f.write(b"x")
    with pytest.raises(CaffeFormatError, match="manifest says 4 images"):
        I.StoredImages(str(out))


def test_cli_prep_train_eval_smoke(tmp_path, fixtures_dir, capsys):
    _write_set(tmp_path / "img")
    perms = os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin")
    st, out = str(tmp_path / "st"), str(tmp_path / "run")
    assert main(["kt", "jigsaw", "prep", "--images", str(tmp_path / "img"), "-o", st, "--quiet"]) == 0
    assert "4 stored images, 0 skipped" in capsys.readouterr().out
    assert main(["kt", "jigsaw", "train", "--stored", st, "--perms", perms, "--max-iter", "2", "--batch-size", "2",
                 "--width", "0.125", "--fc6", "16", "--fc7", "16", "-o", out, "--quiet"]) == 0
    assert "trained 2 iterations" in capsys.readouterr().out
    model = os.path.join(out, "jigsaw_iter_2.caffemodel")
    assert os.path.exists(model) and len(open(os.path.join(out, "jigsaw_log.csv")).read().splitlines()) == 3
    assert main(["kt", "jigsaw", "eval", "--model", model, "--stored", st, "--perms", perms, "--puzzles", "3",
                 "--batch-size", "2", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["puzzles"] == 3 and res["permutations"] == 701 and 0 <= res["accuracy"] <= 1
    # bad input: exit 2 with the file named
    assert main(["kt", "jigsaw", "eval", "--model", model, "--stored", str(tmp_path / "img"), "--perms", perms]) == 2
    assert "manifest.json: not a stored-image folder" in capsys.readouterr().err
    assert main(["kt", "jigsaw", "perms", "--n", "5", "-o", str(tmp_path / "p.bin")]) == 0
    assert "5 permutations of 9 tiles" in capsys.readouterr().out


def test_image_paths_and_open_images_prep_into(tmp_path, monkeypatch):
    paths = _write_set(tmp_path / "img")
    monkeypatch.chdir(tmp_path)
    assert I.image_paths("img") == paths          # absolute, whatever the working directory
    got = I.open_images(images="img", prep_into="st")
    assert isinstance(got, I.StoredImages) and len(got) == 4
    np.testing.assert_array_equal(got[3], I.load_stored(paths[3]))
    assert isinstance(I.open_images(images="img"), I.ImageFiles)


def test_perms_file_defaults_to_the_nets_hash_file(tmp_path, monkeypatch):
    from caffekt.kt.jigsaw import perms_file
    net = tmp_path / "net" / "train_val.prototxt"
    net.parent.mkdir()
    net.write_text('layer { name: "data" type: "Data" top: "data" transform_param { hash_file: "p.bin" } }\n')
    (net.parent / "p.bin").write_bytes(b"")
    monkeypatch.chdir(tmp_path)                      # not beside the net: the fork's cwd rule fails
    assert perms_file("given.npy", str(net)) == "given.npy"
    assert perms_file(None, str(net)) == str(net.parent / "p.bin")
    assert perms_file(None, None) is None
