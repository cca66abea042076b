"""Image sources: ImageData list parsing, root_folder, resize, gray/RGBA files, bad files, folders."""
from __future__ import annotations

import os

import numpy as np
import pytest

from caffe_compat.data import ImageFolderSource, ImageListSource, parse_image_list, read_image
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter
from caffe_compat.proto import caffe_pb2

from _data_images import image_set, write_list, write_png

cv2 = pytest.importorskip("cv2")


def test_list_label_after_last_space_crlf_blank_lines(tmp_path):
    p = tmp_path / "list.txt"
    p.write_bytes(b"a/b c.jpg 3\r\n\nweird name  7 -2\nz.png +4\n")
    e = parse_image_list(str(p))
    assert [(x.path, x.label, x.line) for x in e] == [
        ("a/b c.jpg", 3, 1), ("weird name  7", -2, 3), ("z.png", 4, 4)]


def test_trailing_space_is_refused_not_read_as_label_0(tmp_path):
    # Caffe's find_last_of(' ') leaves an empty label there and atoi reads 0; we say so instead
    p = tmp_path / "list.txt"
    p.write_text("x.png 4 \n")
    with pytest.raises(CaffeFormatError, match=r"line 1:9: label '' is not an integer"):
        parse_image_list(str(p))


def test_list_errors_name_file_line_and_column(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("ok.png 1\nnolabel\n")
    with pytest.raises(CaffeFormatError, match=rf"{p}: line 2:1: expected '<path> <label>'"):
        parse_image_list(str(p))
    p.write_text("ok.png 1\nok2.png 1\nimg.png cat\n")
    with pytest.raises(CaffeFormatError, match=rf"{p}: line 3:9: label 'cat' is not an integer"):
        parse_image_list(str(p))
    p.write_text("\n\n")
    with pytest.raises(CaffeFormatError, match="File is empty"):
        ImageListSource(str(p))
    with pytest.raises(CaffeFormatError, match="cannot read the image list"):
        ImageListSource(str(tmp_path / "nope.txt"))


def test_list_source_reads_bgr_pixels_with_root_folder(tmp_path):
    rows = image_set(str(tmp_path / "imgs"), n=4)
    lst = write_list(str(tmp_path / "list.txt"), rows)
    src = ImageListSource(lst, root_folder=str(tmp_path / "imgs") + "/")   # Caffe concatenates, no separator
    assert len(src) == 4
    np.testing.assert_array_equal(src.labels, [r[1] for r in rows])
    for i, (_name, label, img) in enumerate(rows):
        s = src[i]
        assert s.layout == "HWC" and s.label == label
        np.testing.assert_array_equal(s.image, img)


def test_resize_is_cv2_inter_linear_to_width_height(tmp_path):
    rows = image_set(str(tmp_path), n=1, size=(10, 12))
    lst = write_list(str(tmp_path / "l.txt"), rows)
    src = ImageListSource(lst, root_folder=str(tmp_path) + "/", new_height=7, new_width=5)
    got = src[0].image
    assert got.shape == (7, 5, 3)       # new_height rows, new_width columns
    np.testing.assert_array_equal(got, cv2.resize(rows[0][2], (5, 7), interpolation=cv2.INTER_LINEAR))
    assert not np.array_equal(got, cv2.resize(rows[0][2], (5, 7), interpolation=cv2.INTER_NEAREST))
    with pytest.raises(UnsupportedParameter, match="new_height and new_width to be set at the same time"):
        ImageListSource(lst, new_height=7)


def test_gray_and_rgba_files_become_bgr_like_imread_color(tmp_path):
    gray = np.arange(30, dtype=np.uint8).reshape(5, 6) * 7
    bgra = np.random.default_rng(1).integers(0, 256, (5, 6, 4), dtype=np.uint8)
    write_png(str(tmp_path / "g.png"), gray)
    write_png(str(tmp_path / "a.png"), bgra)
    lst = write_list(str(tmp_path / "l.txt"), [("g.png", 0), ("a.png", 1)])
    src = ImageListSource(lst, root_folder=str(tmp_path) + "/")
    np.testing.assert_array_equal(src[0].image, np.repeat(gray[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(src[1].image, bgra[:, :, :3])    # alpha dropped, BGR kept
    g = ImageListSource(lst, root_folder=str(tmp_path) + "/", is_color=False)
    assert g[0].image.shape == (5, 6, 1)
    np.testing.assert_array_equal(g[0].image[:, :, 0], gray)
    # colour -> gray is OpenCV's own conversion (0.299 R + 0.587 G + 0.114 B, rounded)
    b, gch, r = (bgra[:, :, k].astype(np.float64) for k in range(3))
    want = np.floor(0.299 * r + 0.587 * gch + 0.114 * b + 0.5)
    assert np.abs(g[1].image[:, :, 0].astype(np.float64) - want).max() <= 1


def test_missing_and_corrupt_files_name_file_and_line(tmp_path):
    rows = image_set(str(tmp_path), n=2)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    lst = write_list(str(tmp_path / "l.txt"), rows + [("gone.png", 1), ("broken.png", 2)])
    src = ImageListSource(lst, root_folder=str(tmp_path) + "/")
    with pytest.raises(CaffeFormatError) as e:
        src[2]
    assert str(e.value) == f"{tmp_path}/gone.png: {lst} line 3: Could not open or find file (no such file)"
    with pytest.raises(CaffeFormatError, match=rf"broken\.png: {lst} line 4: Could not decode the image"):
        src[3]
    skip = ImageListSource(lst, root_folder=str(tmp_path) + "/", on_error="skip")
    got = [skip[i] for i in range(4)]
    assert got[2] is None and got[3] is None and got[0].label == rows[0][1]
    assert skip.skipped == 2
    with pytest.raises(UnsupportedParameter, match="on_error"):
        ImageListSource(lst, on_error="ignore")
    with pytest.raises(CaffeFormatError, match="no such file"):
        read_image(str(tmp_path / "nothing.png"))


def test_shuffle_is_a_seeded_permutation(tmp_path):
    rows = [(f"f{i}.png", i) for i in range(20)]
    lst = write_list(str(tmp_path / "l.txt"), rows)
    a = [e.path for e in ImageListSource(lst, shuffle=True, seed=3).entries]
    b = [e.path for e in ImageListSource(lst, shuffle=True, seed=3).entries]
    c = [e.path for e in ImageListSource(lst, shuffle=True, seed=4).entries]
    assert a == b and a != c and sorted(a) == sorted(r[0] for r in rows)
    assert [e.path for e in ImageListSource(lst).entries] == [r[0] for r in rows]


def test_from_image_data_layer(tmp_path):
    lst = write_list(str(tmp_path / "l.txt"), [("x.png", 1)])
    lp = caffe_pb2.LayerParameter(type="ImageData")
    lp.image_data_param.source = lst
    lp.image_data_param.root_folder = "/r/"
    lp.image_data_param.new_height = 4
    lp.image_data_param.new_width = 6
    lp.image_data_param.is_color = False
    src = ImageListSource.from_layer(lp)
    assert (src.root_folder, src.new_height, src.new_width, src.is_color) == ("/r/", 4, 6, False)


def test_image_folder_labels_by_sorted_class_name(tmp_path):
    for cls, names in (("zebra", ["b.png", "a.PNG"]), ("ant", ["c.png", "sub/d.png"]), ("empty", [])):
        os.makedirs(tmp_path / cls, exist_ok=True)
        for n in names:
            write_png(str(tmp_path / cls / n), np.full((3, 4, 3), len(n), np.uint8))
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    src = ImageFolderSource(str(tmp_path))
    assert src.classes == ["ant", "empty", "zebra"]
    assert [(os.path.relpath(e.path, tmp_path), e.label) for e in src.entries] == [
        ("ant/c.png", 0), ("ant/sub/d.png", 0), ("zebra/a.PNG", 2), ("zebra/b.png", 2)]
    assert src[3].image.shape == (3, 4, 3) and src[3].label == 2
    with pytest.raises(CaffeFormatError, match="no class subfolders"):
        ImageFolderSource(str(tmp_path / "ant" / "sub"))
