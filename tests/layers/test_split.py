"""Split and Silence (split_layer.cpp, silence_layer.cpp): copies out, summed diffs back; a sink with no top."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat import layers as L
from caffe_compat.errors import UnsupportedParameter

S = (2, 3, 4, 5)


@pytest.mark.parametrize("n_tops", [1, 2, 3])
def test_split_vs_numpy(n_tops):
    # split_layer.cpp: top[i] = bottom; Backward: bottom diff = sum_i top[i] diff (float64 sum here).
    x = randn(S, 1)
    diffs = [randn(S, 10 + i) for i in range(n_tops)]
    lay, (tops, (gx,), _) = ours({"name": "L", "type": "Split", "bottoms": [x], "n_tops": n_tops,
                                  "diffs": diffs, "module": "split"})
    assert lay.top_shapes == [S] * n_tops and len(tops) == n_tops
    for top in tops:
        assert np.array_equal(top, x)
    assert_close(gx, np.sum([d.astype(np.float64) for d in diffs], axis=0))


def test_silence_has_no_top_and_no_gradient():
    lay = make_layer("Silence", "", [S, (3,)], module="split", n_tops=0)
    assert lay.top_shapes == [] and len(lay.blobs) == 0
    x = torch.from_numpy(randn(S, 1)).requires_grad_()
    assert lay(x, torch.zeros(3)) == ()
    assert x.grad is None  # nothing flows back: Caffe's Silence writes zero diffs
    with pytest.raises(UnsupportedParameter, match=r"layer 's' \(type Silence\) takes exactly 0 top blob\(s\), got 1"):
        L.check_arity(L.get("Silence"), "s", 1, 1)
    with pytest.raises(UnsupportedParameter, match=r"layer 's' \(type Split\) takes exactly 1 bottom blob\(s\), got 2"):
        L.check_arity(L.get("Split"), "s", 2, 2)


@pytest.mark.caffe
def test_split_vs_caffe():
    x = randn(S, 1)
    check_against_caffe([{"name": "sp2", "type": "Split", "bottoms": [x], "n_tops": 2, "module": "split",
                          "diffs": [randn(S, 10), randn(S, 11)]},
                         {"name": "sp3", "type": "Split", "bottoms": [x], "n_tops": 3, "module": "split",
                          "diffs": [randn(S, 12), randn(S, 13), randn(S, 14)]}])
