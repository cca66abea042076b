"""InnerProduct against NumPy (M x K . W) and real Caffe: axis, transpose, no bias."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import UnsupportedParameter

CASES = [  # name, bottom, body, (weight shape), top shape
    ("axis1", (3, 2, 4, 5), "inner_product_param { num_output: 6 }", (6, 40), (3, 6)),
    ("axis2_T", (3, 2, 4, 5), "inner_product_param { num_output: 7 axis: 2 transpose: true }", (20, 7), (3, 2, 7)),
    ("axis_neg_nobias", (2, 3, 5), "inner_product_param { num_output: 4 axis: -1 bias_term: false }", (4, 5), (2, 3, 4)),
    ("2d_T", (5, 9), "inner_product_param { num_output: 3 transpose: true }", (9, 3), (5, 3)),
]


def _filled(body, shape, seed):
    layer = make_layer("InnerProduct", body, [shape])
    vals = [randn(tuple(p.shape), seed=seed + j) for j, p in enumerate(layer.blobs)]
    for p, v in zip(layer.blobs, vals):
        p.data.copy_(torch.from_numpy(v))
    return layer, vals


@pytest.mark.parametrize("name,shape,body,wshape,tshape", CASES, ids=[c[0] for c in CASES])
def test_vs_numpy(name, shape, body, wshape, tshape):
    layer, vals = _filled(body, shape, 5)
    assert tuple(layer.blobs[0].shape) == wshape and layer.top_shapes == [tshape]
    x = randn(shape, seed=1)
    w = vals[0].astype(np.float64)
    xf = x.astype(np.float64).reshape(int(np.prod(tshape[:-1])), -1)
    want = xf @ (w if layer.transpose else w.T)
    if layer.bias_term:
        want = want + vals[1]
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, want.reshape(tshape), atol=1e-5, what=name)


def test_bad_params():
    with pytest.raises(UnsupportedParameter, match="'fc9'.*InnerProduct.*num_output must be > 0"):
        make_layer("InnerProduct", "inner_product_param { }", [(2, 3)], name="fc9")
    with pytest.raises(UnsupportedParameter, match="'fc9'.*axis 3 is out of range"):
        make_layer("InnerProduct", "inner_product_param { num_output: 2 axis: 3 }", [(2, 3, 4)], name="fc9")


@pytest.mark.caffe
def test_against_real_caffe():
    cases = []
    for i, (name, shape, body, _w, _t) in enumerate(CASES):
        layer, vals = _filled(body, shape, 20 + i)
        cases.append(Case(name, "InnerProduct", body, [randn(shape, seed=i)], params=vals, atol=1e-5))
    oracle_check(cases)
