"""MVN against a float64 NumPy port of mvn_layer.cpp (forward and Caffe's backward) and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer


def ref_mvn(x, top_diff, normalize_variance, across, eps):
    N = x.shape[0]
    num = N if across else N * x.shape[1]
    xs = x.reshape(num, -1)
    g = top_diff.reshape(num, -1)
    xc = xs - xs.mean(axis=1, keepdims=True)
    if not normalize_variance:
        return xc.reshape(x.shape), (g - g.mean(axis=1, keepdims=True)).reshape(x.shape)
    sig = np.sqrt((xc * xc).mean(axis=1, keepdims=True)) + eps     # eps after the sqrt
    y = xc / sig
    gx = (g - g.mean(axis=1, keepdims=True) - y * (g * y).mean(axis=1, keepdims=True)) / sig
    return y.reshape(x.shape), gx.reshape(x.shape)


CASES = [
    ("default", (2, 3, 5, 4), "", (True, False, 1e-9)),
    ("across", (3, 2, 4, 5), "mvn_param { across_channels: true }", (True, True, 1e-9)),
    ("mean_only", (2, 3, 3, 4), "mvn_param { normalize_variance: false }", (False, False, 1e-9)),
    ("mean_only_across", (2, 4, 3, 3), "mvn_param { normalize_variance: false across_channels: true }", (False, True, 1e-9)),
    ("big_eps", (2, 3, 4, 3), "mvn_param { eps: 0.5 }", (True, False, 0.5)),
]


@pytest.mark.parametrize("name,shape,body,flags", CASES, ids=[c[0] for c in CASES])
def test_vs_numpy_port(name, shape, body, flags):
    layer = make_layer("MVN", body, [shape])
    x, g = randn(shape, seed=1), randn(shape, seed=2)
    want, want_gx = ref_mvn(x.astype(np.float64), g.astype(np.float64), *flags)
    (y,), (gx,), _ = run_layer(layer, [x], [g])
    assert_close(y, want, what=name)
    assert_close(gx, want_gx, what=name + " backward")


def test_constant_input_has_caffes_finite_gradient():
    # sigma = 0: autograd through sqrt would give NaN; Caffe gives (g - mean g)/eps.
    layer = make_layer("MVN", "mvn_param { eps: 1e-3 }", [(1, 1, 2, 2)])
    x = np.full((1, 1, 2, 2), 3.0, np.float32)
    g = np.array([1, 2, 3, 6], np.float32).reshape(1, 1, 2, 2)
    (y,), (gx,), _ = run_layer(layer, [x], [g])
    assert_close(y, np.zeros_like(x))
    assert_close(gx, (g - 3.0) / 1e-3, rtol=1e-4)


@pytest.mark.caffe
def test_against_real_caffe():
    oracle_check([Case(n, "MVN", b, [randn(s, seed=i)]) for i, (n, s, b, _) in enumerate(CASES)])
