"""Weights I/O: Net::CopyTrainedLayersFrom rules, save_caffemodel, and real Caffe reading both ways."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_compat.errors import ShapeError
from caffe_compat.io import read_prototxt
from caffe_compat.net import load_net
from caffe_compat.proto import caffe_pb2
from caffe_compat.weights import copy_trained_layers, save_caffemodel, shape_equals

from _oracle import caffe_run, require_oracle

NET = """
name: "w"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.2 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 3 bias_term: false weight_filler { type: "gaussian" std: 0.2 } } }
"""


def _net(text=NET, **kw):
    return load_net(read_prototxt(text), **kw)


def _model(layers, v1=False):
    """A NetParameter with blobs: layers = [(name, type, [array])]; v1 uses legacy 4-d dims."""
    m = caffe_pb2.NetParameter()
    for name, typ, arrays in layers:
        lp = m.layers.add() if v1 else m.layer.add()
        lp.name = name
        if not v1:
            lp.type = typ
        for a in arrays:
            b = lp.blobs.add()
            if v1:
                s = (1,) * (4 - a.ndim) + a.shape
                b.num, b.channels, b.height, b.width = s
            else:
                b.shape.dim.extend(a.shape)
            b.data.extend(a.ravel().tolist())
    return m


def test_save_and_copy_round_trip(tmp_path):
    torch.manual_seed(0)
    a = _net()
    path = str(tmp_path / "a.caffemodel")
    save_caffemodel(a, path)
    torch.manual_seed(1)
    b = _net()
    rep = copy_trained_layers(b, path)
    assert rep.copied == ["conv1", "conv2"] and rep.ignored == [] and rep.untouched == []
    for k in a.params:
        for p, q in zip(a.params[k], b.params[k]):
            assert torch.equal(p, q)
    c = _net(weights=path)  # load_net(weights=...)
    assert torch.equal(c.params["conv2"][0], a.params["conv2"][0])


def test_first_target_by_name_types_not_compared_sources_ignored():
    n = _net()
    w = np.arange(4 * 3 * 9, dtype=np.float32).reshape(4, 3, 3, 3)
    m = _model([("conv1", "InnerProduct", [w, np.ones(4, np.float32)]),  # type differs: still copied
                ("extra", "Convolution", [np.ones(2, np.float32)]),
                ("conv1_conv1_0_split", "Split", [])])
    rep = copy_trained_layers(n, m)
    assert rep.copied == ["conv1"] and rep.ignored == ["extra"]
    assert rep.splits_skipped == ["conv1_conv1_0_split"] and rep.untouched == ["conv2"]
    np.testing.assert_array_equal(n.params["conv1"][0].detach().numpy(), w)


def test_blob_count_mismatch():
    n = _net()
    m = _model([("conv2", "Convolution", [np.zeros((2, 4, 3, 3), np.float32), np.zeros(2, np.float32)])])
    with pytest.raises(ShapeError, match="incompatible number of blobs for layer 'conv2': source has 2, target has 1"):
        copy_trained_layers(n, m)


def test_shape_mismatch_caffe_text_and_non_strict():
    n = _net()
    before = n.params["conv1"][0].detach().clone()
    m = _model([("conv1", "Convolution", [np.zeros((5, 3, 3, 3), np.float32), np.zeros(5, np.float32)]),
                ("conv2", "Convolution", [np.full((2, 4, 3, 3), 2, np.float32)])])
    msg = (r"cannot copy param 0 weights from layer 'conv1'; shape mismatch.  Source param shape is "
           r"5 3 3 3 \(135\); target param shape is 4 3 3 3 \(108\).  To learn this layer's parameters "
           r"from scratch rather than copying from a saved net, rename the layer.")
    with pytest.raises(ShapeError, match=msg):
        copy_trained_layers(n, m)
    rep = copy_trained_layers(n, m, strict=False)
    assert [x for x, _ in rep.mismatched] == ["conv1"] and rep.copied == ["conv2"] and not rep.ok
    assert torch.equal(n.params["conv1"][0], before)
    assert (n.params["conv2"][0] == 2).all()


def test_legacy_shapes_compare_right_aligned():
    assert shape_equals((4, 9), (1, 1, 4, 9), legacy=True)
    assert shape_equals((4,), (1, 1, 1, 4), legacy=True)
    assert not shape_equals((4, 9), (1, 1, 4, 9), legacy=False)
    assert not shape_equals((4, 9), (1, 4, 1, 9), legacy=True)
    n = _net()
    m = _model([("conv1", "", [np.ones((4, 3, 3, 3), np.float32), np.full(4, 3, np.float32)])], v1=True)
    rep = copy_trained_layers(n, m)
    assert rep.copied == ["conv1"]
    assert (n.params["conv1"][1] == 3).all() and n.params["conv1"][1].shape == (4,)


@pytest.mark.caffe
def test_real_caffe_reads_ours_and_we_read_caffes(tmp_path):
    require_oracle()
    torch.manual_seed(2)
    n = _net()
    ours = str(tmp_path / "ours.caffemodel")
    save_caffemodel(n, ours)
    x = torch.randn(1, 3, 8, 8)
    res = caffe_run(NET, inputs={"data": x.numpy()}, weights_file=ours,
                    save_caffemodel=str(tmp_path / "caffe.caffemodel"))
    for k, ps in n.params.items():
        for i, p in enumerate(ps):
            np.testing.assert_array_equal(res["params"][f"{k}/{i}"], p.detach().numpy())
    np.testing.assert_allclose(res["data"]["conv2"], n(data=x)["conv2"].detach().numpy(), rtol=1e-5, atol=1e-5)
    torch.manual_seed(3)
    m = _net()
    rep = copy_trained_layers(m, str(tmp_path / "caffe.caffemodel"))
    assert rep.copied == ["conv1", "conv2"]
    for k in n.params:
        for p, q in zip(n.params[k], m.params[k]):
            assert torch.equal(p, q)
