"""``caffekt demo --quick`` end to end: the report's files and numbers, and the exports loaded back.

The demo runs once per module (a subprocess of the real console script, as a
user types it); the tests read what it wrote and check it against
independent readers: the Fast R-CNN caffemodel through a strict
``CopyTrainedLayersFrom`` into the built-in target and the fixture's Fast
R-CNN CaffeNet, its conv blobs against the student's own caffemodel, the
ONNX file in onnxruntime against our module on a real photo crop.
"""
from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import FIXTURES

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
MODELS = ("student (CC, AlexNet s4)", "teacher (Jigsaw++ tower)", "random init")


def _caffekt(*args, cwd=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "caffe_compat.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    out, cache = root / "out", root / "cache"
    proc = _caffekt("demo", "--quick", "-o", str(out), "--cache", str(cache), "--quiet", cwd=str(root))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with open(out / "report" / "summary.json", encoding="utf-8") as f:
        summary = json.load(f)
    return {"out": out, "cache": cache, "stdout": proc.stdout, "summary": summary}


@pytest.mark.slow
def test_stage_lines_and_report_location(demo):
    lines = demo["stdout"].splitlines()
    stages = [l for l in lines if l.startswith("== [")]
    assert [s[:8] for s in stages] == [f"== [{i}/8]" for i in range(1, 9)]
    last = lines[-1]
    assert last.startswith("demo finished in ") and last.endswith(str(demo["out"] / "report" / "report.md"))


@pytest.mark.slow
def test_report_files_and_figures(demo):
    import cv2
    rep = demo["out"] / "report"
    for name, min_hw in (("loss_curves.png", (200, 400)), ("clusters.png", (200, 200)),
                         ("cluster_sizes.png", (100, 100)), ("probes.png", (100, 200))):
        img = cv2.imread(str(rep / name), cv2.IMREAD_COLOR)
        assert img is not None, name
        assert img.shape[0] >= min_hw[0] and img.shape[1] >= min_hw[1], (name, img.shape)
        assert img.std() > 5, f"{name} is blank"
    md = (rep / "report.md").read_text()
    for fig in ("clusters.png", "cluster_sizes.png", "loss_curves.png", "probes.png"):
        assert f"]({fig})" in md
    # the image set went to the cache folder given, not into the report
    d = demo["summary"]["data"]
    stamp = "fashion_mnist.json" if d["kind"] == "fashion-mnist" else "photo_set.json"
    assert os.path.dirname(d["dir"]) == str(demo["cache"]) and os.path.isfile(os.path.join(d["dir"], stamp))
    assert ("data: Fashion-MNIST from" if d["kind"] == "fashion-mnist" else "data: scikit-image's photos") \
        in demo["stdout"]


@pytest.mark.slow
def test_probe_numbers_are_accuracies_and_match_the_report(demo):
    s = demo["summary"]
    assert set(s["probes"]) == set(MODELS)
    d = s["data"]
    test_list = "test.txt" if d["kind"] == "fashion-mnist" else "val.txt"
    val = [l.split() for l in open(os.path.join(d["dir"], test_list)).read().splitlines()]
    n_val = len(val)
    if d["kind"] == "fashion-mnist":
        assert n_val == d["probe_test"] == s["scale"]["fm_test"] and d["probe_train"] == s["scale"]["fm_train"]
    else:
        assert d["probe_test"] == n_val == 80 and d["probe_train"] == 240
    assert s["probe_chance"] == pytest.approx(np.bincount([int(v[1]) for v in val]).max() / n_val)
    md = (demo["out"] / "report" / "report.md").read_text()
    with open(demo["out"] / "report" / "probes.csv", newline="") as f:
        rows = {r[0]: r[1:] for r in list(csv.reader(f))[1:]}
    for m in MODELS:
        accs = [s["probes"][m][l] for l in LAYERS]
        for a in accs:
            assert 0.0 <= a <= 1.0
            assert round(a * n_val) == pytest.approx(a * n_val, abs=1e-4)   # a count of val images
        assert [float(x) for x in rows[m]] == pytest.approx(accs, abs=1e-6)
        row = re.search(r"^\| " + re.escape(m) + r" \|(.*)\|$", md, re.M)
        assert row, m
        assert [float(x) for x in row.group(1).split("|")] == pytest.approx([100 * a for a in accs], abs=0.051)
    # trained nets must beat chance somewhere (8 photos: chance 12.5%; 10 garment classes: 10%)
    assert max(s["probes"]["student (CC, AlexNet s4)"].values()) > 2 * s["probe_chance"]
    # the report says it in words: resolution of the test set and chance
    assert f"one image is {100 / n_val:.2f} points" in md and f"Chance (the most frequent class) is " \
        f"{100 * s['probe_chance']:.1f}%" in md


@pytest.mark.slow
def test_training_and_cluster_numbers(demo):
    s = demo["summary"]
    sc = s["scale"]
    assert s["jigsaw"]["iterations"] == sc["jigsaw_iter"] and s["cc"]["iterations"] == sc["cc_iter"]
    for part in ("jigsaw", "cc"):
        assert np.isfinite(s[part]["first"]) and np.isfinite(s[part]["last_mean"])
    pz = s["jigsaw"]["puzzles"]
    assert pz["puzzles"] == sc["puzzles_eval"] and pz["chance"] == pytest.approx(1 / sc["jigsaw_perms"])
    assert 0.0 <= pz["accuracy"] <= 1.0
    cl = s["cluster"]
    d = s["data"]
    assert cl["k"] == sc["k"] and sum(cl["sizes"]) == cl["images"] == d["clustered"]
    assert cl["images"] == (sc["fm_train"] if d["kind"] == "fashion-mnist" else 320)
    assert 0.0 <= cl["nmi"] <= 1.0 and 1 / 10 <= cl["purity"] <= 1.0
    labels = (demo["out"] / "work" / "pseudo_labels.txt").read_text().split("\n")
    got = np.bincount([int(l.split()[-1]) for l in labels if l.strip()], minlength=cl["k"])
    assert got.tolist() == cl["sizes"]


@pytest.mark.slow
def test_frcnn_caffemodel_loads_strictly_and_carries_the_students_convs(demo):
    from caffe_compat.binary import read_caffemodel
    from caffe_compat.net import load_net
    from caffe_compat.weights import copy_trained_layers
    from caffekt.converters.fast_rcnn import frcnn_target

    path = demo["out"] / "export" / "student_frcnn_caffenet.caffemodel"
    assert demo["summary"]["exports"]["frcnn"]["ok"] is True
    net = load_net(frcnn_target("caffenet"), phase="TEST")
    rep = copy_trained_layers(net, str(path), strict=True)
    assert rep.untouched == [] and rep.mismatched == []
    assert set(rep.copied) == {"conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "cls_score", "bbox_pred"}
    with read_caffemodel(str(demo["out"] / "work" / "cc" / "final.caffemodel")) as cm:
        student = {l.name: [np.array(b) for b in l.blobs] for l in cm.layers}
    for layer in LAYERS:
        for a, b in zip(student[layer], net.blobs_by_layer[layer]):
            np.testing.assert_array_equal(np.asarray(a).reshape(b.shape), b.detach().numpy())
    proto = os.path.join(FIXTURES, "fast-rcnn", "CaffeNet", "test.prototxt")
    if os.path.isfile(proto):   # the released Fast R-CNN CaffeNet test net, its Python data layer as inputs
        fx = load_net(proto, phase="TEST", python_layers="as_input")
        rep = copy_trained_layers(fx, str(path), strict=True)
        assert rep.untouched == [] and rep.mismatched == []


@pytest.mark.slow
def test_onnx_file_runs_in_onnxruntime_like_our_module(demo):
    import cv2
    import onnxruntime as ort
    import torch

    from caffe_compat.net import load_net

    s = demo["summary"]["exports"]["onnx"]
    assert s["ok"] and s["checker"] == "ok" and all(o["max_rel_err"] <= 1e-5 for o in s["outputs"])
    work = demo["out"] / "work" / "cc"
    net = load_net(str(work / "deploy.prototxt"), weights=str(work / "final.caffemodel"), phase="TEST",
                   input_shapes={"data": (1, 3, 64, 64)})
    net.eval()
    # a real image of the set, mean-subtracted by hand (not the package's preprocessing)
    d = demo["summary"]["data"]
    first = open(os.path.join(d["dir"], "train.txt")).readline().split()[0]
    img = cv2.imread(os.path.join(d["dir"], first), cv2.IMREAD_COLOR)
    x = (cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(np.float32)
         - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)[None]
    x = np.concatenate([x, x[:, :, ::-1].copy()])   # batch 2: the axis is dynamic
    sess = ort.InferenceSession(str(demo["out"] / "export" / "student_alexnet_s4.onnx"),
                                providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, {sess.get_inputs()[0].name: x})
    with torch.no_grad():
        ours = net.forward_all(data=torch.from_numpy(x))["prob"].numpy()
    assert got.shape == ours.shape == (2, demo["summary"]["cluster"]["k"])
    np.testing.assert_allclose(got.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(got, ours, rtol=1e-4, atol=1e-6)


def test_tower_deploy_at_full_width_is_the_shipped_tower():
    from caffe_compat.io import read_net
    from caffekt.kt.demo import tower_deploy_param
    from caffekt.prototxt import path

    got = read_net(path("jigsaw_cfn_tower_s2_deploy.prototxt"))
    shipped = got[0] if isinstance(got, tuple) else got
    ours = tower_deploy_param("alexnet", width=1.0, fc6=1024)
    assert [l.SerializeToString() for l in ours.layer] == [l.SerializeToString() for l in shipped.layer]
    narrow = tower_deploy_param("alexnet", width=0.25, fc6=256)
    outs = [l.convolution_param.num_output for l in narrow.layer if l.type == "Convolution"]
    assert outs == [24, 64, 96, 96, 64]
    assert [l.name for l in narrow.layer][-2:] == ["fc6", "relu6"]


def test_refuses_a_folder_it_did_not_make(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    proc = _caffekt("demo", "--quick", "-o", str(tmp_path), "--cache", str(tmp_path / "c"))
    assert proc.returncode == 2
    assert "is not a caffekt demo folder" in proc.stderr and str(tmp_path) in proc.stderr
    assert sorted(os.listdir(tmp_path)) == ["mine.txt"]


def test_help():
    proc = _caffekt("demo", "--help")
    assert proc.returncode == 0
    for flag in ("--quick", "-o DIR, --output DIR", "--seed", "--quiet"):
        assert flag in proc.stdout


def test_threads_one_on_a_busy_machine_else_torchs(monkeypatch):
    import torch

    from caffekt.kt import demo as d
    assert d.pick_threads(3) == 3
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(os, "getloadavg", lambda: (1.6, 1.0, 1.0))
    assert d.pick_threads() == 1
    monkeypatch.setattr(os, "getloadavg", lambda: (0.3, 1.0, 1.0))
    assert d.pick_threads() == 1          # 2 cores: one is likely someone else's soon
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert d.pick_threads() == torch.get_num_threads()
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 1.0, 1.0))
    assert d.pick_threads() == 1


def test_smoothing_smooths_and_matches_a_convolution():
    from caffekt.kt.demo import smooth
    rng = np.random.default_rng(0)
    x = 2.0 + rng.normal(size=400)
    y = smooth(x, 20)
    # trailing window: after the first 20 values, the mean of the last 20 (an independent np.convolve)
    np.testing.assert_allclose(y[19:], np.convolve(x, np.ones(20) / 20, mode="valid"), rtol=1e-12)
    np.testing.assert_allclose(y[:3], [x[0], x[:2].mean(), x[:3].mean()])
    assert y[19:].std() < x.std() / 3   # it smooths
    z = x.copy()
    z[5] = np.nan
    assert np.isfinite(smooth(z, 20)).all()


def test_probe_words_name_resolution_chance_and_margins():
    from caffekt.kt.demo import probe_words
    probes = {"student (CC, AlexNet s4)": {"conv1": 0.80, "conv2": 0.86}, "teacher (Jigsaw++ tower)": {"conv1": 0.70},
              "random init": {"conv1": 0.85, "conv2": 0.84}}
    text = probe_words(probes, 0.1, 2000, 5000, "test images")
    assert "scored on 5000 test images: one image is 0.02 points" in text
    assert "Chance (the most frequent class) is 10.0%" in text
    margin = 200 * np.sqrt(2 * 0.86 * 0.14 / 5000)
    assert f"less than about {margin:.1f} points" in text
    assert "student (CC, AlexNet s4) is level with (within the noise) random init by 1.0 points" in text
    assert "teacher (Jigsaw++ tower) trails random init by 15.0 points" in text
    assert "Best layer per net: student (CC, AlexNet s4) 86.0% (conv2), random init 85.0% (conv1)" in text
