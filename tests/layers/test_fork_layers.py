"""SmoothL1Loss (Fast/Faster R-CNN fork) and MergeData (Jigsaw++ fork) vs NumPy ports of the fork loops.

The oracle build carries a CPU port of the Fast R-CNN SmoothL1Loss whose header admits only 2
bottoms (no sigma), so that form is also checked against real Caffe; the weighted/sigma forms and
MergeData are not in the oracle, so their NumPy ports are the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat.errors import UnsupportedParameter

SH = (4, 8, 1, 1)  # Fast R-CNN: N x 4K bbox targets


def ref_smooth_l1(b0, b1, w_in, w_out, sigma, fast_rcnn):
    """smooth_L1_loss_layer.cu (float64 loop): (loss, d b0 for top diff 1)."""
    s2 = sigma * sigma
    n = b0.shape[0]
    d = (b0 - b1).astype(np.float64).ravel()
    if w_in is not None:
        d = w_in.ravel() * d
    loss, g = 0.0, np.zeros_like(d)
    for i in range(d.size):
        v = d[i]
        e = 0.5 * v * v * s2 if abs(v) < 1 / s2 else abs(v) - 0.5 / s2
        if w_out is not None:
            e *= w_out.ravel()[i]
        loss += abs(e) if fast_rcnn else e  # the fast-rcnn branch sums with asum
        g[i] = s2 * v if abs(v) < 1 / s2 else np.sign(v)
        if not fast_rcnn and w_in is not None:
            g[i] *= w_in.ravel()[i] * w_out.ravel()[i]
    return loss / n, (g / n).reshape(b0.shape)


def _inputs():
    b0, b1 = randn(SH, 1, 1.5), randn(SH, 2, 1.5)
    w_in = (np.random.default_rng(3).random(SH) > 0.5).astype(np.float32) * 2.0  # 0 or 2: shows the
    w_out = np.random.default_rng(4).random(SH).astype(np.float32)              # fast-rcnn backward quirk
    return b0, b1, w_in, w_out


@pytest.mark.parametrize("nb,sigma", [(2, 1.0), (3, 1.0), (4, 1.0), (4, 3.0), (2, 0.5)])
def test_smooth_l1_vs_numpy(nb, sigma):
    b0, b1, w_in, w_out = _inputs()
    bottoms = [b0, b1, w_in, w_out][:nb]
    body = f"smooth_l1_loss_param {{ sigma: {sigma} }}"
    lay, ((loss,), gx, _) = ours({"name": "L", "type": "SmoothL1Loss", "body": body, "bottoms": bottoms,
                                  "diffs": [np.array(2.0, np.float32)], "module": "smooth_l1_loss"})
    want, g = ref_smooth_l1(b0, b1, w_in if nb >= 3 else None, w_out if nb == 4 else None, sigma, nb == 3)
    assert lay.is_loss and loss.shape == ()
    assert_close(loss, want)
    assert_close(gx[0], 2.0 * g)
    assert_close(gx[1], -2.0 * g)


@pytest.mark.caffe
def test_smooth_l1_fast_rcnn_vs_caffe():
    b0, b1, _, _ = _inputs()
    b0.reshape(-1)[:3] = b1.reshape(-1)[:3] + np.array([0.5, -0.999, 1.0], np.float32)  # both branches and |d| == 1
    cases = [dict(name=f"sl_{int(lw)}", type="SmoothL1Loss", bottoms=[b0, b1], grad=[0, 1],
                  diffs=[np.array(lw, np.float32)], module="smooth_l1_loss") for lw in (1.0, 2.0)]
    check_against_caffe(cases)


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
