"""Power, Exp and Log (power_layer.cpp, exp_layer.cpp, log_layer.cpp) vs float64 NumPy ports and real Caffe."""
from __future__ import annotations

import math

import numpy as np
import pytest

from _layer_cases import check_against_caffe
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter
from test_neuron import SHAPE, x_with_kinks


# float64 port of power_layer.cpp: (forward, d top/d bottom)
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


POWER = [(2.0, 0.5, 1.0), (3.0, 1.5, 0.0), (0.5, 2.0, 3.0), (1.0, 2.0, 1.0), (0.0, 2.0, 1.0), (2.5, 0.0, 2.0)]


def _positive(shape, seed):
    return np.abs(randn(shape, seed)) + 0.25


def exp_ref(x, base, scale, shift):
    """exp_layer.cpp: y = base^(shift + scale*x); dy/dx = y * ln(base) * scale."""
    ln = 1.0 if base == -1 else math.log(base)
    y = np.exp(ln * (shift + scale * x))
    return y, y * ln * scale


def log_ref(x, base, scale, shift):
    """log_layer.cpp: y = log_base(shift + scale*x); dy/dx = scale / ((shift + scale*x) ln(base))."""
    ln = 1.0 if base == -1 else math.log(base)
    z = shift + scale * x
    return np.log(z) / ln, scale / (z * ln)


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


@pytest.mark.parametrize("kind,body,base,scale,shift", [
    ("Exp", "", -1, 1.0, 0.0),
    ("Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", 2, 0.5, 1.0),
    ("Log", "", -1, 1.0, 0.0),
    ("Log", "log_param { base: 10 scale: 2 shift: 1 }", 10, 2.0, 1.0),
])
def test_exp_log_vs_numpy(kind, body, base, scale, shift):
    x = _positive(SHAPE, 3) if kind == "Log" else x_with_kinks()
    dy = randn(SHAPE, 4)
    layer = make_layer(kind, body, [SHAPE], module="power")
    (y,), (gx,), _ = run_layer(layer, [x], [dy])
    want_y, dydx = (exp_ref if kind == "Exp" else log_ref)(x.astype(np.float64), base, scale, shift)
    assert_close(y, want_y, what=f"{kind} forward")
    assert_close(gx, dy * dydx, what=f"{kind} backward")


def test_log_exp_errors():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Exp\): exp_param.base must be strictly positive or -1 for e \(got -2.0\)"):
        make_layer("Exp", "exp_param { base: -2 }", [SHAPE], module="power")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Log\): log_param.base 1.0 gives"):
        make_layer("Log", "log_param { base: 1 }", [SHAPE], module="power")


@pytest.mark.caffe
def test_power_exp_log_vs_caffe():
    x = x_with_kinks()
    pos = _positive(SHAPE, 3)
    cases = []

    def add(name, kind, body, xin):
        cases.append({"name": name, "type": kind, "body": body, "bottoms": [xin], "module": "power",
                      "diffs": [randn(SHAPE, 100 + len(cases))]})

    for k, (p, a, b) in enumerate(POWER):
        add(f"pow{k}", "Power", f"power_param {{ power: {p} scale: {a} shift: {b} }}", pos)
    add("exp_e", "Exp", "", x)
    add("exp2", "Exp", "exp_param { base: 2 scale: 0.5 shift: 1 }", x)
    add("log_e", "Log", "", pos)
    add("log10", "Log", "log_param { base: 10 scale: 2 shift: 1 }", pos)
    check_against_caffe(cases)
