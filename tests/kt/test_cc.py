"""Cluster classification: the train net and solver the recipe makes, a short run, resume, label errors."""
import os

import cv2
import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffekt.kt import cc
from caffekt.kt.labels import write_list


def test_default_recipe_is_the_alexnet_imagenet_schedule(tmp_path):
    r = cc.CCRecipe()
    net = cc.train_param(2000, "/x/train_lmdb", r)
    data = net.layer[0]
    assert data.type == "Data" and list(data.top) == ["data", "label"]
    dp, tp = data.data_param, data.transform_param
    assert (dp.source, dp.batch_size, dp.backend) == ("/x/train_lmdb", 256, dp.LMDB)
    assert (tp.crop_size, tp.mirror, list(tp.mean_value)) == (227, True, [104.0, 117.0, 123.0])
    fc8 = [l for l in net.layer if l.name == "fc8_cc"][0]
    assert fc8.inner_product_param.num_output == 2000
    assert [l.type for l in net.layer][-1] == "SoftmaxWithLoss" and "Softmax" not in [l.type for l in net.layer]
    assert [l.name for l in net.layer if l.type == "Convolution"] == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    sp = cc.solver_param("train.prototxt", str(tmp_path / "cc"), r)
    assert (sp.base_lr, sp.lr_policy, sp.gamma, sp.stepsize, sp.max_iter) == (pytest.approx(0.01), "step",
                                                                              pytest.approx(0.1), 100000, 450000)
    assert (sp.momentum, sp.weight_decay, sp.type) == (pytest.approx(0.9), pytest.approx(5e-4), "SGD")
    with pytest.raises(CaffeCompatError, match=r"unknown CC recipe value\(s\) \['lr'\]"):
        r.replace(lr=0.1)


@pytest.fixture()
def labelled(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(8):
        p = str(tmp_path / f"im{i}.png")
        img = np.full((40, 40, 3), 40, np.uint8)
        img[:, :, i % 2 * 2] = 220
        cv2.imwrite(p, img + rng.integers(0, 20, img.shape, dtype=np.uint8))
        paths.append(p)
    lab = str(tmp_path / "labels.txt")
    write_list(lab, paths, [i % 2 for i in range(8)])
    return paths, lab


SMALL = cc.CCRecipe(batch_size=4, resize=72, crop_size=64, max_iter=4, snapshot=2, display=1, stepsize=2)


def test_short_run_snapshots_and_resumes(tmp_path, labelled):
    paths, lab = labelled
    out = str(tmp_path / "cc")
    res = cc.train_cc(lab, out, images=paths, recipe=SMALL.replace(max_iter=2), progress=False)
    assert res.iter == 2 and cc.latest_model(out).endswith("cc_iter_2.caffemodel")
    for f in ("train.prototxt", "deploy.prototxt", "solver.prototxt", "train_list.txt", "labels.bin",
              "train_lmdb/data.mdb"):
        assert os.path.isfile(os.path.join(out, f))
    # the authors' way: labels.bin holds the pseudo-labels in the LMDB's (shuffled) record order
    from caffe_compat.data.jps import read_labels_bin
    from caffe_compat.data.sources import LMDBSource
    db, lab_bin = LMDBSource(os.path.join(out, "train_lmdb")), read_labels_bin(os.path.join(out, "labels.bin"))
    want = {p: i % 2 for i, p in enumerate(paths)}
    assert len(db) == 8 and [want[k.decode().split("_", 1)[1]] for k in db.keys] == lab_bin.tolist()
    seen = []
    res = cc.train_cc(lab, out, images=paths, recipe=SMALL, progress=False,
                      callbacks=[lambda solver, *a: seen.append(solver.iter)])
    assert res.iter == 4 and seen and min(seen) >= 2          # continued from iteration 2
    assert cc.latest_model(out).endswith("cc_iter_4.caffemodel")
    # the snapshot loads as a checkpoint for feature extraction (deploy.prototxt beside it)
    from caffekt.kt.features import extract
    f = extract(paths, str(tmp_path / "f.npy"), checkpoint=cc.latest_model(out), blob="fc8_cc",
                input_size=64, progress=False)
    assert f.shape == (8, 2) and np.isfinite(np.array(f)).all()


def test_label_errors(tmp_path, labelled):
    paths, lab = labelled
    extra = str(tmp_path / "extra.png")
    cv2.imwrite(extra, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(CaffeCompatError, match=r"1 of 9 images have no label there \(first: '.*extra.png'\)"):
        cc.train_cc(lab, str(tmp_path / "o"), images=paths + [extra], recipe=SMALL, progress=False)
    with pytest.raises(CaffeCompatError, match=r"labels go up to 1 but k=1"):
        cc.train_cc(lab, str(tmp_path / "o"), recipe=SMALL, k=1, progress=False)
    bad = str(tmp_path / "bad.txt")
    write_list(bad, [str(tmp_path / "nope.png")], [0])
    with pytest.raises(CaffeCompatError, match=r"image file not found: '.*nope.png'"):
        cc.train_cc(bad, str(tmp_path / "o"), recipe=SMALL, progress=False)
