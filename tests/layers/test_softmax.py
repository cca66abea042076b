"""Softmax (softmax_layer.cpp) vs a float64 NumPy port and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter
from test_neuron import SHAPE, x_with_kinks

S = (2, 3, 5, 4)


def ref_softmax(x, axis, dy):
    """softmax_layer.cpp: y = exp(x - max) / sum exp(x - max) over ``axis``; dx = (dy - sum(dy*y)) * y."""
    e = np.exp(x - x.max(axis, keepdims=True))
    y = e / e.sum(axis, keepdims=True)
    return y, (dy - (dy * y).sum(axis, keepdims=True)) * y


@pytest.mark.parametrize("body,axis", [("", 1), ("softmax_param { axis: -1 }", 3), ("softmax_param { axis: 2 }", 2)])
def test_softmax_vs_numpy(body, axis):
    x, dy = x_with_kinks() * 4, randn(SHAPE, 1)
    layer = make_layer("Softmax", body, [SHAPE], module="softmax")
    (y,), (gx,), _ = run_layer(layer, [x], [dy])
    want_y, want_gx = ref_softmax(x.astype(np.float64), axis, dy.astype(np.float64))
    assert_close(y, want_y, what="Softmax forward")
    assert_close(gx, want_gx, what="Softmax backward")


def test_errors_name_layer_and_field():
    with pytest.raises(UnsupportedParameter, match=r"softmax_param.axis 4 is out of range"):
        make_layer("Softmax", "softmax_param { axis: 4 }", [S], module="softmax")


@pytest.mark.caffe
def test_softmax_vs_caffe():
    x = x_with_kinks()
    cases = [{"name": n, "type": "Softmax", "body": b, "bottoms": [x], "module": "softmax",
              "diffs": [randn(SHAPE, 100 + k)]}
             for k, (n, b) in enumerate([("sm", ""), ("sm_ax", "softmax_param { axis: -1 }"),
                                         ("sm_ax2", "softmax_param { axis: 2 }")])]
    check_against_caffe(cases)
