"""Concat and Slice (concat_layer.cpp, slice_layer.cpp): axis/concat_dim/slice_dim, slice points, errors."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat.errors import ShapeError, UnsupportedParameter

S = (2, 3, 5, 4)


def test_errors_name_layer_and_field():
    with pytest.raises(ShapeError, match=r"layer 'L' \(type Slice\): axis 1 of size 3 does not divide into 2 equal slices"):
        make_layer("Slice", "", [S], module="concat_slice", n_tops=2)
    with pytest.raises(UnsupportedParameter, match=r"slice_point needs #tops - 1 = 2 entries, got 1"):
        make_layer("Slice", "slice_param { slice_point: 1 }", [S], module="concat_slice", n_tops=3)
    with pytest.raises(UnsupportedParameter, match=r"either concat_param.axis or concat_param.concat_dim"):
        make_layer("Concat", "concat_param { axis: 1 concat_dim: 1 }", [S, S], module="concat_slice")
    with pytest.raises(ShapeError, match=r"bottoms must agree on every axis but 1"):
        make_layer("Concat", "", [S, (2, 3, 5, 5)], module="concat_slice")


def _cases():
    a, b, c = randn(S, 1), randn(S, 2), randn(S, 3)
    a.reshape(-1)[::5] = b.reshape(-1)[::5]  # same inputs as the other shape-layer files
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
    ]
    for c_ in cs:
        c_["module"] = "concat_slice"
    return cs


def test_cases_vs_numpy():
    # The NumPy truth for the oracle cases (forward; backward: Slice's diff is the concat of the
    # top diffs and Concat's the split of its top diff, as concat_layer.cpp/slice_layer.cpp copy).
    refs = {"cat1": lambda b: [np.concatenate(b, 1)], "cat0": lambda b: [np.concatenate(b, 0)],
            "catd": lambda b: [np.concatenate(b, 3)], "sl_pts": lambda b: np.split(b[0], [2, 5], 1),
            "sl_eq": lambda b: np.split(b[0], 2, 3), "sl_neg": lambda b: np.split(b[0], [1], 2)}
    for c in _cases():
        _, (tops, gx, _) = ours(c)
        want = refs[c["name"]](c["bottoms"])
        assert len(tops) == len(want)
        for j, (got, w) in enumerate(zip(tops, want)):
            assert_close(got, w, what=f'{c["name"]} top {j}')
        if c["type"] == "Slice":
            axis = {"sl_pts": 1, "sl_eq": 3, "sl_neg": 2}[c["name"]]
            assert_close(gx[0], np.concatenate(c["diffs"], axis), what=f'{c["name"]} backward')
        else:
            axis = {"cat1": 1, "cat0": 0, "catd": 3}[c["name"]]
            cuts = np.cumsum([b.shape[axis] for b in c["bottoms"]])[:-1]
            for i, g in enumerate(np.split(c["diffs"][0], cuts, axis)):
                assert_close(gx[i], g, what=f'{c["name"]} backward {i}')


@pytest.mark.caffe
def test_concat_slice_vs_caffe():
    check_against_caffe(_cases())
