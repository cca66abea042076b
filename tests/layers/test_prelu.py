"""PReLU (prelu_layer.cpp) vs a NumPy port (bottom and slope gradients) and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from test_neuron import SHAPE, x_with_kinks


def test_prelu_blob_shapes_and_filler():
    lay = make_layer("PReLU", "", [SHAPE], module="prelu")
    assert tuple(lay.blobs[0].shape) == (3,) and torch.all(lay.blobs[0] == 0.25)
    lay = make_layer("PReLU", "prelu_param { channel_shared: true }", [SHAPE], module="prelu")
    assert tuple(lay.blobs[0].shape) == ()  # Caffe: a 0-axis blob


def test_prelu_vs_numpy():
    x, dy = x_with_kinks(), randn(SHAPE, 5)
    a = np.array([0.25, -0.5, 1.5], np.float32)
    lay, ((y,), (gx,), (ga,)) = ours({"name": "L", "type": "PReLU", "bottoms": [x], "diffs": [dy],
                                        "params": [a], "module": "prelu"})
    ab = a.reshape(1, 3, 1, 1)
    assert_close(y, np.maximum(x, 0) + ab * np.minimum(x, 0))
    assert_close(gx, dy * ((x > 0) + ab * (x <= 0)))
    assert_close(ga, (dy * x * (x <= 0)).sum(axis=(0, 2, 3)))


def test_prelu_channel_shared_vs_numpy():
    x, dy = x_with_kinks(), randn(SHAPE, 6)
    a = np.array(0.3, np.float32)
    lay, ((y,), (gx,), (ga,)) = ours({"name": "L", "type": "PReLU", "body": "prelu_param { channel_shared: true }",
                                        "bottoms": [x], "diffs": [dy], "params": [a], "module": "prelu"})
    assert_close(y, np.maximum(x, 0) + 0.3 * np.minimum(x, 0))
    assert_close(gx, dy * ((x > 0) + 0.3 * (x <= 0)))
    assert_close(ga, (dy.astype(np.float64) * x * (x <= 0)).sum())


@pytest.mark.caffe
def test_prelu_vs_caffe():
    x = x_with_kinks()
    check_against_caffe([
        {"name": "prelu", "type": "PReLU", "body": "", "bottoms": [x], "module": "prelu",
         "diffs": [randn(SHAPE, 100)], "params": [np.array([0.25, -0.5, 1.5], np.float32)]},
        {"name": "prelu_s", "type": "PReLU", "body": "prelu_param { channel_shared: true }", "bottoms": [x],
         "module": "prelu", "diffs": [randn(SHAPE, 101)], "params": [np.array(0.3, np.float32)]},
    ])
