"""Accuracy (accuracy_layer.cpp, BVLC 9b89154): top-k with ties, per-class top, ignore_label; real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe
from _util import assert_close, labels, make_layer, randn
from caffe_compat.errors import UnsupportedParameter


def test_accuracy_ties_count_against_the_true_class():
    # accuracy_layer.cpp (9b89154): correct iff #{k : x_k >= x_label} <= top_k.
    x = np.array([[1.0, 2.0, 2.0, 0.0], [3.0, 3.0, 1.0, 0.0], [0.5, 0.5, 0.5, 0.5]], np.float32)
    lab = np.array([1, 0, 3], np.float32)
    for k, want, per in [(1, 0.0, [0, 0, 0, 0]), (2, 2 / 3, [1, 1, 0, 0]), (4, 1.0, [1, 1, 0, 1])]:
        lay = make_layer("Accuracy", f"accuracy_param {{ top_k: {k} }}", [x.shape, lab.shape], module="accuracy",
                         n_tops=2)
        acc, per_class = lay(*[torch.from_numpy(a) for a in (x, lab)])
        assert_close(acc, want, what=f"top_k {k}")
        assert_close(per_class, per, what=f"top_k {k} per class")
    # Everything ignored: 9b89154 reports 0 (the oracle fork divides 0 by 0).
    lay = make_layer("Accuracy", "accuracy_param { ignore_label: 1 }", [(2, 3), (2,)], module="accuracy")
    assert float(lay(torch.zeros(2, 3), torch.ones(2))) == 0.0


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


def test_accuracy_errors():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Accuracy\): accuracy_param.top_k 6 must not exceed the number of classes \(5\)"):
        make_layer("Accuracy", "accuracy_param { top_k: 6 }", [(3, 5), (3,)], module="accuracy")


def ref_accuracy(x, lab, k, axis=1, ignore=None):
    """accuracy_layer.cpp Forward_cpu (float64): correct iff #{c : x_c >= x_label} <= k, over ``axis``."""
    x = np.moveaxis(x.astype(np.float64), axis, -1)
    lab = lab.reshape(x.shape[:-1]).astype(int)
    right, count = 0, 0
    for idx in np.ndindex(*x.shape[:-1]):
        if ignore is not None and lab[idx] == ignore:
            continue
        count += 1
        right += int((x[idx] >= x[idx + (lab[idx],)]).sum() <= k)
    return right / count if count else 0.0


@pytest.mark.parametrize("k,ignore", [(1, None), (3, 4)])
def test_accuracy_vs_numpy(k, ignore):
    x = randn((6, 5, 2, 3), 1)
    lab = labels((6, 2, 3), 5, 3, ignore=ignore)
    body = f"accuracy_param {{ top_k: {k} " + (f"ignore_label: {ignore} " if ignore is not None else "") + "}"
    lay = make_layer("Accuracy", body, [x.shape, lab.shape], module="accuracy")
    assert lay.top_shapes[0] == ()
    assert_close(lay(torch.from_numpy(x), torch.from_numpy(lab)), ref_accuracy(x, lab, k, ignore=ignore))
