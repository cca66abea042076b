"""MergeData (Jigsaw++ fork, merge_data_layer.cpp) vs a NumPy port of the fork loop on the same draws.

MergeData is not in the oracle build, so the NumPy port is the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import make_layer, randn
from caffe_compat.errors import UnsupportedParameter


def ref_merge(bottoms, draws, lo, hi):
    """merge_data_layer.cpp Forward_cpu with rand() replaced by the list ``draws`` (consumed in order)."""
    t = len(bottoms) // 2
    n = bottoms[0].shape[0]
    it = iter(draws)
    tops = [b.copy() for b in bottoms[:t]]
    sub = np.zeros((n, 1))
    for i in range(n):
        k = next(it) % hi + lo
        mask, ri = [False] * t, [-1] * t
        for _ in range(k):
            while True:
                ind = next(it) % t
                if not mask[ind]:
                    mask[ind] = True
                    break
            ok = False
            while not ok:
                ok = True
                ind2 = next(it) % t
                if any(ri[j] == ind2 for j in range(t)):
                    ok = False
            ri[ind] = ind2
        sub[i] = k
        for j in range(t):
            tops[j][i] = bottoms[t + ri[j]][i] if mask[j] else bottoms[j][i]
    return tops, sub


def test_merge_data_matches_fork_loop_on_the_same_draws():
    shape = (5, 3, 4, 2)
    bottoms = [randn(shape, s) for s in range(18)]
    lay = make_layer("MergeData", "merge_data_param { min_substitute: 0 max_substitute: 3 }", [shape] * 18,
                     module="merge_data", n_tops=10)
    draws = list(np.random.default_rng(0).integers(0, 2 ** 31, size=400))
    feed = iter(draws)
    lay._rand = lambda: int(next(feed))
    out = lay(*[torch.from_numpy(b) for b in bottoms])
    tops, sub = ref_merge(bottoms, draws, 0, 3)
    assert len(out) == 10 and lay.top_shapes[-1] == (5, 1)
    for j in range(9):
        assert np.array_equal(out[j].numpy(), tops[j])
    assert np.array_equal(out[9].numpy(), sub)


def test_merge_data_statistics_and_seed():
    shape = (400, 1, 1, 1)
    t = 9
    bottoms = [np.full(shape, j, np.float32) for j in range(2 * t)]  # value = bottom index
    lay = make_layer("MergeData", "merge_data_param { min_substitute: 1 max_substitute: 3 }", [shape] * 18,
                     module="merge_data", n_tops=10)
    out = [o.numpy().reshape(400) for o in lay(*[torch.from_numpy(b) for b in bottoms])]
    src = np.stack(out[:t], 1)  # which bottom each top tile came from
    k = out[t]
    assert set(np.unique(k)) == {1.0, 2.0, 3.0}  # rand() % 3 + 1
    assert np.all(np.abs(np.bincount(k.astype(int))[1:] / 400 - 1 / 3) < 0.08)
    swapped = src >= t
    assert np.array_equal(swapped.sum(1), k)  # k distinct positions
    assert np.all(src[~swapped] == np.broadcast_to(np.arange(t), src.shape)[~swapped])
    for row in src:  # distinct substitute tiles
        sub = row[row >= t]
        assert len(set(sub)) == len(sub)
    lay2 = make_layer("MergeData", "merge_data_param { min_substitute: 1 max_substitute: 3 }", [shape] * 18,
                      module="merge_data", n_tops=10)
    again = [o.numpy().reshape(400) for o in lay2(*[torch.from_numpy(b) for b in bottoms])]
    assert all(np.array_equal(a, b) for a, b in zip(out, again))  # seeded: repeatable


def test_merge_data_errors():
    shape = (2, 3, 4, 4)
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type MergeData\): merge_data_param.max_substitute must be positive \(got 0\)"):
        make_layer("MergeData", "merge_data_param { max_substitute: 0 }", [shape] * 4, module="merge_data", n_tops=3)
    with pytest.raises(UnsupportedParameter, match=r"needs an even number of bottoms"):
        make_layer("MergeData", "", [shape] * 3, module="merge_data", n_tops=2)
    with pytest.raises(UnsupportedParameter, match=r"substitutions must lie in \[0, 2\] tiles"):
        make_layer("MergeData", "merge_data_param { min_substitute: 1 max_substitute: 3 }", [shape] * 4,
                   module="merge_data", n_tops=3)
