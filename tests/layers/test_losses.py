"""Loss layers and Accuracy vs float64 NumPy ports of the Caffe loops and real Caffe (loss weight 1 and 2)."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat.errors import ShapeError, UnsupportedParameter

FLT_MIN = np.finfo(np.float32).tiny


def labels(shape, classes, seed, ignore=None):
    lab = np.random.default_rng(seed).integers(0, classes, size=shape).astype(np.float32)
    if ignore is not None:
        lab.reshape(-1)[::4] = ignore
    return lab


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
    _, prob = lay(*[__import__("torch").from_numpy(a) for a in (x, labels((3, 2, 4), 5, 2))])
    e = np.exp(x - x.max(1, keepdims=True))
    assert_close(prob, e / e.sum(1, keepdims=True))


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


def test_loss_errors():
    with pytest.raises(ShapeError, match=r"layer 'L' \(type SoftmaxWithLoss\): number of labels \(6, shape \(3, 2\)\) must match"):
        make_layer("SoftmaxWithLoss", "", [SM_SHAPE, (3, 2)], module="softmax_loss")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type InfogainLoss\): loss_param.normalize is deprecated"):
        make_layer("InfogainLoss", "loss_param { normalize: true }", [(3, 5), (3,), (5, 5)], module="softmax_loss")
    with pytest.raises(UnsupportedParameter, match=r"infogain_loss_param.source \(the H matrix\) must be given"):
        make_layer("InfogainLoss", "", [(3, 5), (3,)], module="softmax_loss")
    with pytest.raises(ShapeError, match=r"the data and label should have the same first dimension"):
        make_layer("EuclideanLoss", "", [(3, 5), (4, 5)], module="losses")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Accuracy\): accuracy_param.top_k 6 must not exceed the number of classes \(5\)"):
        make_layer("Accuracy", "accuracy_param { top_k: 6 }", [(3, 5), (3,)], module="accuracy")


def _loss_cases(tmp_path):
    from caffe_compat.binary import encode_blobproto

    x = randn(SM_SHAPE, 1, 3.0)
    lab = labels((3, 2, 4), 5, 2, ignore=2)
    lab_ax3 = labels((3, 5, 2), 4, 7)
    H = np.abs(randn((5, 5), 8)) + np.eye(5, dtype=np.float32)
    src = tmp_path / "H.binaryproto"
    src.write_bytes(encode_blobproto(H.reshape(1, 1, 5, 5)))
    p = np.random.default_rng(9).dirichlet(np.ones(6), size=4).astype(np.float32)
    p[0, 1] = 0.0  # exercises the 1e-20 threshold
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
    mods = {"SoftmaxWithLoss": "softmax_loss", "InfogainLoss": "softmax_loss", "MultinomialLogisticLoss": "softmax_loss"}
    for c in cs:
        c["module"] = mods.get(c["type"], "losses")
    return cs


@pytest.mark.caffe
def test_losses_vs_caffe(tmp_path):
    check_against_caffe(_loss_cases(tmp_path))


def test_accuracy_ties_count_against_the_true_class():
    # accuracy_layer.cpp (9b89154): correct iff #{k : x_k >= x_label} <= top_k.
    x = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    lab = np.array([1, 0, 3], np.float32)
    for k, want, per in [(1, 0.0, [0, 0, 0, 0]), (2, 2 / 3, [1, 1, 0, 0]), (4, 1.0, [1, 1, 0, 1])]:
        lay = make_layer("Accuracy", f"accuracy_param {{ top_k: {k} }}", [x.shape, lab.shape], module="accuracy",
                         n_tops=2)
        acc, per_class = lay(*[__import__("torch").from_numpy(a) for a in (x, lab)])
        assert_close(acc, want, what=f"top_k {k}")
        assert_close(per_class, per, what=f"top_k {k} per class")
    # Everything ignored: 9b89154 reports 0 (the oracle fork divides 0 by 0).
    lay = make_layer("Accuracy", "accuracy_param { ignore_label: 1 }", [(2, 3), (2,)], module="accuracy")
    assert float(lay(__import__("torch").zeros(2, 3), __import__("torch").ones(2))) == 0.0


@pytest.mark.caffe
def test_accuracy_vs_caffe():
    # No ties here: the oracle fork predates BVLC's ">= counts against you" tie rule (it sorts and
    # lets the larger index win), so ties are tested against a NumPy port in test_accuracy_ties.
    x = randn((6, 5, 2, 3), 1)
    lab = labels((6, 2, 3), 5, 2)
    lab_ign = labels((6, 2, 3), 5, 3, ignore=4)
    x2 = randn((7, 4), 4)
    lab2 = labels((7,), 4, 5)
    cases = [
        dict(name="acc", type="Accuracy", bottoms=[x, lab]),
        dict(name="acc3", type="Accuracy", bottoms=[x, lab_ign], n_tops=2,
             body="accuracy_param { top_k: 3 ignore_label: 4 }"),
        dict(name="accax", type="Accuracy", bottoms=[x2, lab2], n_tops=2, body="accuracy_param { axis: -1 top_k: 2 }"),
    ]
    for c in cases:
        c["module"] = "accuracy"
    check_against_caffe(cases)
