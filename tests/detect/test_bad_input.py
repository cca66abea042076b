"""Bad input to caffekt detect: typed errors or warnings naming the file and image; configs; selective search."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from caffekt.kt.detect import config as C
from caffekt.kt.detect.proposals import ProposalError, from_file, selective_search
from caffekt.kt.detect.voc import DatasetError, VOCDataset
from _scene_set import CLASSES, scene_set  # noqa: F401  (fixture)


def _copy(scene_set, tmp_path):
    dst = tmp_path / "voc"
    shutil.copytree(scene_set, dst)
    return str(dst)


def test_missing_image_and_annotation(scene_set, tmp_path):
    root = _copy(scene_set, tmp_path)
    os.remove(os.path.join(root, "JPEGImages", "train0003.jpg"))
    with pytest.raises(DatasetError, match=r"train0003\.jpg.*image 'train0003'.*not found"):
        VOCDataset(root, "train", CLASSES)
    root = _copy(scene_set, tmp_path / "b")
    os.remove(os.path.join(root, "Annotations", "train0002.xml"))
    with pytest.raises(DatasetError, match=r"train0002\.xml: annotation file not found"):
        VOCDataset(root, "train", CLASSES).records()
    with pytest.raises(DatasetError, match="image set 'val' not found"):
        VOCDataset(root, "val", CLASSES)


def _edit_xml(root, index, old, new):
    p = os.path.join(root, "Annotations", index + ".xml")
    text = open(p).read()
    assert old in text
    open(p, "w").write(text.replace(old, new, 1))
    return p


def test_boxes_outside_the_image_and_unknown_classes(scene_set, tmp_path):
    root = _copy(scene_set, tmp_path)
    xml = open(os.path.join(root, "Annotations", "train0000.xml")).read()
    xmax = xml.split("<xmax>")[1].split("<")[0]
    p = _edit_xml(root, "train0000", f"<xmax>{xmax}</xmax>", "<xmax>5000</xmax>")
    ds = VOCDataset(root, "train", CLASSES)
    with pytest.warns(UserWarning, match=r"train0000\.xml: object 0: box .* reaches outside .* clipped"):
        rec = ds.records()[0]
    assert rec.boxes[0, 2] == rec.width - 1
    root2 = _copy(scene_set, tmp_path / "c")
    name = open(os.path.join(root2, "Annotations", "train0001.xml")).read().split("<name>")[1].split("<")[0]
    _edit_xml(root2, "train0001", f"<name>{name}</name>", "<name>zebra</name>")
    with pytest.raises(DatasetError, match=r"train0001\.xml: object 0: class 'zebra' is not one of the net's"):
        VOCDataset(root2, "train", CLASSES).records()
    assert p.endswith("train0000.xml")


def test_proposal_problems_name_the_image(scene_set, tmp_path):
    root = _copy(scene_set, tmp_path)
    recs = VOCDataset(root, "train", CLASSES).records()
    np.save(os.path.join(root, "proposals", "train0004.npy"), np.zeros((0, 4), np.float32))
    r = recs[0]
    np.save(os.path.join(root, "proposals", "train0000.npy"),
            np.array([[-5, 3, 20, 30], [10, 10, 2, 40], [0, 0, r.width + 50, 9]], np.float32))
    with pytest.warns(UserWarning) as w:
        props = from_file(os.path.join(root, "proposals"), recs)
    msgs = [str(x.message) for x in w]
    assert any("train0004" in m and "no object proposals" in m for m in msgs)
    assert any("train0000" in m and "2 proposal(s) reach outside" in m and "1 empty one(s) dropped" in m
               for m in msgs)
    np.testing.assert_array_equal(props[0], [[0, 3, 20, 30], [0, 0, r.width - 1, 9]])
    os.remove(os.path.join(root, "proposals", "train0005.npy"))
    with pytest.raises(ProposalError, match="train0005.npy for image 'train0005'"):
        from_file(os.path.join(root, "proposals"), recs)


def test_training_with_an_image_without_proposals_still_samples_its_ground_truth(scene_set, tmp_path):
    from caffekt.kt.detect.roidb import training_roidb
    recs = VOCDataset(scene_set, "train", CLASSES).records()
    props = [np.zeros((0, 4), np.float32) for _ in recs]
    with pytest.warns(UserWarning, match="zero spread"):
        entries, means, stds = training_roidb(recs, props, 4, C.load())
    assert len(entries) == 2 * len(recs)
    assert all((e["max_overlaps"] == 1).all() for e in entries)
    assert np.isfinite(np.concatenate([e["bbox_targets"] for e in entries])).all()


def test_selective_search_without_contrib_is_a_typed_error(monkeypatch):
    import caffekt.kt.detect.proposals as P
    monkeypatch.setattr(P, "has_selective_search", lambda: False)
    with pytest.raises(ProposalError, match="opencv-contrib-python-headless"):
        selective_search(np.zeros((20, 20, 3), np.uint8))


def test_selective_search_finds_the_pasted_objects(scene_set):
    from caffekt.kt.detect import boxes as B
    from caffekt.kt.detect.proposals import has_selective_search
    if not has_selective_search():
        pytest.skip("cv2.ximgproc (opencv-contrib-python-headless) not installed")
    import cv2
    rec = VOCDataset(scene_set, "train", CLASSES).records()[0]
    boxes = selective_search(cv2.imread(rec.image), "fast")
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and 0 < boxes.shape[0] <= 2000
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] < rec.height).all()
    # some proposal overlaps each ground-truth object well
    assert B.overlaps(rec.boxes, boxes).max(axis=1).min() > 0.5


def test_configs(tmp_path):
    paper = C.load("voc07_paper")
    assert paper["TRAIN"]["SCALES"] == [480, 576, 688, 864, 1200] and paper["TRAIN"]["MAX_SIZE"] == 2000
    assert paper["TEST"]["MAX_SIZE"] == 2000
    assert paper["SOLVER"]["base_lr"] == 0.001 and paper["SOLVER"]["stepsize"] == 50000
    assert paper["SOLVER"]["max_iter"] == 150000
    yml = tmp_path / "ms.yml"
    yml.write_text("EXP_DIR: ms\nTRAIN:\n  SCALES: !!python/tuple [480, 576]\n  MAX_SIZE: 2000\n")
    cfg = C.load(str(yml))
    assert cfg["TRAIN"]["SCALES"] == [480, 576] and cfg["TRAIN"]["IMS_PER_BATCH"] == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"TRAIN": {"SCALE": [600]}}')
    with pytest.raises(Exception, match=r"bad\.json: TRAIN\.SCALE is not a Fast R-CNN config key"):
        C.load(str(bad))
    with pytest.raises(Exception, match="type mismatch for TRAIN.MAX_SIZE"):
        C.load(None, {"TRAIN": {"MAX_SIZE": "big"}})
    with pytest.raises(Exception, match="must divide"):
        C.load(None, {"TRAIN": {"IMS_PER_BATCH": 3}})


def test_cli_reports_bad_input_without_a_traceback(tmp_path, capsys):
    from caffe_compat.cli import main
    rc = main(["detect", "train", "--solver", str(tmp_path / "s.prototxt"), "--dataset", str(tmp_path / "nope"),
               "--split", "trainval", "-o", str(tmp_path / "o"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "dataset folder not found" in err and "Traceback" not in err


def test_proposals_command_caches_and_resumes(scene_set, tmp_path, capsys):
    from caffe_compat.cli import main
    from caffekt.kt.detect.proposals import has_selective_search
    if not has_selective_search():
        pytest.skip("cv2.ximgproc (opencv-contrib-python-headless) not installed")
    out = tmp_path / "ss"
    argv = ["detect", "proposals", "--dataset", scene_set, "--split", "test", "--classes", ",".join(CLASSES),
            "-o", str(out), "--quiet"]
    assert main(argv) == 0
    files = sorted(os.listdir(out))
    assert files == sorted(i + ".npy" for i in open(os.path.join(scene_set, "ImageSets", "Main", "test.txt")).read().split())
    stamp = {f: os.stat(out / f).st_mtime_ns for f in files}
    os.remove(out / files[0])          # an interrupted run: one image missing, no temp files left
    assert main(argv) == 0
    assert sorted(os.listdir(out)) == files
    assert all(os.stat(out / f).st_mtime_ns == stamp[f] for f in files[1:])   # the others were reused
    assert "8 images" in capsys.readouterr().out
