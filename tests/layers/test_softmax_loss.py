"""SoftmaxWithLoss, InfogainLoss, MultinomialLogisticLoss (softmax_loss_layer.cpp, infogain_loss_layer.cpp,
multinomial_logistic_loss_layer.cpp) vs float64 NumPy ports of the Caffe loops and real Caffe (loss weight 1 and 2)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, labels, make_layer, randn
from caffe_compat.errors import ShapeError, UnsupportedParameter

FLT_MIN = np.finfo(np.float32).tiny


def ref_softmax_loss(x, lab, axis, ignore, mode):
    """softmax_loss_layer.cpp Forward_cpu/Backward_cpu, float64: (loss, dx for loss weight 1)."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    outer_inner = x.shape[:-1]
    p = np.exp(x - x.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    lab = lab.reshape(outer_inner).astype(int)
    loss, count, dx = 0.0, 0, p.copy()
    for idx in np.ndindex(*outer_inner):
        if ignore is not None and lab[idx] == ignore:
            dx[idx] = 0
            continue
        loss -= np.log(max(p[idx + (lab[idx],)], FLT_MIN))
        dx[idx + (lab[idx],)] -= 1
        count += 1
    full = int(np.prod(outer_inner))
    norm = {"FULL": full, "VALID": count, "BATCH_SIZE": int(np.prod(outer_inner[:axis])), "NONE": 1}[mode]
    norm = max(1.0, norm)
    return loss / norm, np.moveaxis(dx / norm, -1, axis)


SM_SHAPE = (3, 5, 2, 4)  # N, C, H, W


@pytest.mark.parametrize("axis,ignore,mode", [(1, None, "VALID"), (1, 2, "VALID"), (1, 2, "FULL"),
                                              (1, 2, "BATCH_SIZE"), (1, 2, "NONE"), (3, None, "VALID")])
def test_softmax_loss_vs_numpy(axis, ignore, mode):
    x = randn(SM_SHAPE, 1, 3.0)
    lshape = tuple(d for i, d in enumerate(SM_SHAPE) if i != axis)
    lab = labels(lshape, SM_SHAPE[axis], 2, ignore)
    body = f"softmax_param {{ axis: {axis} }} loss_param {{ normalization: {mode} " + \
        (f"ignore_label: {ignore} " if ignore is not None else "") + "}"
    _, ((loss,), (gx, _), _) = ours({"name": "L", "type": "SoftmaxWithLoss", "body": body, "bottoms": [x, lab],
                                     "diffs": [np.array(2.0, np.float32)], "module": "softmax_loss"})
    want, dx = ref_softmax_loss(x, lab, axis, ignore, mode)
    assert loss.shape == ()
    assert_close(loss, want)
    assert_close(gx, 2.0 * dx)


def test_softmax_loss_saturated_gradient_is_p_minus_onehot():
    # p[label] underflows: Caffe clamps the loss at -log(FLT_MIN) but keeps dx = p - 1 there.
    x = np.array([[0.0, 200.0]], np.float32)
    _, ((loss,), (gx, _), _) = ours({"name": "L", "type": "SoftmaxWithLoss", "body": "",
                                     "bottoms": [x, np.array([0.0], np.float32)],
                                     "diffs": [np.array(1.0, np.float32)], "module": "softmax_loss"})
    assert_close(loss, -np.log(FLT_MIN))
    assert_close(gx, [[-1.0, 1.0]])


def test_softmax_loss_prob_top():
    x = randn(SM_SHAPE, 1, 3.0)
    lay = make_layer("SoftmaxWithLoss", "", [SM_SHAPE, (3, 2, 4)], module="softmax_loss", n_tops=2)
    assert lay.top_shapes == [(), SM_SHAPE]
    _, prob = lay(*[torch.from_numpy(a) for a in (x, labels((3, 2, 4), 5, 2))])
    e = np.exp(x - x.max(1, keepdims=True))
    assert_close(prob, e / e.sum(1, keepdims=True))


def ref_infogain(x, lab, H, ignore, mode):
    """infogain_loss_layer.cpp (BVLC 9b89154) Forward/Backward over axis 1 of an (N, C) bottom."""
    x = x.astype(np.float64)
    p = np.exp(x - x.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    loss, count, dx = 0.0, 0, np.zeros_like(p)
    for i, l in enumerate(lab.astype(int)):
        if ignore is not None and l == ignore:
            continue
        loss -= sum(H[l, j] * np.log(max(p[i, j], 1e-20)) for j in range(p.shape[1]))
        dx[i] = p[i] * H[l].sum() - H[l]
        count += 1
    norm = max(1.0, {"VALID": count, "BATCH_SIZE": x.shape[0], "FULL": x.shape[0], "NONE": 1}[mode])
    return loss / norm, dx / norm


@pytest.mark.parametrize("from_file,ignore,mode", [(False, None, "VALID"), (False, 3, "VALID"), (True, 3, "NONE")])
def test_infogain_vs_numpy(tmp_path, from_file, ignore, mode):
    from caffe_compat.binary import encode_blobproto

    x = randn((7, 5), 1, 3.0)
    x[0, 2] = -90.0  # p underflows below 1e-20: the clamp bites in the loss, not in dx
    lab = labels((7,), 5, 2)
    H = (np.abs(randn((5, 5), 8)) + np.eye(5, dtype=np.float32)).astype(np.float32)
    body = f"loss_param {{ normalization: {mode} " + (f"ignore_label: {ignore} " if ignore is not None else "") + "}"
    bottoms = [x, lab]
    if from_file:
        src = tmp_path / "H.binaryproto"
        src.write_bytes(encode_blobproto(H.reshape(1, 1, 5, 5)))
        body += f' infogain_loss_param {{ source: "{src}" }}'
    else:
        bottoms.append(H)
    _, ((loss,), gx, _) = ours({"name": "L", "type": "InfogainLoss", "body": body, "bottoms": bottoms,
                                "diffs": [np.array(2.0, np.float32)], "module": "softmax_loss"})
    want, dx = ref_infogain(x, lab, H.astype(np.float64), ignore, mode)
    assert_close(loss, want)
    assert_close(gx[0], 2.0 * dx)


def ref_mnl(p, lab):
    """multinomial_logistic_loss_layer.cpp: loss = -sum log(max(p[label], 1e-20)) / N;
    dp[i, label] = -1 / N / max(p[i, label], 1e-20) (loss weight 1)."""
    n = p.shape[0]
    loss, dp = 0.0, np.zeros(p.shape)
    for i, l in enumerate(lab.astype(int)):
        q = max(float(p[i, l]), 1e-20)
        loss -= np.log(q)
        dp[i, l] = -1.0 / n / q
    return loss / n, dp


def test_multinomial_logistic_vs_numpy():
    p = np.random.default_rng(9).dirichlet(np.ones(6), size=4).astype(np.float32)
    lab = np.array([1, 0, 5, 3], np.float32)
    _, ((loss,), (gp, _), _) = ours({"name": "L", "type": "MultinomialLogisticLoss", "bottoms": [p, lab],
                                     "diffs": [np.array(2.0, np.float32)], "module": "softmax_loss"})
    want, dp = ref_mnl(p.astype(np.float64), lab)
    assert loss.shape == ()
    assert_close(loss, want)
    assert_close(gp, 2.0 * dp)


def test_loss_errors():
    with pytest.raises(ShapeError, match=r"layer 'L' \(type SoftmaxWithLoss\): number of labels \(6, shape \(3, 2\)\) must match"):
        make_layer("SoftmaxWithLoss", "", [SM_SHAPE, (3, 2)], module="softmax_loss")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type InfogainLoss\): loss_param.normalize is deprecated"):
        make_layer("InfogainLoss", "loss_param { normalize: true }", [(3, 5), (3,), (5, 5)], module="softmax_loss")
    with pytest.raises(UnsupportedParameter, match=r"infogain_loss_param.source \(the H matrix\) must be given"):
        make_layer("InfogainLoss", "", [(3, 5), (3,)], module="softmax_loss")


def _softmax_loss_cases():
    x = randn(SM_SHAPE, 1, 3.0)
    lab = labels((3, 2, 4), 5, 2, ignore=2)
    lab_ax3 = labels((3, 5, 2), 4, 7)
    p = np.random.default_rng(9).dirichlet(np.ones(6), size=4).astype(np.float32)
    p[0, 1] = 0.0  # exercises the 1e-20 threshold
    lab4 = np.array([1, 0, 5, 3], np.float32)
    cs = []
    for lw in (1.0, 2.0):
        w = f"lw{int(lw)}"
        L = np.array(lw, np.float32)
        cs += [
            dict(name=f"swl_{w}", type="SoftmaxWithLoss", bottoms=[x, lab], diffs=[L], grad=[0],
                 body="loss_param { ignore_label: 2 }"),
            dict(name=f"swlb_{w}", type="SoftmaxWithLoss", bottoms=[x, lab], diffs=[L], grad=[0],
                 body="loss_param { normalize: false }"),
            dict(name=f"swlf_{w}", type="SoftmaxWithLoss", bottoms=[x, lab], diffs=[L], grad=[0],
                 body="loss_param { ignore_label: 2 normalization: FULL }"),
            # One top: BVLC cannot build a 2-top SoftmaxWithLoss (its inner Softmax copies both loss
            # weights); the prob top is checked against NumPy in test_softmax_loss_prob_top.
            dict(name=f"swln_{w}", type="SoftmaxWithLoss", bottoms=[x, lab_ax3], diffs=[L], grad=[0],
                 body="softmax_param { axis: 3 } loss_param { normalization: NONE }"),
            # InfogainLoss and SigmoidCrossEntropyLoss's ignore/normalization are BVLC-2017 code the
            # oracle fork predates (its Infogain takes probabilities): NumPy ports test them below.
            dict(name=f"mnl_{w}", type="MultinomialLogisticLoss", bottoms=[p, lab4], diffs=[L], grad=[0],
                 tol=(1e-5, 1e-3)),  # d at p == 0 is -lw/4/1e-20 ~ -5e19: compared relatively
        ]
    for c in cs:
        c["module"] = "softmax_loss"
    return cs


@pytest.mark.caffe
def test_softmax_losses_vs_caffe():
    check_against_caffe(_softmax_loss_cases())
