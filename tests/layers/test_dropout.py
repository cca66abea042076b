"""Dropout (dropout_layer.cpp): TEST identity, TRAIN mask statistics, scale and seeding, real Caffe in TEST."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe
from _util import make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter
from test_neuron import SHAPE, x_with_kinks


def test_dropout_test_phase_is_identity():
    x = x_with_kinks()
    drop = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [SHAPE], module="dropout")
    (y,), _, _ = run_layer(drop, [x])
    assert np.array_equal(y, x)


def test_dropout_train_statistics_and_scale():
    shape = (50, 40, 10, 10)
    drop = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [shape], phase="TRAIN", module="dropout")
    x = np.ones(shape, np.float32)
    y1 = drop(torch.from_numpy(x)).numpy()
    scale = np.float32(1.0 / (1.0 - float(np.float32(0.3))))
    assert set(np.unique(y1)) == {0.0, scale}  # kept values are scaled exactly by 1/(1-ratio)
    kept = (y1 != 0).mean()
    assert abs(kept - 0.7) < 0.005  # 200k Bernoulli(0.7) draws: sd 0.001
    y2 = drop(torch.from_numpy(x)).numpy()
    assert not np.array_equal(y1, y2)  # a fresh mask each pass
    drop.reseed(drop._seed)
    drop2 = make_layer("Dropout", "dropout_param { dropout_ratio: 0.3 }", [shape], phase="TRAIN", module="dropout")
    assert np.array_equal(drop2(torch.from_numpy(x)).numpy(), y1)  # same name -> same seed -> same mask
    xt = torch.from_numpy(randn((4, 6), 2)).requires_grad_()
    d = make_layer("Dropout", "", [(4, 6)], phase="TRAIN", module="dropout")
    y = d(xt)
    y.backward(torch.ones_like(y))
    assert torch.equal(xt.grad, (y.detach() != 0).float() * 2.0)  # backward: dy * mask * scale


def test_dropout_rejects_ratio_one():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Dropout\): dropout_param.dropout_ratio must be in \[0, 1\) \(got 1.0\)"):
        make_layer("Dropout", "dropout_param { dropout_ratio: 1.0 }", [SHAPE], module="dropout")


@pytest.mark.caffe
def test_dropout_test_phase_vs_caffe():
    x = x_with_kinks()
    check_against_caffe([{"name": "drop", "type": "Dropout", "body": "dropout_param { dropout_ratio: 0.3 }",
                          "bottoms": [x], "module": "dropout", "diffs": [randn(SHAPE, 100)]}])
