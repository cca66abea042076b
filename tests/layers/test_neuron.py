"""Elementwise layers (neuron.py, power.py, prelu.py, dropout.py, softmax.py) vs NumPy ports and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter

SHAPE = (2, 3, 5, 4)  # N != C != H != W, odd and even


def x_with_kinks(shape=SHAPE, seed=0):
    x = randn(shape, seed)
    x.reshape(-1)[::7] = 0.0  # exact kinks: ReLU/AbsVal/Clip take Caffe's branch there
    return x


# float64 ports of the Caffe CPU loops: (forward, d top/d bottom given x, y)
def relu(x, s):
    return np.maximum(x, 0) + s * np.minimum(x, 0), (x > 0) + s * (x <= 0)


def elu(x, a):
    y = np.maximum(x, 0) + a * (np.exp(np.minimum(x, 0)) - 1)
    return y, (x > 0) + (a + y) * (x <= 0)


def bnll(x):
    y = np.where(x > 0, x + np.log1p(np.exp(-np.abs(x))), np.log1p(np.exp(np.minimum(x, 50))))
    e = np.exp(np.minimum(x, 50))
    return y, e / (e + 1)


def power(x, p, a, b):
    ds = p * a
    if ds == 0:
        return np.full_like(x, 1.0 if p == 0 else b ** p), np.zeros_like(x)
    y = (b + a * x) ** p
    if p == 1:
        return y, np.full_like(x, ds)
    if p == 2:
        return y, ds * a * x + ds * b
    if b == 0:
        return y, p * y / x
    return y, ds * y / (b + a * x)


def clip(x, lo, hi):
    return np.maximum(lo, np.minimum(x, hi)), ((x >= lo) & (x <= hi)).astype(float)


def swish(x, beta):
    s = 1 / (1 + np.exp(-beta * x))
    y = x * s
    return y, beta * y + s * (1 - beta * y)


POWER = [(2.0, 0.5, 1.0), (3.0, 1.5, 0.0), (0.5, 2.0, 3.0), (1.0, 2.0, 1.0), (0.0, 2.0, 1.0), (2.5, 0.0, 2.0)]


def _positive(shape, seed):
    return np.abs(randn(shape, seed)) + 0.25


@pytest.mark.parametrize("kind,body,ref", [
    ("ReLU", "", lambda x: relu(x, 0.0)),
    ("ReLU", "relu_param { negative_slope: 0.1 }", lambda x: relu(x, 0.1)),
    ("ELU", "elu_param { alpha: 0.7 }", lambda x: elu(x, 0.7)),
    ("BNLL", "", bnll),
    ("AbsVal", "", lambda x: (np.abs(x), np.sign(x))),
    ("Clip", "clip_param { min: -0.5 max: 0.8 }", lambda x: clip(x, -0.5, 0.8)),
    ("Clip", "clip_param { min: 0.5 max: -0.5 }", lambda x: clip(x, 0.5, -0.5)),
    ("Swish", "", lambda x: swish(x, 1.0)),
    ("Swish", "swish_param { beta: 1.7 }", lambda x: swish(x, 1.7)),
])
def test_elementwise_vs_numpy(kind, body, ref):
    x = x_with_kinks()
    x.reshape(-1)[1] = 60.0  # BNLL's exp threshold
    dy = randn(SHAPE, 1)
    layer = make_layer(kind, body, [SHAPE], module="neuron")
    (y,), (gx,), _ = run_layer(layer, [x], [dy])
    want_y, dydx = ref(x.astype(np.float64))
    assert_close(y, want_y, what=f"{kind} forward")
    assert_close(gx, dy * dydx, what=f"{kind} backward")


@pytest.mark.parametrize("p,a,b", POWER)
def test_power_vs_numpy(p, a, b):
    x = _positive(SHAPE, 3)
    dy = randn(SHAPE, 4)
    layer = make_layer("Power", f"power_param {{ power: {p} scale: {a} shift: {b} }}", [SHAPE], module="power")
    (y,), (gx,), _ = run_layer(layer, [x], [dy])
    want_y, dydx = power(x.astype(np.float64), p, a, b)
    assert_close(y, want_y, what="Power forward")
    assert_close(gx, dy * dydx, what="Power backward")


def test_power_backward_keeps_caffe_special_case_at_zero():
    # shift == 0: Caffe divides y by x, so x == 0 gives NaN (0/0) where autograd would give 0.
    layer = make_layer("Power", "power_param { power: 3 }", [(1, 3)], module="power")
    _, (gx,), _ = run_layer(layer, [np.array([[0.0, 1.0, 2.0]], np.float32)], [np.ones((1, 3), np.float32)])
    assert np.isnan(gx[0, 0]) and gx[0, 1] == pytest.approx(3.0) and gx[0, 2] == pytest.approx(12.0)


def test_threshold_and_dropout_test_phase():
    x = x_with_kinks()
    layer = make_layer("Threshold", "threshold_param { threshold: 0.0 }", [SHAPE], module="neuron")
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, (x > 0).astype(np.float32))
    drop = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [SHAPE], module="dropout")
    (y,), _, _ = run_layer(drop, [x])
    assert np.array_equal(y, x)


def test_dropout_train_statistics_and_scale():
    shape = (50, 40, 10, 10)
    drop = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [shape], phase="TRAIN", module="dropout")
    x = np.ones(shape, np.float32)
    y1 = drop(torch.from_numpy(x)).numpy()
    scale = np.float32(1.0 / (1.0 - float(np.float32(0.3))))
    assert set(np.unique(y1)) == {0.0, scale}  # kept values are scaled exactly by 1/(1-ratio)
    kept = (y1 != 0).mean()
    assert abs(kept - 0.7) < 0.005  # 200k Bernoulli(0.7) draws: sd 0.001
    y2 = drop(torch.from_numpy(x)).numpy()
    assert not np.array_equal(y1, y2)  # a fresh mask each pass
    drop.reseed(drop._seed)
    drop2 = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [shape], phase="TRAIN", module="dropout")
    assert np.array_equal(drop2(torch.from_numpy(x)).numpy(), y1)  # same name -> same seed -> same mask
    xt = torch.from_numpy(randn((4, 6), 2)).requires_grad_()
    d = make_layer("Dropout", "", [(4, 6)], phase="TRAIN", module="dropout")
    y = d(xt)
    y.backward(torch.ones_like(y))
    assert torch.equal(xt.grad, (y.detach() != 0).float() * 2.0)  # backward: dy * mask * scale


def test_dropout_rejects_ratio_one():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Dropout\): dropout_param.dropout_ratio must be in \[0, 1\) \(got 1.0\)"):
        make_layer("Dropout", "dropout_param { dropout_ratio: 1.0 }", [SHAPE], module="dropout")


def test_log_exp_errors():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Exp\): exp_param.base must be strictly positive or -1 for e \(got -2.0\)"):
        make_layer("Exp", "exp_param { base: -2 }", [SHAPE], module="power")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Log\): log_param.base 1.0 gives"):
        make_layer("Log", "log_param { base: 1 }", [SHAPE], module="power")


def test_prelu_blob_shapes_and_filler():
    lay = make_layer("PReLU", "", [SHAPE], module="prelu")
    assert tuple(lay.blobs[0].shape) == (3,) and torch.all(lay.blobs[0] == 0.25)
    lay = make_layer("PReLU", "prelu_param { channel_shared: true }", [SHAPE], module="prelu")
    assert tuple(lay.blobs[0].shape) == ()  # Caffe: a 0-axis blob


def test_prelu_vs_numpy():
    x, dy = x_with_kinks(), randn(SHAPE, 5)
    a = np.array([0.25, -0.5, 1.5], np.float32)
    lay, ((y,), (gx,), (ga,)) = ours({"name": "L", "type": "PReLU", "bottoms": [x], "diffs": [dy],
                                        "params": [a], "module": "prelu"})
    ab = a.reshape(1, 3, 1, 1)
    assert_close(y, np.maximum(x, 0) + ab * np.minimum(x, 0))
    assert_close(gx, dy * ((x > 0) + ab * (x <= 0)))
    assert_close(ga, (dy * x * (x <= 0)).sum(axis=(0, 2, 3)))


@pytest.mark.caffe
def test_elementwise_vs_caffe():
    x = x_with_kinks()
    pos = _positive(SHAPE, 3)
    cases = []

    def add(name, kind, body, xin, module, params=None):
        cases.append({"name": name, "type": kind, "body": body, "bottoms": [xin], "module": module,
                      "diffs": [randn(SHAPE, 100 + len(cases))], **({"params": params} if params else {})})

    add("relu", "ReLU", "", x, "neuron")
    add("lrelu", "ReLU", "relu_param { negative_slope: 0.1 }", x, "neuron")
    add("elu", "ELU", "elu_param { alpha: 0.7 }", x, "neuron")
    add("sig", "Sigmoid", "", x, "neuron")
    add("tanh", "TanH", "", x, "neuron")
    add("abs", "AbsVal", "", x, "neuron")
    add("bnll", "BNLL", "", x * 30, "neuron")
    for k, (p, a, b) in enumerate(POWER):
        add(f"pow{k}", "Power", f"power_param {{ power: {p} scale: {a} shift: {b} }}", pos, "power")
    add("exp_e", "Exp", "", x, "power")
    add("exp2", "Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", x, "power")
    add("log_e", "Log", "", pos, "power")
    add("log10", "Log", "log_param { base: 10 scale: 2 shift: 1 }", pos, "power")
    add("prelu", "PReLU", "", x, "prelu", [np.array([0.25, -0.5, 1.5], np.float32)])
    add("prelu_s", "PReLU", "prelu_param { channel_shared: true }", x, "prelu", [np.array(0.3, np.float32)])
    add("drop", "Dropout", "dropout_param { dropout_ratio: 0.3 }", x, "dropout")
    add("sm", "Softmax", "", x, "softmax")
    add("sm_ax", "Softmax", "softmax_param { axis: -1 }", x, "softmax")
    add("sm_ax2", "Softmax", "softmax_param { axis: 2 }", x, "softmax")
    check_against_caffe(cases)
    # Threshold has no backward in Caffe: forward only, in a net of its own.
    check_against_caffe([{"name": "thr", "type": "Threshold", "body": "threshold_param { threshold: 0.2 }",
                          "bottoms": [x], "module": "neuron"}])
