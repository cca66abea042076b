"""``kt run``: stage order and resume, config errors, the photo set, the kt CLI; one slow end-to-end run."""
import json
import os

import numpy as np
import pytest

from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError, CaffeFormatError
from caffekt.kt import pipeline as PL
from caffekt.kt.labels import read_labels_bin, read_list


def _config(tmp_path, **extra):
    cfg = {"name": "t", "workdir": str(tmp_path / "work"), "vars": {"photos": str(tmp_path / "photos")},
           "stages": [
               {"name": "photos", "kind": "photos", "out": "{photos}", "crops_per_photo": 4, "size": 32},
               {"name": "hog", "kind": "hog", "images": "{photos}/all.txt", "out": "{workdir}/hog.npy",
                "size": 32, "l2": True, "progress": False},
               {"name": "cluster", "kind": "cluster", "features": "{workdir}/hog.npy", "k": 4,
                "out": "{workdir}/labels.txt", "truth": "{photos}/all.txt"}]}
    cfg.update(extra)
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps(cfg))
    return str(p)


def test_resume_at_first_missing_stage(tmp_path):
    cfg = PL.load_config(_config(tmp_path))
    logs = []
    assert PL.run(cfg, log=logs.append) == ["photos", "hog", "cluster"]
    assert PL.run(cfg, log=logs.append) == []
    labels_before = read_list(str(tmp_path / "work/labels.txt"))[1]
    os.remove(tmp_path / "work/hog.npy")             # a middle output
    mtime = os.path.getmtime(tmp_path / "photos/all.txt")
    assert PL.run(cfg, log=logs.append) == ["hog", "cluster"]
    assert os.path.getmtime(tmp_path / "photos/all.txt") == mtime      # the earlier stage did not run
    assert read_list(str(tmp_path / "work/labels.txt"))[1].tolist() == labels_before.tolist()
    assert "[photos] done (outputs present)" in logs
    os.remove(tmp_path / "work/labels.bin")
    assert PL.run(cfg, only_plan=True, log=logs.append) == ["cluster"]


def test_photo_set_is_cached_and_labelled_by_photo(tmp_path):
    paths = PL.build_photo_set(str(tmp_path / "p"), crops_per_photo=4, size=24, photos=("astronaut", "camera"))
    names, labels = read_list(paths["all"])
    assert len(names) == 8 and labels.tolist() == [0] * 4 + [1] * 4
    assert len(read_list(paths["val"])[0]) == 2 and len(read_list(paths["train"])[0]) == 6
    import cv2
    img = cv2.imread(str(tmp_path / "p" / names[5]))
    assert img.shape == (24, 24, 3)
    assert (img[:, :, 0] == img[:, :, 2]).all()          # the gray photo stays gray in BGR
    t = os.path.getmtime(paths["all"])
    PL.build_photo_set(str(tmp_path / "p"), crops_per_photo=4, size=24, photos=("astronaut", "camera"))
    assert os.path.getmtime(paths["all"]) == t


def test_config_errors(tmp_path):
    with pytest.raises(CaffeFormatError, match=r"stage 'x': unknown kind 'magic'"):
        PL.load_config(_config(tmp_path, stages=[{"name": "x", "kind": "magic"}]))
    with pytest.raises(CaffeFormatError, match=r"stage 'h': unknown variable \{nope\}"):
        PL.load_config(_config(tmp_path, stages=[{"name": "h", "kind": "hog", "images": "{nope}", "out": "a"}]))
    with pytest.raises(CaffeFormatError, match=r"stage name 'a' used twice"):
        PL.load_config(_config(tmp_path, stages=[{"name": "a", "kind": "hog"}, {"name": "a", "kind": "hog"}]))
    cfg = PL.load_config(_config(tmp_path, stages=[{"name": "h", "kind": "hog", "out": "{workdir}/a.npy"}]))
    with pytest.raises(CaffeCompatError, match=r"stage 'h' \(hog\): missing parameter\(s\) \['images'\]"):
        PL.run(cfg, log=lambda s: None)


def test_shipped_configs_load_and_cover_every_row():
    shipped = PL.shipped_configs()
    rows = ["context_cc", "hog_cc", "jigsawpp", "jigsawpp_alexnet_cc", "jigsawpp_vgg16_cc"]
    assert sorted(shipped) == sorted(rows + [r + "_small" for r in rows])
    for name, path in shipped.items():
        cfg = PL.load_config(path)
        kinds = [s["kind"] for s in cfg["stages"]]
        assert kinds[-1] == "probe"
        assert ("train-cc" in kinds) == (name not in ("jigsawpp", "jigsawpp_small"))
        assert ("jigsaw" in kinds) == name.startswith("jigsawpp")
        for s in cfg["stages"]:
            strings = [v for v in s.values() if isinstance(v, str)] + \
                [v for d in s.values() if isinstance(d, dict) for v in d.values() if isinstance(v, str)]
            assert not [v for v in strings if "{" in v], (name, s)      # every variable resolved


def test_cli_cluster_and_errors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    import cv2
    imgs = []
    for i in range(30):
        p = str(tmp_path / f"i{i:02d}.png")
        cv2.imwrite(p, np.full((8, 8, 3), (i % 3) * 100, np.uint8))
        imgs.append(p)
    from caffekt.kt.features import Request, write_rows
    centres = rng.normal(size=(3, 5)) * 10
    truth = np.arange(30) % 3
    x = (centres[truth] + rng.normal(size=(30, 5))).astype(np.float32)
    write_rows(str(tmp_path / "f.npy"), Request(imgs, {"model": "synthetic"}), lambda idx: x[idx], progress=False)
    (tmp_path / "truth.txt").write_text("".join(f"{os.path.basename(p)} {t}\n" for p, t in zip(imgs, truth)))
    out = str(tmp_path / "labels.txt")
    rc = main(["kt", "cluster", str(tmp_path / "f.npy"), "--k", "3", "-o", out, "--truth",
               str(tmp_path / "truth.txt"), "--montage", str(tmp_path / "m.png"), "--hist-png", str(tmp_path / "h.png")])
    text = capsys.readouterr().out
    assert rc == 0 and "NMI 1.0000  purity 1.0000" in text and "cluster sizes: min 10, median 10, max 10" in text
    names, lab = read_list(out)
    assert names == imgs and read_labels_bin(str(tmp_path / "labels.bin")).tolist() == lab.tolist()
    summary = json.load(open(tmp_path / "labels.json"))
    assert summary["sizes"] == [10, 10, 10] and summary["montage_rows"] == 3
    import cv2
    assert cv2.imread(str(tmp_path / "m.png")).shape == (3 * 64, 2 * 64 + 8 * 64, 3)
    # errors: k > images, labels missing from the truth list, NaN rows
    assert main(["kt", "cluster", str(tmp_path / "f.npy"), "--k", "31", "-o", out]) == 2
    assert "k=31 clusters need at least 31 images, the file has 30" in capsys.readouterr().err
    (tmp_path / "truth2.txt").write_text("".join(f"{os.path.basename(p)} 0\n" for p in imgs[:-1]))
    assert main(["kt", "cluster", str(tmp_path / "f.npy"), "--k", "3", "-o", out, "--truth",
                 str(tmp_path / "truth2.txt")]) == 2
    assert "1 of 30 images have no label there (first: '" in capsys.readouterr().err
    with pytest.raises(CaffeCompatError, match=r"features of image '.*i04.png' \(row 4\) contain NaN"):
        write_rows(str(tmp_path / "g.npy"), Request(imgs, {"model": "s"}),
                   lambda idx: np.where(idx[:, None] == 4, np.nan, 1.0) * np.ones((len(idx), 2)), progress=False)


def test_cli_features_bad_blob_exits_2(tmp_path, capsys):
    import cv2
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((30, 30, 3), np.uint8))
    import caffekt.prototxt as shipped
    deploy = os.path.join(os.path.dirname(shipped.__file__), "alexnet_s4_deploy.prototxt")
    rc = main(["kt", "features", "--model", deploy, "--blob", "conv9", "--images", str(tmp_path),
               "-o", str(tmp_path / "f.npy"), "--quiet"])
    assert rc == 2 and "has no blob 'conv9'" in capsys.readouterr().err


@pytest.mark.slow
def test_small_scale_end_to_end_on_photos(tmp_path, monkeypatch):
    """Jigsaw++ teacher -> conv5 features -> k-means -> CC AlexNet -> probes (teacher, student, random init)."""
    monkeypatch.setenv("CAFFEKT_CACHE", str(tmp_path / "cache"))
    cfg = PL.load_config(PL.resolve_config("jigsawpp_alexnet_cc_small"), workdir=str(tmp_path / "w"))
    for st in cfg["stages"]:
        st["progress"] = False
        if st["kind"] == "jigsaw":       # shorter than the shipped small config: a test, not a demo
            st.update(max_iter=10, snapshot=10)
        if st["kind"] == "train-cc":
            st["recipe"].update(max_iter=40, snapshot=40, stepsize=30)
    ran = PL.run(cfg)
    assert ran == ["photos", "jigsaw", "features", "cluster", "train-cc", "probe"]
    rows = list(__import__("csv").reader(open(tmp_path / "w/probes/probes.csv")))
    assert [r[0] for r in rows[1:]] == ["student (CC AlexNet)", "teacher (Jigsaw++ AlexNet tower)", "random init"]
    acc = np.array([[float(v) for v in r[1:]] for r in rows[1:]])
    assert acc.shape == (3, 5) and (acc > 0.125).all()           # above the 8-photo chance everywhere
    print((tmp_path / "w/probes/probes.md").read_text())


def test_cli_run_plan_and_unknown_config(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAFFEKT_CACHE", str(tmp_path / "cache"))
    assert main(["kt", "run", "hog_cc_small", "--plan", "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert [l.split()[0] for l in out.splitlines()] == ["[photos]", "[hog]", "[cluster]", "[train-cc]", "[probe]"]
    assert main(["kt", "run", "no_such_config"]) == 2
    assert "nor a shipped config (shipped: context_cc" in capsys.readouterr().err
    assert main(["kt", "run", "--list"]) == 0 and "jigsawpp_vgg16_cc_small" in capsys.readouterr().out


def test_jigsaw_stage_small_scale_recipe_reaches_the_solver(tmp_path):
    """``solver_type``/``base_lr``/``init``/``dropout`` of a jigsaw stage: an Adam solver at a constant rate."""
    from caffe_compat.io import read_solver
    from caffe_compat.logs import read_log

    photos = PL.build_photo_set(str(tmp_path / "photos"), crops_per_photo=2, size=64)
    out = tmp_path / "jig"
    st = {"name": "jig", "kind": "jigsaw", "images": photos["train"], "out": str(out), "arch": "alexnet",
          "perms": 4, "max_iter": 3, "batch_size": 2, "snapshot": 3, "width": 0.0625, "fc6": 8, "fc7": 8,
          "base_lr": 0.0003, "solver_type": "Adam", "init": "msra", "dropout": 0.0, "progress": False}
    PL._jigsaw(st)
    sp = read_solver(str(out / "solver.prototxt"))
    assert (sp.type, sp.lr_policy, sp.max_iter, sp.snapshot) == ("Adam", "fixed", 3, 3)
    assert sp.base_lr == pytest.approx(3e-4) and sp.momentum2 == pytest.approx(0.999)
    assert sp.snapshot_prefix == str(out / "jigsaw")
    log = read_log(str(out / "jigsaw_log.csv"))
    assert list(log["iter"]) == [0, 1, 2] and np.allclose(log["lr"], 3e-4)   # Caffe logs the iteration before its update
    assert (out / "teacher.caffemodel").stat().st_size > 0
    with pytest.raises(CaffeCompatError, match=r"stage 'jig': solver_type must be a Caffe solver type, got 'Adamw'"):
        PL._jigsaw({**st, "solver_type": "Adamw"})
