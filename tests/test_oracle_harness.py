"""The oracle harnesses themselves: real Caffe (subprocess) and OpenCV dnn.

Each harness is checked against a plain NumPy loop, so a wiring mistake
(wrong blob, params not set, inputs not reshaped, in-place blobs read too
early) shows up here and not as a mystery in a layer test.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from _opencv import opencv_deviation_notes, opencv_forward, require_opencv
from _oracle import (OracleError, caffe_run, oracle_python, require_oracle, to_oracle_dialect,
                     with_force_backward)

# N, C, H, W all different (and odd/even mixed) so no axis mix-up can hide.
N, C, H, W = 2, 4, 7, 9
CONV_NET = f"""
name: "harness"
layer {{ name: "data" type: "Input" top: "data"
        input_param {{ shape {{ dim: {N} dim: {C} dim: {H} dim: {W} }} }} }}
layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param {{ num_output: 6 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0
                             stride_h: 2 stride_w: 1 group: 2 }} }}
layer {{ name: "relu" type: "ReLU" bottom: "conv" top: "conv" }}
"""


def numpy_conv(x, w, b, stride, pad, group):
    """Direct loop of Caffe's convolution (conv_layer.cpp via im2col + gemm)."""
    n, c, h, wd = x.shape
    m, cg, kh, kw = w.shape
    (sh, sw), (ph, pw) = stride, pad
    oh, ow = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    xp = np.zeros((n, c, h + 2 * ph, wd + 2 * pw), np.float64)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, m, oh, ow), np.float64)
    mg = m // group
    for o in range(m):
        g = o // mg
        for i in range(oh):
            for j in range(ow):
                patch = xp[:, g * cg:(g + 1) * cg, i * sh:i * sh + kh, j * sw:j * sw + kw]
                y[:, o, i, j] = (patch * w[o]).sum(axis=(1, 2, 3)) + b[o]
    return y


@pytest.fixture(scope="module")
def conv_case():
    rng = np.random.RandomState(3)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((6, C // 2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    ref = np.maximum(numpy_conv(x, w, b, (2, 1), (1, 0), 2), 0)
    return x, w, b, ref


# ------------------------------------------------------------ no oracle needed

def test_force_backward_is_added_once():
    assert with_force_backward(CONV_NET).startswith("force_backward: true\n")
    already = "force_backward: false\n" + CONV_NET
    assert with_force_backward(already) == already


def test_round_mode_is_spelled_as_ceil_mode_for_the_fork():
    text = 'pooling_param { pool: MAX round_mode: FLOOR } pooling_param { round_mode: CEIL }'
    assert to_oracle_dialect(text) == ('pooling_param { pool: MAX ceil_mode: false } '
                                       'pooling_param { ceil_mode: true }')


def test_missing_oracle_fails_under_ci_and_skips_otherwise(monkeypatch, tmp_path):
    monkeypatch.setenv("CAFFEKT_ORACLE_PYTHON", str(tmp_path / "no-such-python"))
    assert oracle_python() is None
    monkeypatch.setenv("CAFFEKT_REQUIRE_ORACLE", "1")
    with pytest.raises(pytest.fail.Exception, match="tools/build_caffe_oracle.sh"):
        require_oracle()
    monkeypatch.delenv("CAFFEKT_REQUIRE_ORACLE")
    with pytest.raises(pytest.skip.Exception, match="not built"):
        require_oracle()


def _caffemodel(tmp_path, layers):
    """A caffemodel holding ``{layer: [arrays]}``, written with our own schema."""
    from caffe_compat.proto import caffe_pb2
    net = caffe_pb2.NetParameter()
    for name, blobs in layers.items():
        lp = net.layer.add(name=name)
        for a in blobs:
            bp = lp.blobs.add()
            bp.shape.dim.extend(a.shape)
            bp.data.extend(a.ravel().tolist())
    path = os.path.join(tmp_path, "w.caffemodel")
    with open(path, "wb") as f:
        f.write(net.SerializeToString())
    return path


def test_opencv_harness_matches_numpy_conv(tmp_path, conv_case):
    require_opencv()
    x, w, b, ref = conv_case
    model = _caffemodel(tmp_path, {"conv": [w, b]})
    out = opencv_forward(CONV_NET, model, {"data": x})
    assert set(out) == {"data", "conv"}
    assert out["conv"].shape == (N, 6, 4, 8)
    np.testing.assert_allclose(out["conv"], ref, rtol=1e-5, atol=1e-5)  # after the in-place ReLU
    assert (out["conv"] == 0).any()  # the ReLU really ran


def test_opencv_harness_reads_second_tops(tmp_path):
    require_opencv()
    text = """
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 5 dim: 3 dim: 4 } } }
layer { name: "slice" type: "Slice" bottom: "data" top: "a" top: "b" top: "c"
        slice_param { axis: 1 slice_point: 1 slice_point: 3 } }
"""
    x = np.arange(120, dtype=np.float32).reshape(2, 5, 3, 4)
    out = opencv_forward(text, _caffemodel(tmp_path, {}), {"data": x})
    np.testing.assert_array_equal(out["a"], x[:, :1])
    np.testing.assert_array_equal(out["b"], x[:, 1:3])
    np.testing.assert_array_equal(out["c"], x[:, 3:])


def test_opencv_deviation_notes_name_the_layers():
    text = """
layer { name: "n1" type: "LRN" bottom: "x" top: "y" lrn_param { k: 2 } }
layer { name: "n2" type: "LRN" bottom: "y" top: "z" lrn_param { local_size: 3 } }
layer { name: "gap" type: "Pooling" bottom: "z" top: "p" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
layer { name: "fine" type: "Pooling" bottom: "z" top: "q" pooling_param { pool: MAX kernel_size: 3 stride: 2 } }
"""
    # 5 rows, kernel 1, stride 3: ceil gives windows at 0, 3, 6 and row 6 is past the end
    notes = opencv_deviation_notes(text, {"x": (1, 3, 5, 5), "y": (1, 3, 5, 5), "z": (1, 3, 5, 5)})
    assert set(notes) == {"n1", "gap"}
    assert "k = 2" in notes["n1"] and "-FLT_MAX" in notes["gap"]


# --------------------------------------------------------------- oracle tier

@pytest.mark.caffe
def test_oracle_conv_matches_numpy_loop(conv_case):
    x, w, b, ref = conv_case
    res = caffe_run(CONV_NET, params={"conv": [w, b]}, inputs={"data": x})
    assert res["data"]["conv"].shape == (N, 6, 4, 8)
    np.testing.assert_allclose(res["data"]["conv"], ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(res["data"]["data"], x)
    assert [a.shape for a in res["layer_params"]["conv"]] == [(6, 2, 3, 2), (6,)]
    np.testing.assert_array_equal(res["params"]["conv/0"], w)
    assert res["layers"] == [("data", "Input"), ("conv", "Convolution"), ("relu", "ReLU")]


@pytest.mark.caffe
def test_oracle_backward_adds_force_backward():
    # Without force_backward Caffe never computes the Input blob's diff.
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 3 dim: 5 } } }
layer { name: "fc" type: "InnerProduct" bottom: "x" top: "y" inner_product_param { num_output: 2 } }
"""
    rng = np.random.RandomState(5)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    w = rng.standard_normal((2, 5)).astype(np.float32)
    b = rng.standard_normal(2).astype(np.float32)
    dy = rng.standard_normal((3, 2)).astype(np.float32)
    res = caffe_run(text, params={"fc": [w, b]}, inputs={"x": x}, top_diffs={"y": dy})
    np.testing.assert_allclose(res["data"]["y"], x @ w.T + b, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(res["diff"]["x"], dy @ w, rtol=1e-5, atol=1e-6)
    dw, db = res["layer_param_diffs"]["fc"]
    np.testing.assert_allclose(dw, dy.T @ x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(db, dy.sum(0), rtol=1e-5, atol=1e-6)


@pytest.mark.caffe
def test_oracle_train_phase_and_seed():
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 4 dim: 50 } } }
layer { name: "drop" type: "Dropout" bottom: "x" top: "y" dropout_param { dropout_ratio: 0.5 } }
"""
    x = np.ones((4, 50), np.float32)
    a = caffe_run(text, inputs={"x": x}, phase="TRAIN", seed=1)["data"]["y"]
    b = caffe_run(text, inputs={"x": x}, phase="TRAIN", seed=1)["data"]["y"]
    c = caffe_run(text, inputs={"x": x}, phase="TRAIN", seed=2)["data"]["y"]
    t = caffe_run(text, inputs={"x": x}, phase="TEST", seed=1)["data"]["y"]
    assert set(np.unique(a).tolist()) == {0.0, 2.0}  # kept units are scaled by 1/(1-p)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(t, x)


@pytest.mark.caffe
def test_oracle_round_mode_floor_reaches_the_fork():
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 1 dim: 7 dim: 7 } } }
layer { name: "p" type: "Pooling" bottom: "x" top: "p"
        pooling_param { pool: MAX kernel_size: 2 stride: 2 round_mode: FLOOR } }
"""
    x = np.arange(49, dtype=np.float32).reshape(1, 1, 7, 7)
    p = caffe_run(text, inputs={"x": x})["data"]["p"]
    np.testing.assert_array_equal(p[0, 0], x[0, 0, 1:6:2, 1:6:2])  # 3x3, not ceil's 4x4


@pytest.mark.caffe
def test_oracle_errors_carry_caffes_message():
    text = 'layer { name: "x" type: "NoSuchLayer" top: "x" }'
    with pytest.raises(OracleError, match="Unknown layer type: NoSuchLayer") as info:
        caffe_run(text)
    assert info.value.returncode != 0 and "NoSuchLayer" in info.value.stderr


@pytest.mark.caffe
def test_opencv_deviations_are_real(tmp_path):
    """The two documented OpenCV deviations, pinned against the real Caffe."""
    require_opencv()
    text = """
layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 dim: 6 dim: 5 dim: 5 } } }
layer { name: "lrn" type: "LRN" bottom: "x" top: "n" lrn_param { local_size: 3 alpha: 0.5 k: 2 } }
layer { name: "pool" type: "Pooling" bottom: "x" top: "p" pooling_param { pool: MAX kernel_size: 1 stride: 3 } }
"""
    x = np.random.RandomState(0).standard_normal((1, 6, 5, 5)).astype(np.float32)
    model = str(tmp_path / "m.caffemodel")
    ref = caffe_run(text, inputs={"x": x}, save_caffemodel=model)["data"]
    cv = opencv_forward(text, model, {"x": x})
    # LRN: Caffe divides by (k + alpha/n * sum x^2)^beta with k = 2; OpenCV uses k = 1
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (1, 1), (0, 0), (0, 0)))
    win = sq[:, 0:6] + sq[:, 1:7] + sq[:, 2:8]
    np.testing.assert_allclose(ref["n"], x / (2 + 0.5 / 3 * win) ** 0.75, rtol=1e-5)
    np.testing.assert_allclose(cv["n"], x / (1 + 0.5 / 3 * win) ** 0.75, rtol=1e-5)
    # Pooling: the window at row/col 6 is empty
    assert ref["p"].shape == cv["p"].shape == (1, 6, 3, 3)
    assert (ref["p"][:, :, 2, :] == np.float32(-3.4028235e38)).all()
    assert (cv["p"][:, :, 2, :] == 0).all()
    np.testing.assert_array_equal(ref["p"][:, :, :2, :2], cv["p"][:, :, :2, :2])
