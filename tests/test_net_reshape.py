"""Net::Forward reshapes layers when inputs change size between calls (Fast R-CNN's varying images/ROIs).

Oracle: a net built fresh for each input size (the set-up path every layer test already checks).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_compat.errors import ShapeError
from caffe_compat.io import read_prototxt
from caffe_compat.net import load_net

NET = """
name: "varying"
layer { name: "data" type: "Input" top: "data" top: "rois" top: "labels" top: "t" top: "w"
        input_param { shape { dim: 1 dim: 3 dim: 37 dim: 45 } shape { dim: 3 dim: 5 } shape { dim: 3 }
                      shape { dim: 3 dim: 8 } shape { dim: 3 dim: 8 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "gpool" type: "Pooling" bottom: "conv" top: "gpool" pooling_param { pool: AVE global_pooling: true } }
layer { name: "roi" type: "ROIPooling" bottom: "pool" bottom: "rois" top: "roi"
        roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.25 } }
layer { name: "fc" type: "InnerProduct" bottom: "roi" top: "fc" inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "bb" type: "InnerProduct" bottom: "roi" top: "bb" inner_product_param { num_output: 8 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "labels" top: "loss" }
layer { name: "lbb" type: "SmoothL1Loss" bottom: "bb" bottom: "t" bottom: "w" top: "lbb" }
"""


def _inputs(h, w, r, seed):
    g = np.random.default_rng(seed)
    x1 = g.uniform(0, w / 2, r); y1 = g.uniform(0, h / 2, r)
    rois = np.stack([np.zeros(r), x1, y1, x1 + g.uniform(4, w / 2, r), y1 + g.uniform(4, h / 2, r)], 1)
    return {"data": torch.tensor(g.normal(size=(1, 3, h, w)), dtype=torch.float32),
            "rois": torch.tensor(rois, dtype=torch.float32),
            "labels": torch.tensor(g.integers(0, 2, r), dtype=torch.float32),
            "t": torch.tensor(g.normal(size=(r, 8)), dtype=torch.float32),
            "w": torch.tensor(g.integers(0, 2, (r, 8)), dtype=torch.float32)}


def _fresh(h, w, r, state):
    param = read_prototxt(NET)
    shapes = {"data": (1, 3, h, w), "rois": (r, 5), "labels": (r,), "t": (r, 8), "w": (r, 8)}
    net = load_net(param, input_shapes=shapes)
    net.load_state_dict(state)
    return net


@pytest.mark.parametrize("h,w,r", [(37, 45, 3), (64, 29, 7), (21, 90, 1), (37, 45, 3)])
def test_reshaped_net_matches_a_net_built_for_the_size(h, w, r):
    torch.manual_seed(0)
    net = load_net(read_prototxt(NET))
    # warm the net on another size first, so this call must reshape
    net(**_inputs(50, 50, 5, 1))
    inp = _inputs(h, w, r, 2)
    got = net.forward_all(**inp)
    ref = _fresh(h, w, r, net.state_dict()).forward_all(**inp)
    for k in ("pool", "gpool", "roi", "loss", "lbb"):
        assert got[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(got[k].detach().numpy(), ref[k].detach().numpy(), err_msg=k)
    assert net.layer("pool").bottom_shapes[0][2:] == ref["conv"].shape[2:]
    # the divisor of SmoothL1Loss is the new ROI count (fresh net's N), not the first one
    assert net.layer("lbb").num == r


def test_reshape_to_an_impossible_size_is_a_shape_error():
    net = load_net(read_prototxt(NET))
    bad = _inputs(37, 45, 3, 0)
    bad["labels"] = torch.zeros(4)
    with pytest.raises(ShapeError, match="same first dimension"):
        net(**bad)
