"""The neuron layers of neuron.py (ReLU, ELU, BNLL, AbsVal, Clip, Swish, Sigmoid, TanH, Threshold) vs NumPy ports and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe
from _util import assert_close, make_layer, randn, run_layer

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


def clip(x, lo, hi):
    return np.maximum(lo, np.minimum(x, hi)), ((x >= lo) & (x <= hi)).astype(float)


def sigmoid(x):
    y = 1 / (1 + np.exp(-x))
    return y, y * (1 - y)  # sigmoid_layer.cpp: dy * y * (1 - y)


def tanh(x):
    y = np.tanh(x)
    return y, 1 - y * y  # tanh_layer.cpp: dy * (1 - y^2)


def swish(x, beta):
    s = 1 / (1 + np.exp(-beta * x))
    y = x * s
    return y, beta * y + s * (1 - beta * y)


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
    ("Sigmoid", "", sigmoid),
    ("TanH", "", tanh),
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


def test_threshold_forward():
    x = x_with_kinks()
    layer = make_layer("Threshold", "threshold_param { threshold: 0.0 }", [SHAPE], module="neuron")
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, (x > 0).astype(np.float32))


@pytest.mark.caffe
def test_neuron_vs_caffe():
    x = x_with_kinks()
    cases = []

    def add(name, kind, body, xin):
        cases.append({"name": name, "type": kind, "body": body, "bottoms": [xin], "module": "neuron",
                      "diffs": [randn(SHAPE, 100 + len(cases))]})

    add("relu", "ReLU", "", x)
    add("lrelu", "ReLU", "relu_param { negative_slope: 0.1 }", x)
    add("elu", "ELU", "elu_param { alpha: 0.7 }", x)
    add("sig", "Sigmoid", "", x)
    add("tanh", "TanH", "", x)
    add("abs", "AbsVal", "", x)
    add("bnll", "BNLL", "", x * 30)
    check_against_caffe(cases)
    # Threshold has no backward in Caffe: forward only, in a net of its own.
    check_against_caffe([{"name": "thr", "type": "Threshold", "body": "threshold_param { threshold: 0.2 }",
                          "bottoms": [x], "module": "neuron"}])
