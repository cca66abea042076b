"""SmoothL1Loss (Fast/Faster R-CNN fork) vs a NumPy port of the fork loop.

The oracle build carries a CPU port of the Fast R-CNN SmoothL1Loss whose header admits only 2
bottoms (no sigma), so that form is also checked against real Caffe; the weighted/sigma forms
are not in the oracle, so their NumPy port is the oracle.
"""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, randn

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
