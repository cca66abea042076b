"""``caffekt parity``: our module against real Caffe, OpenCV dnn and our ONNX export.

The CaffeNet cases use random weights written by our own caffemodel writer
and a small input (1x3x67x67, which fc6 is sized for), so they stay quick.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from _oracle import require_oracle
from caffe_compat.cli import main

CAFFENET_BLOBS = ["data", "conv1", "pool1", "norm1", "conv2", "pool2", "norm2", "conv3", "conv4",
                  "conv5", "pool5", "fc6", "fc7", "fc8", "prob"]
SMALL = """
name: "small"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 11 dim: 10 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
layer { name: "drop" type: "Dropout" bottom: "pool1" top: "pool1" dropout_param { dropout_ratio: 0.5 } }
layer { name: "prob" type: "Softmax" bottom: "pool1" top: "prob" }
"""
# Both documented OpenCV deviations: LRN with k != 1, and a ceil-mode MAX
# window wholly past the image (5 rows, kernel 1, stride 3 -> rows 0, 3, 6).
DEVIANT = """
name: "deviant"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 4 dim: 5 dim: 5 } } }
layer { name: "norm" type: "LRN" bottom: "data" top: "norm" lrn_param { local_size: 3 alpha: 0.5 k: 2 } }
layer { name: "pool" type: "Pooling" bottom: "norm" top: "pool" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
"""


def _random_caffemodel(prototxt: str, path: str, input_shapes=None, seed: int = 0) -> str:
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), written with our writer."""
    import torch

    from caffe_compat import load_net
    from caffe_compat.weights import save_caffemodel

    net = load_net(prototxt, input_shapes=input_shapes)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.learnable_params():
            std = (1.0 / p[0].numel()) ** 0.5 if p.dim() > 1 else 0.1
            p.normal_(0.0, std, generator=g)
    save_caffemodel(net, path)
    return path


def _write(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def caffenet(fixtures_dir, tmp_path_factory):
    deploy = os.path.join(fixtures_dir, "bvlc", "bvlc_reference_caffenet", "deploy.prototxt")
    if not os.path.isfile(deploy):
        pytest.skip(f"{deploy} not found")
    model = str(tmp_path_factory.mktemp("caffenet") / "random.caffemodel")
    _random_caffemodel(deploy, model, input_shapes={"data": (1, 3, 67, 67)})
    return deploy, model


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("small"))
    proto = _write(d, "small.prototxt", SMALL)
    return proto, _random_caffemodel(proto, os.path.join(d, "small.caffemodel"))


def _parity_json(capsys, *argv):
    rc = main(["parity", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


def _check_caffenet(rc, doc, backend):
    assert rc == 0, doc["failed"]
    assert doc["backend"] == backend and doc["ok"] is True
    assert doc["inputs"] == {"data": [1, 3, 67, 67]}
    assert [b["name"] for b in doc["blobs"]] == CAFFENET_BLOBS
    shapes = {b["name"]: b["shape"] for b in doc["blobs"]}
    assert shapes["conv1"] == [1, 96, 15, 15] and shapes["pool5"] == [1, 256, 1, 1]
    assert shapes["fc6"] == [1, 4096] and shapes["prob"] == [1, 1000]
    for b in doc["blobs"]:
        assert b["status"] == "ok" and b["max_abs_err"] <= 1e-4, b
    assert doc["compared"] == len(CAFFENET_BLOBS)


def test_caffenet_vs_opencv(caffenet, capsys):
    pytest.importorskip("cv2")
    deploy, model = caffenet
    rc, doc = _parity_json(capsys, deploy, model, "--backend", "opencv", "--input-shape", "1,3,67,67")
    _check_caffenet(rc, doc, "opencv")
    assert doc["notes"] == {}  # CaffeNet's LRN has k = 1 and no empty pooling window


def test_caffenet_vs_onnxruntime(caffenet, capsys):
    pytest.importorskip("onnxruntime")
    deploy, model = caffenet
    rc, doc = _parity_json(capsys, deploy, model, "--backend", "onnxruntime",
                           "--input-shape", "data=1,3,67,67", "--seed", "3")
    _check_caffenet(rc, doc, "onnxruntime")
    assert doc["seed"] == 3


@pytest.mark.caffe
def test_caffenet_vs_real_caffe(caffenet, capsys):
    exe = require_oracle()
    deploy, model = caffenet
    rc, doc = _parity_json(capsys, deploy, model, "--backend", "caffe", "--input-shape", "1,3,67,67",
                           "--caffe-python", exe)
    _check_caffenet(rc, doc, "caffe")


def test_table_output(small, capsys):
    pytest.importorskip("onnxruntime")
    proto, model = small
    assert main(["parity", proto, model, "--backend", "onnxruntime"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"parity vs onnxruntime: {proto} + {model}"
    # the random input's law and what it holds
    assert out[1].startswith("input data 2x3x11x10: N(0, 1) float32, seed 0 (mean ")
    assert out[2].startswith("judged against our module in float64")
    assert out[3].split() == ["blob", "shape", "scale", "ours32", "vs", "f64", "onnxruntime", "vs",
                              "f64", "allowed", "ok"]
    rows = {ln.split()[0]: ln.split() for ln in out[5:-1]}
    assert list(rows) == ["data", "conv1", "pool1", "prob"]
    assert rows["pool1"][1] == "2x8x3x2" and all(r[-1] == "yes" for r in rows.values())
    assert float(rows["conv1"][4]) <= float(rows["conv1"][5])  # the backend's distance <= allowed
    assert out[-1] == "OK: 4 blobs agree within float32 rounding"


def test_json_schema(small, capsys):
    pytest.importorskip("onnxruntime")
    proto, model = small
    rc, doc = _parity_json(capsys, proto, model, "--backend", "onnxruntime", "--atol", "1e-3",
                           "--rtol", "0")
    assert rc == 0
    assert set(doc) == {"schema", "backend", "prototxt", "weights", "seed", "atol", "rtol", "slack",
                        "input_law", "inputs", "ok", "compared", "failed", "notes", "blobs"}
    assert doc["schema"] == "caffekt.parity/2" and doc["atol"] == 1e-3 and doc["rtol"] == 0
    assert doc["slack"] == 16.0
    assert doc["failed"] == [] and doc["compared"] == 4
    for b in doc["blobs"]:
        assert set(b) == {"name", "shape", "ref_shape", "max_abs_err", "max_rel_err", "scale",
                          "ours_f64_err", "ref_f64_err", "limit", "ok", "status", "note"}
        assert b["ref_shape"] == b["shape"] and isinstance(b["max_abs_err"], float)
        assert b["limit"] == pytest.approx(1e-3 / b["scale"] + 16 * b["ours_f64_err"])


def test_opencv_deviations_exit_1_and_are_flagged(tmp_path, capsys):
    pytest.importorskip("cv2")
    proto = _write(str(tmp_path), "dev.prototxt", DEVIANT)
    model = _random_caffemodel(proto, str(tmp_path / "dev.caffemodel"))
    rc, doc = _parity_json(capsys, proto, model, "--backend", "opencv")
    assert rc == 1 and doc["ok"] is False
    assert doc["failed"] == ["norm", "pool"]
    assert set(doc["notes"]) == {"norm", "pool"}
    by = {b["name"]: b for b in doc["blobs"]}
    assert "k = 2" in by["norm"]["note"] and "-FLT_MAX" in by["pool"]["note"]
    # the empty window: Caffe's -FLT_MAX against OpenCV's 0
    assert by["pool"]["max_abs_err"] == pytest.approx(3.4028235e38, rel=1e-6)
    assert main(["parity", proto, model, "--backend", "opencv"]) == 1
    out = capsys.readouterr().out
    assert "* known OpenCV deviation at layer norm" in out and "FAILED: 2 of 3 blobs differ beyond float32 rounding: norm, pool" in out


def test_tolerance_decides_exit_code(small, capsys):
    pytest.importorskip("cv2")
    proto, model = small
    rc, doc = _parity_json(capsys, proto, model, "--backend", "opencv", "--atol", "0", "--rtol", "0",
                           "--slack", "0")
    errs = {b["name"]: b["ref_f64_err"] for b in doc["blobs"]}
    # with no slack OpenCV must be exactly where float64 is; the verdict must follow the numbers
    assert rc == (0 if all(e == 0 for e in errs.values()) else 1)
    assert errs["data"] == 0.0 and rc == 1   # conv1 in float32 is not exact


@pytest.mark.parametrize("argv, message", [
    (["--backend", "opencv", "--input-shape", "1,3,x"], None),  # argparse: not integers
    (["--backend", "tensorflow"], None),
    (["--backend", "opencv", "--input-shape", "img=1,3,9,9"], "not an input of the net"),
    (["--backend", "caffe", "--caffe-python", "/nonexistent/python"], "no oracle python at /nonexistent"),
])
def test_bad_input_exits_2(small, capsys, argv, message):
    proto, model = small
    try:
        rc = main(["parity", proto, model, *argv])
    except SystemExit as e:  # argparse rejects before run()
        rc = e.code
    assert rc == 2
    if message:
        assert message in capsys.readouterr().err


def test_missing_weights_exit_2(small, tmp_path, capsys):
    proto, _ = small
    assert main(["parity", proto, str(tmp_path / "none.caffemodel"), "--backend", "opencv"]) == 2
    assert "none.caffemodel" in capsys.readouterr().err


def test_compare_blob_rules():
    from caffe_compat.parity import compare_blob
    ref = np.array([1.0, -2.0, 1e-9], np.float32)
    r = compare_blob("x", ref + np.float32(1e-5), ref, atol=1e-4, rtol=0)
    assert r.status == "ok" and r.max_abs_err == pytest.approx(1e-5, rel=1e-2)
    assert r.max_rel_err == pytest.approx(1e-5, rel=1e-2)  # the 1e-9 element is below atol: not counted
    assert compare_blob("x", ref * 1.01, ref, atol=0, rtol=1e-3).status == "mismatch"
    assert compare_blob("x", ref[:2], ref, 1, 1).status == "shape"
    assert compare_blob("x", ref, None, 1, 1).status == "missing"
    nan = np.array([np.nan, 1.0], np.float32)
    assert compare_blob("x", nan, nan, 0, 0).status == "ok"
    bad = compare_blob("x", nan, np.array([0.0, 1.0], np.float32), 1, 1)
    assert bad.status == "mismatch" and bad.max_abs_err == np.inf
    inf = np.array([np.inf, -np.inf], np.float32)
    assert compare_blob("x", inf, inf, 0, 0).status == "ok"
    assert compare_blob("x", -inf, inf, 1, 1).status == "mismatch"


def test_onnx_export_has_a_dynamic_batch(small, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    import torch

    from caffe_compat import load_net
    from caffekt.converters.parity_backend import export_onnx
    proto, model = small
    net = load_net(proto, weights=model)
    path = str(tmp_path / "n.onnx")
    names = export_onnx(net, path, batch=2)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 11, 10)).astype(np.float32)
    outs = sess.run(None, {"data": x})  # traced at batch 2, run at batch 3
    with torch.no_grad():
        ref = net.forward_all(data=torch.from_numpy(x))
    for n, o in zip(names, outs):
        np.testing.assert_allclose(o, ref[n].numpy(), rtol=1e-4, atol=1e-5)
