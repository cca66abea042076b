"""Scale (scale_layer.cpp) against NumPy broadcasting (Caffe's outer/dim/inner loops) and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter


def ref_broadcast(x, v, axis):
    """Caffe's (outer, dim, inner) indexing: v lines up with x from ``axis``."""
    axis = 0 if v.ndim == 0 else axis % x.ndim
    outer = int(np.prod(x.shape[:axis]))
    dim = v.size
    inner = x.size // (outer * dim)
    return np.broadcast_to(v.reshape(1, dim, 1), (outer, dim, inner)).reshape(x.shape)


X = (2, 3, 4, 5)
SCALE = [  # name, body, bottoms, axis used for the operand, operand shape
    ("blob_c", "scale_param { }", [X], 1, (3,)),
    ("blob_hw_bias", "scale_param { axis: 2 num_axes: 2 bias_term: true bias_filler { type: 'constant' value: 0.3 } }", [X], 2, (4, 5)),
    ("blob_scalar", "scale_param { num_axes: 0 bias_term: true }", [X], 0, ()),
    ("blob_rest_neg", "scale_param { axis: -3 num_axes: -1 }", [X], 1, (3, 4, 5)),
    ("bottom1", "scale_param { axis: 1 }", [X, (3, 4)], 1, (3, 4)),
    ("bottom1_bias", "scale_param { axis: 0 bias_term: true }", [X, (2, 3)], 0, (2, 3)),
]


def _params(layer, seed):
    return [randn(tuple(p.shape), seed=seed + j) for j, p in enumerate(layer.blobs)]


@pytest.mark.parametrize("case", SCALE, ids=[c[0] for c in SCALE])
def test_vs_numpy(case):
    name, body, shapes, axis, op_shape = case
    layer = make_layer("Scale", body, shapes, module="scale")
    bottoms = [randn(s, seed=i + 1) for i, s in enumerate(shapes)]
    vals = _params(layer, 10)
    for p, v in zip(layer.blobs, vals):
        p.data.copy_(torch.from_numpy(v))
    op = bottoms[1] if len(shapes) == 2 else vals[0]
    assert op.shape == op_shape
    x = bottoms[0].astype(np.float64)
    b = ref_broadcast(x, op.astype(np.float64), axis)
    want = x * b
    if layer.bias_term:
        want = want + ref_broadcast(x, vals[-1].astype(np.float64), axis)
    (y,), _, _ = run_layer(layer, bottoms)
    assert_close(y, want, what=name)


def test_blob_layout_and_default_fillers():
    s = make_layer("Scale", "scale_param { bias_term: true }", [X])
    assert [tuple(p.shape) for p in s.blobs] == [(3,), (3,)]
    assert s.blobs[0].detach().numpy().tolist() == [1, 1, 1] and not s.blobs[1].detach().numpy().any()
    s2 = make_layer("Scale", "scale_param { bias_term: true }", [X, (3,)])
    assert [tuple(p.shape) for p in s2.blobs] == [(3,)]      # the bias is blobs[0] here


@pytest.mark.parametrize("kind,body,shapes,exc,msg", [
    ("Scale", "scale_param { axis: 2 num_axes: 3 }", [X], UnsupportedParameter, "extends past"),
    ("Scale", "scale_param { num_axes: -2 }", [X], UnsupportedParameter, "num_axes must be non-negative"),
    ("Scale", "scale_param { axis: 1 }", [X, (4,)], ShapeError, "dimension mismatch"),
])
def test_bad_params(kind, body, shapes, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer(kind, body, shapes, name="sc")
    assert "'sc'" in str(ei.value) and kind in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    cases = []
    for i, (name, body, shapes, _a, _s) in enumerate(SCALE):
        layer = make_layer("Scale", body, shapes, module="scale")
        cases.append(Case(f"Scale-{name}", "Scale", body, [randn(s, seed=30 + i + j) for j, s in enumerate(shapes)],
                          params=_params(layer, 40 + i)))
    oracle_check(cases)
