"""Surgery: preprocessing folded into conv1 (interior exact), BatchNorm+Scale folding, reinit specs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe_compat.errors import ShapeError, UnsupportedParameter
from caffe_compat.io import read_net
from caffe_compat.net import load_net
from caffekt.converters import surgery as S
from caffekt.converters.convert import LayerWeights, WeightSet


def test_fold_preprocessing_matches_caffe_input_in_the_interior():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 5, 5)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    mean_bgr, scale = (103.94, 116.78, 123.68), 0.017
    rgb01 = rng.random((2, 3, 20, 20)).astype(np.float32)          # an RGB image in [0, 1]
    # Caffe's input, computed independently: BGR order, 0-255, minus mean, times scale
    caffe_x = (rgb01[:, ::-1] * 255.0 - np.array(mean_bgr, np.float32)[:, None, None]) * scale
    tv = (rgb01 - np.array(S.IMAGENET_MEAN_RGB, np.float32)[:, None, None]) / \
        np.array(S.IMAGENET_STD_RGB, np.float32)[:, None, None]
    w2, b2 = S.fold_input_preprocessing(w, b, mean_bgr, scale)
    ref = F.conv2d(torch.from_numpy(np.ascontiguousarray(caffe_x)), torch.from_numpy(w), torch.from_numpy(b), padding=2)
    got = F.conv2d(torch.from_numpy(tv), torch.from_numpy(w2), torch.from_numpy(b2), padding=2)
    inner = (slice(None), slice(None), slice(2, -2), slice(2, -2))   # windows clear of the padding
    np.testing.assert_allclose(got[inner].numpy(), ref[inner].numpy(), rtol=1e-4, atol=1e-3)
    assert ref[inner].abs().max().item() > 10  # the comparison is not between near-zeros
    # at the border the zero padding means different pixels: documented, and really different
    assert (got - ref)[:, :, 0, :].abs().max().item() > 1e-2


def test_fold_preprocessing_refuses_non_rgb():
    with pytest.raises(ShapeError, match=r"3 input channels.*\(4, 2, 3, 3\)"):
        S.fold_input_preprocessing(np.zeros((4, 2, 3, 3), np.float32), np.zeros(4, np.float32))


BN_NET = """name: "bn"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false weight_filler { type: "gaussian" std: 1 } } }
layer { name: "bn1" type: "BatchNorm" bottom: "conv1" top: "conv1" batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "conv1" top: "conv1" scale_param { bias_term: true } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 5 kernel_size: 3 weight_filler { type: "gaussian" std: 1 }
  bias_filler { type: "gaussian" std: 1 } } }
layer { name: "bn2" type: "BatchNorm" bottom: "conv2" top: "bn2" }
"""


def test_fold_batchnorm_and_scale_gives_the_same_outputs(tmp_path):
    proto = tmp_path / "bn.prototxt"
    proto.write_text(BN_NET)
    torch.manual_seed(0)
    net = load_net(str(proto))
    rng = np.random.default_rng(2)
    with torch.no_grad():
        for name in ("bn1", "bn2"):
            m, v, s = net.params[name]
            s.fill_(2.5)
            m.copy_(torch.from_numpy(rng.standard_normal(m.shape).astype(np.float32)) * 2.5)
            v.copy_(torch.from_numpy(rng.random(v.shape).astype(np.float32) + 0.1) * 2.5)
        g, beta = net.params["sc1"]
        g.copy_(torch.from_numpy(rng.standard_normal(g.shape).astype(np.float32)))
        beta.copy_(torch.from_numpy(rng.standard_normal(beta.shape).astype(np.float32)))
    ws = WeightSet(LayerWeights(n, "", [p.detach().numpy().copy() for p in ps]) for n, ps in net.params.items())
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        ref = net(data=x)
    param = read_net(str(proto))
    param = param[0] if isinstance(param, tuple) else param
    new_param, new_ws, folded = S.fold_batchnorm(param, ws)
    assert folded == [("conv1", "bn1", "sc1"), ("conv2", "bn2", None)]
    assert [lp.name for lp in new_param.layer] == ["data", "conv1", "relu1", "conv2"]
    assert new_param.layer[3].top[0] == "bn2"
    net2 = load_net(new_param)
    from caffe_compat.weights import copy_trained_layers
    copy_trained_layers(net2, _as_netparam(new_ws), strict=True)
    with torch.no_grad():
        got = net2(data=x)
    assert list(got) == ["bn2"]
    np.testing.assert_allclose(got["bn2"].numpy(), ref["bn2"].numpy(), rtol=1e-5, atol=1e-5)


def _as_netparam(ws):
    from caffe_compat.proto import caffe_pb2
    p = caffe_pb2.NetParameter()
    for lw in ws:
        lp = p.layer.add(name=lw.name)
        for a in lw.blobs:
            bp = lp.blobs.add()
            bp.shape.dim.extend(a.shape)
            bp.data.extend(a.reshape(-1).tolist())
    return p


def test_parse_reinit():
    assert S.parse_reinit("fc7:gaussian:0.005") == S.ReinitSpec("fc7", "gaussian", 0.005, 0.0)
    assert S.parse_reinit("a:b:xavier") == S.ReinitSpec("a:b", "xavier", None, 0.0)
    assert S.parse_reinit("fc8:constant:0:0.1") == S.ReinitSpec("fc8", "constant", 0.0, 0.1)
    with pytest.raises(UnsupportedParameter, match="expected LAYER:FILLER"):
        S.parse_reinit("fc7:normal:1")
    with pytest.raises(UnsupportedParameter, match="must be numbers"):
        S.parse_reinit("fc7:gaussian:x")


def test_rename_drop_reinit():
    ws = WeightSet([LayerWeights("a", "", [np.ones((3, 2), np.float32), np.ones(3, np.float32)]),
                    LayerWeights("b", "", [np.ones((2, 2), np.float32)])])
    assert S.rename_layers(ws, {"a": "c"}).names() == ["c", "b"]
    assert ws.names() == ["a", "b"]  # inputs untouched
    with pytest.raises(UnsupportedParameter, match=r"result has layer name\(s\) \['b'\] twice"):
        S.rename_layers(ws, {"a": "b"})
    assert S.drop_layers(ws, ["a"]).names() == ["b"]
    torch.manual_seed(0)
    r = S.reinit_layers(ws, [S.parse_reinit("a:constant:2:-1")])
    np.testing.assert_array_equal(r[0].blobs[0], np.full((3, 2), 2, np.float32))
    np.testing.assert_array_equal(r[0].blobs[1], np.full(3, -1, np.float32))
    with pytest.raises(UnsupportedParameter, match="--reinit: no weight layer named 'z'"):
        S.reinit_layers(ws, [S.parse_reinit("z:xavier")])
