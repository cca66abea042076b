"""Float64-anchored verdicts: the reference model is OK on every backend, injected errors FAIL.

The CaffeNet case is the BVLC deploy with Gaussian (std 0.05) weights and
biases at its own 227x227 size, batch 1: activations reach ~850 at fc8 and the
softmax saturates, which a fixed tolerance misread as a mismatch.
"""
from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch

from caffe_compat import load_net, parity
from caffe_compat.cli import main
from caffe_compat.judge import judge

SMALL_LRN = """
name: "lrn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 14 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 } }
layer { name: "norm1" type: "LRN" bottom: "conv1" top: "norm1" lrn_param { local_size: 5 alpha: 0.1 k: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "norm1" top: "pool1" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""


def _gaussian_caffemodel(prototxt: str, path: str, std: float = 0.05, input_shapes=None) -> str:
    from caffe_compat.weights import save_caffemodel
    net = load_net(prototxt, input_shapes=input_shapes)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.learnable_params():
            p.normal_(0.0, std, generator=g)
    save_caffemodel(net, path)
    return path


@pytest.fixture(scope="module")
def caffenet05(fixtures_dir, tmp_path_factory):
    deploy = os.path.join(fixtures_dir, "bvlc", "bvlc_reference_caffenet", "deploy.prototxt")
    d = tmp_path_factory.mktemp("cn05")
    model = _gaussian_caffemodel(deploy, str(d / "std005.caffemodel"),
                                 input_shapes={"data": (1, 3, 227, 227)})
    return deploy, model, d


@pytest.fixture(scope="module")
def small_lrn(tmp_path_factory):
    d = tmp_path_factory.mktemp("lrn")
    proto = d / "lrn.prototxt"
    proto.write_text(SMALL_LRN)
    return str(proto), _gaussian_caffemodel(str(proto), str(d / "lrn.caffemodel"), std=0.3)


def _run(capsys, *argv):
    rc = main(["parity", *argv, "--json"])
    return rc, json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("backend", ["onnxruntime", "opencv"])
def test_caffenet_std005_is_ok_at_defaults(caffenet05, backend, capsys):
    pytest.importorskip("onnxruntime" if backend == "onnxruntime" else "cv2")
    deploy, model, _ = caffenet05
    assert main(["parity", deploy, model, "--backend", backend, "--input-shape", "1,3,227,227"]) == 0
    out = capsys.readouterr().out
    assert "input data 1x3x227x227: N(0, 1) float32, seed 0 (mean " in out
    assert out.rstrip().endswith("OK: 15 blobs agree within float32 rounding"), out
    rc, doc = _run(capsys, deploy, model, "--backend", backend, "--input-shape", "1,3,227,227")
    assert rc == 0 and doc["ok"] and doc["failed"] == []
    by = {b["name"]: b for b in doc["blobs"]}
    assert by["fc8"]["scale"] > 100   # the case a fixed 1e-4 tolerance failed on
    for b in doc["blobs"]:
        assert b["ref_f64_err"] <= b["limit"], b
        # float32 rounding, not an error: both sides within ~1e-5 of the blob's scale
        assert b["ours_f64_err"] < 1e-5 and b["ref_f64_err"] < 1e-5, b


def _bump_conv1(net) -> None:
    """One weight (conv1's largest) changed by 1e-3 relative."""
    w = net.params["conv1"][0]
    with torch.no_grad():
        flat = w.data.view(-1)
        flat[int(flat.abs().argmax())] *= 1.001


def test_one_weight_off_by_1e3_fails_on_opencv(caffenet05, monkeypatch, capsys):
    pytest.importorskip("cv2")
    from caffe_compat.weights import save_caffemodel
    deploy, model, d = caffenet05
    net = load_net(deploy, weights=model, input_shapes={"data": (1, 3, 227, 227)})
    _bump_conv1(net)
    bad = str(d / "bumped.caffemodel")
    save_caffemodel(net, bad)
    real = parity.opencv_forward
    monkeypatch.setattr(parity, "opencv_forward", lambda text, _w, inputs: real(text, bad, inputs))
    rc, doc = _run(capsys, deploy, model, "--backend", "opencv", "--input-shape", "1,3,227,227")
    assert rc == 1 and not doc["ok"]
    assert doc["failed"][0] == "conv1"
    c1 = {b["name"]: b for b in doc["blobs"]}["conv1"]
    assert c1["ref_f64_err"] > 3 * c1["limit"]


def _onnx_with(monkeypatch, change) -> None:
    from caffekt.converters import parity_backend   # what the onnxruntime entry point loads
    real = parity_backend.onnxruntime_forward

    def fake(net, inputs, opset=17):
        other = copy.deepcopy(net)
        change(other)
        return real(other, inputs, opset)
    monkeypatch.setattr(parity_backend, "onnxruntime_forward", fake)


def test_one_weight_off_by_1e3_fails_on_onnxruntime(caffenet05, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    deploy, model, _ = caffenet05
    _onnx_with(monkeypatch, _bump_conv1)
    rc, doc = _run(capsys, deploy, model, "--backend", "onnxruntime", "--input-shape", "1,3,227,227")
    assert rc == 1 and doc["failed"][0] == "conv1"


def test_lrn_k_dropped_fails(small_lrn, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    from caffe_compat.layers.lrn import LRN
    proto, model = small_lrn
    assert _run(capsys, proto, model, "--backend", "onnxruntime")[0] == 0

    def drop_k(net):
        for m in net.modules():
            if isinstance(m, LRN):
                m.k = 1.0
    _onnx_with(monkeypatch, drop_k)
    rc, doc = _run(capsys, proto, model, "--backend", "onnxruntime")
    assert rc == 1 and doc["failed"] == ["norm1", "pool1"]


def test_ceil_floor_pooling_swap_fails(tmp_path, monkeypatch, capsys):
    pytest.importorskip("cv2")
    proto = tmp_path / "pool.prototxt"
    proto.write_text(SMALL_LRN.replace(" k: 2", ""))   # OpenCV's LRN has k = 1 only
    proto = str(proto)
    model = _gaussian_caffemodel(proto, str(tmp_path / "pool.caffemodel"), std=0.3)
    assert _run(capsys, proto, model, "--backend", "opencv")[0] == 0
    real = parity.opencv_forward
    swapped = lambda text, w, inputs: real(text.replace("ceil_mode: true", "ceil_mode: false")  # noqa: E731
                                           .replace("pool: MAX", "pool: MAX\n    ceil_mode: false"),
                                           w, inputs)
    monkeypatch.setattr(parity, "opencv_forward", swapped)
    rc, doc = _run(capsys, proto, model, "--backend", "opencv")
    assert rc == 1 and doc["failed"] == ["pool1"]
    assert {b["name"]: b["status"] for b in doc["blobs"]}["pool1"] == "shape"


def test_judge_rules():
    x = np.linspace(-2, 2, 101)
    ours = (x + 1e-7).astype(np.float32)
    d = judge(ours, ours, x)
    assert d.ok and d.scale == 2 and d.other == d.ours
    assert d.limit == pytest.approx(1e-5 + 16 * d.ours)
    assert not judge(ours, ours * np.float32(1.001), x).ok
    # a non-finite place must match ours exactly
    ours_inf = ours.copy()
    ours_inf[0] = -np.finfo(np.float32).max
    assert judge(ours_inf, ours_inf, x).ok
    other = ours_inf.copy()
    other[0] = 0
    assert judge(ours_inf, other, np.where(np.arange(101) == 0, -np.inf, x)).other == np.inf
    z = np.zeros(4)
    assert judge(z, z, z).ok and judge(z, z, z).scale == 1.0


def test_export_onnx_caffenet_std005_ok(caffenet05, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    deploy, model, _ = caffenet05
    out = tmp_path / "cn.onnx"
    assert main(["export", "onnx", deploy, model, "-o", str(out), "--input-shape", "data=1,3,227,227"]) == 0
    text = capsys.readouterr().out
    assert "prob" in text and "MISMATCH" not in text and out.exists()
    assert "OK: onnxruntime agrees within float32 rounding" in text
    assert "input data 2x3x227x227: N(0, 1) float32, seed 0" in text
