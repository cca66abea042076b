"""Reduction and ArgMax (reduction_layer.cpp, argmax_layer.cpp) vs NumPy and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter

S = (2, 3, 5, 4)


def test_argmax_ties_list_larger_index_first():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0]]]], np.float32)
    lay = make_layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", [x.shape], module="reduction")
    (y,), _, _ = run_layer(lay, [x])
    assert y.shape == (1, 2, 3, 1)
    assert_close(y[0, :, :, 0], [[2, 1, 0], [3, 3, 1]])


def test_errors_name_layer_and_field():
    with pytest.raises(UnsupportedParameter, match=r"argmax_param.top_k 6 exceeds axis 2 of size 5"):
        make_layer("ArgMax", "argmax_param { top_k: 6 axis: 2 }", [S], module="reduction")


def _cases():
    a, b = randn(S, 1), randn(S, 2)
    a.reshape(-1)[::5] = b.reshape(-1)[::5]  # same inputs as the other shape-layer files
    d = lambda shape, k: randn(shape, 200 + k)  # noqa: E731
    cs = [
        dict(name="red_sum", type="Reduction", body="", bottoms=[a], diffs=[np.array(1.5, np.float32)]),
        dict(name="red_asum", type="Reduction", body="reduction_param { operation: ASUM axis: 1 coeff: 2 }",
             bottoms=[a], diffs=[d((2,), 21)]),
        dict(name="red_sq", type="Reduction", body="reduction_param { operation: SUMSQ axis: 2 }", bottoms=[a], diffs=[d((2, 3), 22)]),
        dict(name="red_mean", type="Reduction", body="reduction_param { operation: MEAN axis: -1 coeff: -0.5 }",
             bottoms=[a], diffs=[d((2, 3, 5), 23)]),
    ]
    for c_ in cs:
        c_["module"] = "reduction"
    return cs


def test_cases_vs_numpy():
    # The NumPy truth for the oracle cases, so the default tier checks the same configurations.
    refs = {"red_sum": lambda b: np.array(b[0].astype(np.float64).sum()),
            "red_asum": lambda b: 2 * np.abs(b[0].astype(np.float64)).reshape(2, -1).sum(1),
            "red_sq": lambda b: (b[0].astype(np.float64) ** 2).reshape(2, 3, -1).sum(2),
            "red_mean": lambda b: -0.5 * b[0].astype(np.float64).mean(-1)}
    # reduction_layer.cpp Backward_cpu: d x = coeff * top diff * (1 | sign(x) | 2x | 1/n), per outer index
    grads = {"red_sum": lambda x, g: np.broadcast_to(g, x.shape),
             "red_asum": lambda x, g: 2 * np.sign(x) * g.reshape(2, 1, 1, 1),
             "red_sq": lambda x, g: 2 * x * g.reshape(2, 3, 1, 1),
             "red_mean": lambda x, g: -0.5 / 4 * np.broadcast_to(g[..., None], x.shape)}
    for c in _cases():
        _, (tops, gx, _) = ours(c)
        assert_close(tops[0], refs[c["name"]](c["bottoms"]), what=c["name"])
        x, g = c["bottoms"][0].astype(np.float64), c["diffs"][0].astype(np.float64)
        assert_close(gx[0], grads[c["name"]](x, g), what=f'{c["name"]} backward')


def test_argmax_vs_numpy():
    # argmax_layer.cpp: a stable sort of (value, index) pairs, descending; ties list the larger index first.
    x = randn(S, 5)
    for axis, k in [(1, 2), (3, 3)]:
        lay = make_layer("ArgMax", f"argmax_param {{ axis: {axis} top_k: {k} }}", [S], module="reduction")
        (y,), _, _ = run_layer(lay, [x])
        want = np.moveaxis(np.argsort(-np.moveaxis(x, axis, -1), axis=-1, kind="stable")[..., :k], -1, axis)
        assert y.shape == want.shape == lay.top_shapes[0]
        assert_close(y, want.astype(np.float64), what=f"axis {axis} top_k {k}")
    lay = make_layer("ArgMax", "", [S], module="reduction")  # no axis: over the flattened C*H*W of each item
    (y,), _, _ = run_layer(lay, [x])
    assert y.shape == lay.top_shapes[0] == (2, 1, 1, 1)
    assert_close(y.reshape(2), x.reshape(2, -1).argmax(1).astype(np.float64))


@pytest.mark.caffe
def test_reduction_argmax_vs_caffe():
    check_against_caffe(_cases())
    x = randn(S, 5)
    x[0, 1, 2, :2] = x[0, 1, 2, 2]  # ties
    fwd = [
        dict(name="am", type="ArgMax", body="", bottoms=[x]),
        dict(name="am3v", type="ArgMax", body="argmax_param { top_k: 3 out_max_val: true }", bottoms=[x]),
        dict(name="amax", type="ArgMax", body="argmax_param { axis: 1 top_k: 2 }", bottoms=[x]),
        dict(name="amaxv", type="ArgMax", body="argmax_param { axis: 3 top_k: 3 out_max_val: true }", bottoms=[x]),
        dict(name="amax2", type="ArgMax", body="argmax_param { axis: -2 }", bottoms=[x]),
    ]
    for c in fwd:
        c["module"] = "reduction"
    check_against_caffe(fwd)
