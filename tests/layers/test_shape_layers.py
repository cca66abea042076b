"""Concat/Slice, Eltwise, Flatten/Reshape/Tile, Reduction/ArgMax, Filter/BatchReindex/Parameter."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter

S = (2, 3, 5, 4)


def test_eltwise_max_tie_rule():
    # Caffe: bottom 0 vs 1 is "a > b ? 0 : 1" (a tie goes to 1); later bottoms need strict >.
    a = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    b = np.array([[1.0, 5.0, 3.0, 0.0]], np.float32)
    c = np.array([[0.0, 5.0, 3.0, 4.0]], np.float32)
    lay = make_layer("Eltwise", "eltwise_param { operation: MAX }", [a.shape] * 3, module="eltwise")
    (y,), (ga, gb, gc), _ = run_layer(lay, [a, b, c], [np.ones_like(a)])
    assert_close(y, [[1, 5, 3, 4]])
    assert_close(ga, [[0, 0, 0, 1]])
    assert_close(gb, [[1, 1, 1, 0]])
    assert_close(gc, [[0, 0, 0, 0]])


def test_eltwise_prod_unstable_grad_is_y_over_x():
    a = np.array([[0.0, 2.0]], np.float32)
    b = np.array([[3.0, 4.0]], np.float32)
    lay = make_layer("Eltwise", "eltwise_param { operation: PROD stable_prod_grad: false }", [a.shape] * 2,
                     module="eltwise")
    (y,), (ga, gb), _ = run_layer(lay, [a, b], [np.ones_like(a)])
    assert_close(y, [[0, 8]])
    assert np.isnan(ga[0, 0]) and ga[0, 1] == 4.0  # 0/0 where Caffe divides by x == 0
    assert_close(gb, [[0, 2]])


def test_argmax_ties_list_larger_index_first():
    x = np.array([[[[1.0, 3.0, 3.0, 0.0]]]], np.float32)
    lay = make_layer("ArgMax", "argmax_param { top_k: 3 out_max_val: true }", [x.shape], module="reduction")
    (y,), _, _ = run_layer(lay, [x])
    assert y.shape == (1, 2, 3, 1)
    assert_close(y[0, :, :, 0], [[2, 1, 0], [3, 3, 1]])


def test_errors_name_layer_and_field():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Eltwise\): eltwise_param.coeff is only allowed with operation SUM \(got PROD\)"):
        make_layer("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [S, S], module="eltwise")
    with pytest.raises(UnsupportedParameter, match=r"eltwise_param.coeff needs one entry per bottom \(2 bottoms, 1 coeffs\)"):
        make_layer("Eltwise", "eltwise_param { coeff: 1 }", [S, S], module="eltwise")
    with pytest.raises(ShapeError, match=r"layer 'L' \(type Slice\): axis 1 of size 3 does not divide into 2 equal slices"):
        make_layer("Slice", "", [S], module="concat_slice", n_tops=2)
    with pytest.raises(UnsupportedParameter, match=r"slice_point needs #tops - 1 = 2 entries, got 1"):
        make_layer("Slice", "slice_param { slice_point: 1 }", [S], module="concat_slice", n_tops=3)
    with pytest.raises(UnsupportedParameter, match=r"either concat_param.axis or concat_param.concat_dim"):
        make_layer("Concat", "concat_param { axis: 1 concat_dim: 1 }", [S, S], module="concat_slice")
    with pytest.raises(ShapeError, match=r"bottoms must agree on every axis but 1"):
        make_layer("Concat", "", [S, (2, 3, 5, 5)], module="concat_slice")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Reshape\): reshape_param.shape \[-1, -1\] contains more than one -1"):
        make_layer("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }", [S], module="shape_ops")
    with pytest.raises(ShapeError, match=r"bottom count 120 \(\(2, 3, 5, 4\)\) is not divisible by the product of the given dimensions \(7\)"):
        make_layer("Reshape", "reshape_param { shape { dim: 7 dim: -1 } }", [S], module="shape_ops")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Tile\): tile_param.tiles must be given and positive \(got 0\)"):
        make_layer("Tile", "tile_param { tiles: 0 }", [S], module="shape_ops")
    with pytest.raises(UnsupportedParameter, match=r"argmax_param.top_k 6 exceeds axis 2 of size 5"):
        make_layer("ArgMax", "argmax_param { top_k: 6 axis: 2 }", [S], module="reduction")
    with pytest.raises(UnsupportedParameter, match=r"softmax_param.axis 4 is out of range"):
        make_layer("Softmax", "softmax_param { axis: 4 }", [S], module="softmax")


def test_reshape_shapes():
    def top(body, shape=S):
        return make_layer("Reshape", f"reshape_param {{ {body} }}", [shape], module="shape_ops").top_shapes[0]
    assert top("shape { dim: 0 dim: -1 }") == (2, 60)
    assert top("shape { dim: 0 dim: 0 dim: 2 dim: -1 }") == (2, 3, 2, 10)
    assert top("axis: 1 num_axes: 2 shape { dim: -1 }") == (2, 15, 4)
    assert top("axis: -1 num_axes: 0 shape { dim: 1 }") == (2, 3, 5, 4, 1)
    assert top("axis: 0 num_axes: 0 shape { dim: 1 }") == (1, 2, 3, 5, 4)


def test_filter_and_batch_reindex_vs_numpy():
    x = randn(S, 1)
    sel = np.array([0.0, 1.0], np.float32)
    lay = make_layer("Filter", "", [S, (2,)], module="indexing")
    (y,), (gx, _), _ = run_layer(lay, [x, sel], [np.ones((1,) + S[1:], np.float32)])
    assert_close(y, x[1:2]) and assert_close(gx[0], 0 * x[0]) and assert_close(gx[1], np.ones(S[1:]))
    idx = np.array([1, 0, 1, 1], np.float32)
    lay = make_layer("BatchReindex", "", [S, (4,)], module="indexing")
    (y,), (gx, _), _ = run_layer(lay, [x, idx], [np.ones((4,) + S[1:], np.float32)])
    assert_close(y, x[[1, 0, 1, 1]]) and assert_close(gx[1], 3 * np.ones(S[1:]))


def _cases():
    a, b, c = randn(S, 1), randn(S, 2), randn(S, 3)
    a.reshape(-1)[::5] = b.reshape(-1)[::5]  # ties for MAX
    q = randn((2, 7, 5, 4), 4)
    d = lambda shape, k: randn(shape, 200 + k)  # noqa: E731
    cs = [
        dict(name="cat1", type="Concat", body="", bottoms=[a, q], diffs=[d((2, 10, 5, 4), 0)]),
        dict(name="cat0", type="Concat", body="concat_param { axis: 0 }", bottoms=[a, b, c], diffs=[d((6, 3, 5, 4), 1)]),
        dict(name="catd", type="Concat", body="concat_param { concat_dim: 3 }", bottoms=[a, b], diffs=[d((2, 3, 5, 8), 2)]),
        dict(name="sl_pts", type="Slice", body="slice_param { axis: 1 slice_point: 2 slice_point: 5 }", bottoms=[q],
             n_tops=3, diffs=[d((2, 2, 5, 4), 3), d((2, 3, 5, 4), 4), d((2, 2, 5, 4), 5)]),
        dict(name="sl_eq", type="Slice", body="slice_param { slice_dim: 3 }", bottoms=[a], n_tops=2,
             diffs=[d((2, 3, 5, 2), 6), d((2, 3, 5, 2), 7)]),
        dict(name="sl_neg", type="Slice", body="slice_param { axis: -2 slice_point: 1 }", bottoms=[a], n_tops=2,
             diffs=[d((2, 3, 1, 4), 8), d((2, 3, 4, 4), 9)]),
        dict(name="el_sum", type="Eltwise", body="", bottoms=[a, b, c], diffs=[d(S, 10)]),
        dict(name="el_coef", type="Eltwise", body="eltwise_param { coeff: 0.5 coeff: -2 coeff: 3 }", bottoms=[a, b, c], diffs=[d(S, 11)]),
        dict(name="el_prod", type="Eltwise", body="eltwise_param { operation: PROD }", bottoms=[a, b, c], diffs=[d(S, 12)]),
        dict(name="el_produ", type="Eltwise", body="eltwise_param { operation: PROD stable_prod_grad: false }",
             bottoms=[a, b], diffs=[d(S, 13)], tol=(1e-4, 1e-5)),  # y/x_i loses digits when x_i is small
        dict(name="el_max", type="Eltwise", body="eltwise_param { operation: MAX }", bottoms=[a, b, c], diffs=[d(S, 14)]),
        dict(name="fl", type="Flatten", body="", bottoms=[a], diffs=[d((2, 60), 15)]),
        dict(name="fl2", type="Flatten", body="flatten_param { axis: 1 end_axis: 2 }", bottoms=[a], diffs=[d((2, 15, 4), 16)]),
        dict(name="rs", type="Reshape", body="reshape_param { shape { dim: 0 dim: -1 dim: 2 } }", bottoms=[a], diffs=[d((2, 30, 2), 17)]),
        dict(name="rs2", type="Reshape", body="reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }", bottoms=[a], diffs=[d((2, 15, 4), 18)]),
        dict(name="tile", type="Tile", body="tile_param { tiles: 3 }", bottoms=[a], diffs=[d((2, 9, 5, 4), 19)]),
        dict(name="tile3", type="Tile", body="tile_param { axis: -1 tiles: 2 }", bottoms=[a], diffs=[d((2, 3, 5, 8), 20)]),
        dict(name="red_sum", type="Reduction", body="", bottoms=[a], diffs=[np.array(1.5, np.float32)]),
        dict(name="red_asum", type="Reduction", body="reduction_param { operation: ASUM axis: 1 coeff: 2 }",
             bottoms=[a], diffs=[d((2,), 21)]),
        dict(name="red_sq", type="Reduction", body="reduction_param { operation: SUMSQ axis: 2 }", bottoms=[a], diffs=[d((2, 3), 22)]),
        dict(name="red_mean", type="Reduction", body="reduction_param { operation: MEAN axis: -1 coeff: -0.5 }",
             bottoms=[a], diffs=[d((2, 3, 5), 23)]),
    ]
    mods = {"Concat": "concat_slice", "Slice": "concat_slice", "Eltwise": "eltwise", "Flatten": "shape_ops",
            "Reshape": "shape_ops", "Tile": "shape_ops", "Reduction": "reduction", "BatchReindex": "indexing",
            "Filter": "indexing"}
    for c_ in cs:
        c_["module"] = mods[c_["type"]]
    return cs


def test_cases_vs_numpy():
    # The NumPy truth for the oracle cases, so the default tier checks the same configurations.
    a = randn(S, 1)
    refs = {"cat0": lambda b: np.concatenate(b, 0), "catd": lambda b: np.concatenate(b, 3),
            "el_coef": lambda b: 0.5 * b[0] - 2 * b[1] + 3 * b[2], "el_prod": lambda b: b[0] * b[1] * b[2],
            "el_max": lambda b: np.max(np.stack(b), 0), "fl2": lambda b: b[0].reshape(2, 15, 4),
            "tile": lambda b: np.tile(b[0], (1, 3, 1, 1)), "tile3": lambda b: np.tile(b[0], (1, 1, 1, 2)),
            "red_sum": lambda b: np.array(b[0].astype(np.float64).sum()),
            "red_asum": lambda b: 2 * np.abs(b[0].astype(np.float64)).reshape(2, -1).sum(1),
            "red_sq": lambda b: (b[0].astype(np.float64) ** 2).reshape(2, 3, -1).sum(2),
            "red_mean": lambda b: -0.5 * b[0].astype(np.float64).mean(-1)}
    for c in _cases():
        if c["name"] in refs:
            _, (tops, _, _) = ours(dict(c, diffs=None))
            assert_close(tops[0], refs[c["name"]](c["bottoms"]), what=c["name"])
    assert a.shape == S


@pytest.mark.caffe
def test_shape_layers_vs_caffe():
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
    # Filter and BatchReindex abort under force_backward in Caffe (index bottoms cannot take a
    # gradient), so they join the forward-only net; their backward is checked against NumPy above.
    a, q = randn(S, 1), randn((2, 7, 5, 4), 4)
    fwd += [dict(name="bri", type="BatchReindex", bottoms=[a, np.array([1, 0, 1], np.float32)], module="indexing"),
            dict(name="filt", type="Filter", bottoms=[a, q, np.array([[0.0], [2.0]], np.float32)], n_tops=2,
                 module="indexing", dynamic_shape=True)]
    check_against_caffe(fwd)


def test_parameter_layer():
    lay = make_layer("Parameter", "parameter_param { shape { dim: 3 dim: 2 } }", [], module="indexing")
    assert lay.top_shapes == [(3, 2)] and tuple(lay.blobs[0].shape) == (3, 2)
    y = lay()
    (y * torch.arange(6.0).reshape(3, 2)).sum().backward()
    assert torch.equal(lay.blobs[0].grad, torch.arange(6.0).reshape(3, 2))
