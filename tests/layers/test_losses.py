"""SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss, ContrastiveLoss (losses.py) vs float64 NumPy ports of
the Caffe loops and real Caffe (loss weight 1 and 2)."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat.errors import ShapeError


def ref_sigmoid_ce(x, t, ignore, mode):
    x, loss, count, dx = x.astype(np.float64).ravel(), 0.0, 0, None
    tt = t.astype(np.float64).ravel()
    dx = 1 / (1 + np.exp(-x)) - tt
    for i in range(x.size):
        if ignore is not None and int(tt[i]) == ignore:
            dx[i] = 0
            continue
        pos = float(x[i] >= 0)
        loss -= x[i] * (tt[i] - pos) - np.log(1 + np.exp(x[i] - 2 * x[i] * pos))
        count += 1
    norm = max(1.0, {"VALID": count, "BATCH_SIZE": t.shape[0], "FULL": x.size, "NONE": 1}[mode])
    return loss / norm, (dx / norm).reshape(t.shape)


def ref_contrastive(a, b, y, margin, legacy):
    n = a.shape[0]
    diff = (a - b).reshape(n, -1).astype(np.float64)
    loss, ga = 0.0, np.zeros_like(diff)
    for i in range(n):
        d2 = diff[i] @ diff[i]
        if int(y.ravel()[i]):
            loss += d2
            ga[i] = diff[i] / n
        elif legacy:
            loss += max(margin - d2, 0)
            ga[i] = -diff[i] / n if margin - d2 > 0 else 0
        else:
            d = np.sqrt(d2)
            loss += max(margin - d, 0) ** 2
            ga[i] = -(margin - d) / (d + 1e-4) * diff[i] / n if margin - d > 0 else 0
    return loss / n / 2, ga.reshape(a.shape)


@pytest.mark.parametrize("ignore,mode", [(None, "BATCH_SIZE"), (-1, "VALID"), (-1, "FULL")])
def test_sigmoid_ce_vs_numpy(ignore, mode):
    x = randn((3, 4, 5), 3, 4.0)
    tgt = np.random.default_rng(4).random((3, 4, 5)).astype(np.float32)
    if ignore is not None:
        tgt.reshape(-1)[::3] = ignore
    body = f"loss_param {{ normalization: {mode} " + (f"ignore_label: {ignore} " if ignore is not None else "") + "}"
    _, ((loss,), (gx, _), _) = ours({"name": "L", "type": "SigmoidCrossEntropyLoss", "body": body,
                                     "bottoms": [x, tgt], "diffs": [np.array(1.0, np.float32)], "module": "losses"})
    want, dx = ref_sigmoid_ce(x, tgt, ignore, mode)
    assert_close(loss, want) and assert_close(gx, dx)


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_vs_numpy(legacy):
    a, b = randn((6, 4, 1, 1), 5, 0.5), randn((6, 4, 1, 1), 6, 0.5)
    y = np.array([1, 0, 0, 1, 0, 0], np.float32).reshape(6, 1, 1, 1)
    body = f"contrastive_loss_param {{ margin: 1.5 legacy_version: {str(legacy).lower()} }}"
    _, ((loss,), (ga, gb, _), _) = ours({"name": "L", "type": "ContrastiveLoss", "body": body, "bottoms": [a, b, y],
                                         "diffs": [np.array(1.0, np.float32)], "module": "losses"})
    want, dwant = ref_contrastive(a, b, y, 1.5, legacy)
    assert_close(loss, want) and assert_close(ga, dwant) and assert_close(gb, -dwant)


def test_euclidean_vs_numpy():
    # euclidean_loss_layer.cpp: loss = sum (a - b)^2 / N / 2; d a = lw (a - b) / N = -d b.
    a, b = randn((4, 3, 2), 13), randn((4, 3, 2), 14)
    _, ((loss,), (ga, gb), _) = ours({"name": "L", "type": "EuclideanLoss", "bottoms": [a, b],
                                      "diffs": [np.array(2.0, np.float32)], "module": "losses"})
    diff = a.astype(np.float64) - b
    assert loss.shape == ()
    assert_close(loss, (diff ** 2).sum() / 4 / 2)
    assert_close(ga, 2.0 * diff / 4)
    assert_close(gb, -2.0 * diff / 4)


def ref_hinge(x, lab, l2):
    """hinge_loss_layer.cpp: d = max(0, 1 + s*x), s = -1 at the label; (loss, dx for loss weight 1)."""
    n = x.shape[0]
    d = x.astype(np.float64).copy()
    for i, l in enumerate(lab.astype(int)):
        d[i, l] *= -1
    d = np.maximum(0.0, 1.0 + d)
    loss = (d * d).sum() / n if l2 else d.sum() / n
    g = 2 * d if l2 else np.sign(d)
    for i, l in enumerate(lab.astype(int)):
        g[i, l] *= -1
    return loss, g / n


@pytest.mark.parametrize("l2", [False, True])
def test_hinge_vs_numpy(l2):
    x = randn((4, 6), 10, 3.0)
    lab = np.array([1, 0, 5, 3], np.float32)
    body = "hinge_loss_param { norm: L2 }" if l2 else ""
    _, ((loss,), (gx, _), _) = ours({"name": "L", "type": "HingeLoss", "body": body, "bottoms": [x, lab],
                                     "diffs": [np.array(2.0, np.float32)], "module": "losses"})
    want, dx = ref_hinge(x, lab, l2)
    assert_close(loss, want)
    assert_close(gx, 2.0 * dx)


def test_loss_errors():
    with pytest.raises(ShapeError, match=r"the data and label should have the same first dimension"):
        make_layer("EuclideanLoss", "", [(3, 5), (4, 5)], module="losses")


def _loss_cases():
    lab4 = np.array([1, 0, 5, 3], np.float32)
    xs = randn((4, 6), 10, 3.0)
    tgt = np.random.default_rng(11).random((4, 6)).astype(np.float32)
    tgt[::2, 1] = -1
    a, b = randn((6, 4, 1, 1), 5, 0.5), randn((6, 4, 1, 1), 6, 0.5)
    sim = np.array([1, 0, 0, 1, 0, 0], np.float32).reshape(6, 1, 1, 1)
    d = [randn((4, 6), 12), randn((4, 3, 2), 13)]
    cs = []
    for lw in (1.0, 2.0):
        w = f"lw{int(lw)}"
        L = np.array(lw, np.float32)
        cs += [
            # SigmoidCrossEntropyLoss's ignore/normalization are BVLC-2017 code the oracle fork
            # predates: the NumPy port tests them (test_sigmoid_ce_vs_numpy).
            dict(name=f"sce_{w}", type="SigmoidCrossEntropyLoss", bottoms=[xs, tgt], diffs=[L], grad=[0]),
            dict(name=f"euc_{w}", type="EuclideanLoss", bottoms=[d[0], randn((4, 6), 14)], diffs=[L]),
            dict(name=f"hl1_{w}", type="HingeLoss", bottoms=[xs, lab4], diffs=[L], grad=[0]),
            dict(name=f"hl2_{w}", type="HingeLoss", bottoms=[xs, lab4], diffs=[L], grad=[0],
                 body="hinge_loss_param { norm: L2 }"),
            dict(name=f"con_{w}", type="ContrastiveLoss", bottoms=[a, b, sim], diffs=[L], grad=[0, 1],
                 body="contrastive_loss_param { margin: 1.5 }"),
            dict(name=f"conl_{w}", type="ContrastiveLoss", bottoms=[a, b, sim], diffs=[L], grad=[0, 1],
                 body="contrastive_loss_param { margin: 1.5 legacy_version: true }"),
        ]
    for c in cs:
        c["module"] = "losses"
    return cs


@pytest.mark.caffe
def test_losses_vs_caffe():
    check_against_caffe(_loss_cases())
