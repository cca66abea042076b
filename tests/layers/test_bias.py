"""Bias (bias_layer.cpp) against NumPy broadcasting (Caffe's outer/dim/inner loops) and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter
from test_scale import X, _params, ref_broadcast

BIAS = [
    ("blob_c", "bias_param { filler { type: 'gaussian' } }", [X], 1, (3,)),
    ("blob_w", "bias_param { axis: -1 }", [X], 3, (5,)),
    ("blob_scalar", "bias_param { num_axes: 0 }", [X], 0, ()),
    ("bottom1", "bias_param { axis: 2 }", [X, (4, 5)], 2, (4, 5)),
]


@pytest.mark.parametrize("case", BIAS, ids=[c[0] for c in BIAS])
def test_vs_numpy(case):
    name, body, shapes, axis, op_shape = case
    layer = make_layer("Bias", body, shapes, module="bias")
    bottoms = [randn(s, seed=i + 1) for i, s in enumerate(shapes)]
    vals = _params(layer, 10)
    for p, v in zip(layer.blobs, vals):
        p.data.copy_(torch.from_numpy(v))
    op = bottoms[1] if len(shapes) == 2 else vals[0]
    assert op.shape == op_shape
    x = bottoms[0].astype(np.float64)
    want = x + ref_broadcast(x, op.astype(np.float64), axis)
    (y,), _, _ = run_layer(layer, bottoms)
    assert_close(y, want, what=name)


def test_backward_sums_over_the_broadcast_axes():
    # bias_layer.cpp Backward: d bias[d] = sum over outer and inner of top diff; d x = top diff.
    layer = make_layer("Bias", "bias_param { axis: 2 }", [X, (4, 5)], module="bias")
    x, b, g = randn(X, 1), randn((4, 5), 2), randn(X, 3)
    _, (gx, gb), _ = run_layer(layer, [x, b], [g])
    assert_close(gx, g)
    assert_close(gb, g.astype(np.float64).sum(axis=(0, 1)))


def test_default_filler_is_zero():
    assert not make_layer("Bias", "", [X], module="bias").blobs[0].detach().numpy().any()


@pytest.mark.parametrize("body,shapes,exc,msg", [
    ("bias_param { axis: 4 }", [X], UnsupportedParameter, "axis 4 is out of range"),
    ("bias_param { axis: 3 }", [X, (5, 2)], ShapeError, "does not fit"),
])
def test_bad_params(body, shapes, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer("Bias", body, shapes, name="sc", module="bias")
    assert "'sc'" in str(ei.value) and "Bias" in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    cases = []
    for i, (name, body, shapes, _a, _s) in enumerate(BIAS):
        layer = make_layer("Bias", body, shapes, module="bias")
        cases.append(Case(f"Bias-{name}", "Bias", body, [randn(s, seed=30 + i + j) for j, s in enumerate(shapes)],
                          params=_params(layer, 40 + i)))
    oracle_check(cases)
