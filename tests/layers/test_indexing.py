"""Filter, BatchReindex and Parameter (filter_layer.cpp, batch_reindex_layer.cpp, parameter_layer.hpp)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe
from _util import assert_close, make_layer, randn, run_layer

S = (2, 3, 5, 4)


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


def test_batch_reindex_backward_accumulates_per_index():
    # batch_reindex_layer.cpp Backward: bottom_diff[idx[i]] += top_diff[i] (float64 loop).
    x = randn(S, 1)
    idx = np.array([1, 0, 1, 1], np.float32)
    g = randn((4,) + S[1:], 7)
    lay = make_layer("BatchReindex", "", [S, (4,)], module="indexing")
    _, (gx, _), _ = run_layer(lay, [x, idx], [g])
    want = np.zeros(S)
    for i, j in enumerate(idx.astype(int)):
        want[j] += g[i]
    assert_close(gx, want)


@pytest.mark.caffe
def test_indexing_forward_vs_caffe():
    # Filter and BatchReindex abort under force_backward in Caffe (index bottoms cannot take a
    # gradient), so they run forward only; their backward is checked against NumPy above.
    a, q = randn(S, 1), randn((2, 7, 5, 4), 4)
    fwd = [dict(name="bri", type="BatchReindex", bottoms=[a, np.array([1, 0, 1], np.float32)], module="indexing"),
           dict(name="filt", type="Filter", bottoms=[a, q, np.array([[0.0], [2.0]], np.float32)], n_tops=2,
                module="indexing", dynamic_shape=True)]
    check_against_caffe(fwd)


def test_parameter_layer():
    lay = make_layer("Parameter", "parameter_param { shape { dim: 3 dim: 2 } }", [], module="indexing")
    assert lay.top_shapes == [(3, 2)] and tuple(lay.blobs[0].shape) == (3, 2)
    y = lay()
    (y * torch.arange(6.0).reshape(3, 2)).sum().backward()
    assert torch.equal(lay.blobs[0].grad, torch.arange(6.0).reshape(3, 2))
