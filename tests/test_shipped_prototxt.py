"""The prototxts shipped in caffekt.prototxt: shapes, sharing, cross-loading and the stride hint."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from caffe_compat.errors import ShapeError
from caffe_compat.net import load_net
from caffe_compat.weights import copy_trained_layers, save_caffemodel
from caffekt.prototxt import path

from _oracle import caffe_run, require_oracle

CONVS = ["conv1", "conv2", "conv3", "conv4", "conv5"]


@pytest.fixture(scope="module")
def tower_model(tmp_path_factory):
    torch.manual_seed(0)
    net = load_net(path("jigsaw_cfn_tower_s2_deploy"))
    f = str(tmp_path_factory.mktemp("w") / "tower.caffemodel")
    save_caffemodel(net, f)
    return net, f


def test_tower_shapes(tower_model):
    net, _ = tower_model
    s = net.blob_shapes
    assert s["conv1"] == (1, 96, 27, 27) and s["pool1"] == (1, 96, 13, 13)
    assert s["pool2"] == (1, 256, 6, 6) and s["pool5"] == (1, 256, 3, 3) and s["fc6"] == (1, 1024)
    assert net.outputs == ["fc6"]
    assert tuple(net.params["fc6"][0].shape) == (1024, 2304)


def test_alexnet_s4_shapes():
    net = load_net(path("alexnet_s4_deploy"))
    s = net.blob_shapes
    assert s["conv1"] == (1, 96, 55, 55) and s["pool5"] == (1, 256, 6, 6)
    assert s["fc6"] == (1, 4096) and s["fc7"] == (1, 4096) and s["prob"] == (1, 2000)
    conv = load_net(path("alexnet_s4_conv_deploy"))
    assert conv.outputs == ["pool5"] and conv.blob_shapes["pool5"] == (1, 256, 6, 6)
    assert conv.layer_names == net.layer_names[:len(conv.layer_names)]


def test_vgg16_shapes():
    net = load_net(path("vgg16_deploy"))
    assert net.blob_shapes["pool5"] == (1, 512, 7, 7) and net.blob_shapes["prob"] == (1, 1000)
    assert len(net.learnable_params()) == 32


def test_pretext_9tower_sharing_and_forward():
    torch.manual_seed(1)
    net = load_net(path("jigsaw_cfn_pretext_9tower"), input_shapes={"data": (2, 27, 64, 64), "label": (2,)})
    assert len(net.learnable_params()) == 16  # conv1..fc6 owned by tower 1, fc7, fc8
    for t in range(2, 10):
        assert net.params[f"conv1_t{t}"][0] is net.params["conv1"][0]
        assert net.params[f"fc6_t{t}"][1] is net.params["fc6"][1]
    assert net.blob_shapes["concat"] == (2, 9216) and net.blob_shapes["fc8_jigsaw"] == (2, 701)
    label = torch.tensor([0.0, 700.0])
    blobs = net.forward_all(data=torch.randn(2, 27, 64, 64), label=label)
    assert sorted(net.outputs) == ["accuracy", "loss"]
    ref = torch.nn.functional.cross_entropy(blobs["fc8_jigsaw"], label.long())
    torch.testing.assert_close(blobs["loss"], ref)
    assert 4 < blobs["loss"].item() < 10  # untrained: near log(701) = 6.55


def test_pretext_weights_load_into_tower(tmp_path):
    torch.manual_seed(2)
    pre = load_net(path("jigsaw_cfn_pretext_9tower"), phase="TRAIN")
    f = str(tmp_path / "pre.caffemodel")
    save_caffemodel(pre, f)
    tower = load_net(path("jigsaw_cfn_tower_s2_deploy"))
    rep = copy_trained_layers(tower, f)
    assert rep.copied == CONVS + ["fc6"]
    assert "fc7" in rep.ignored and "conv1_t2" in rep.ignored
    assert torch.equal(tower.params["fc6"][0], pre.params["fc6"][0])


def test_stride2_model_into_stride4_deploy_hint(tower_model):
    tower, f = tower_model
    s4 = load_net(path("alexnet_s4_deploy"))
    with pytest.raises(ShapeError) as e:
        copy_trained_layers(s4, f)
    msg = str(e.value)
    assert "cannot copy param 0 weights from layer 'fc6'; shape mismatch" in msg
    assert "Source param shape is 1024 2304 (2359296); target param shape is 4096 9216 (37748736)" in msg
    assert "its input here is 256 x 6 x 6 = 9216 values but the source's takes 2304" in msg
    # at 227x227 it is stride 7 that would bring pool5 to 3x3 (the tower's 64x64 tiles at stride 2)
    assert "'conv1' has stride 4, and stride 7 would give the source's size" in msg
    assert "conv1 stride changes the fc6 input size" in msg and "strict=False" in msg
    rep = copy_trained_layers(s4, f, strict=False)
    assert rep.copied == CONVS and [n for n, _ in rep.mismatched] == ["fc6"]
    for c in CONVS:
        assert torch.equal(s4.params[c][0], tower.params[c][0])
    conv = load_net(path("alexnet_s4_conv_deploy"), weights=f)  # strict: all that is there fits
    assert torch.equal(conv.params["conv5"][1], tower.params["conv5"][1])


def test_no_hint_when_stride_is_not_the_cause(tower_model):
    _, f = tower_model
    from caffe_compat.io import read_prototxt
    with open(path("jigsaw_cfn_tower_s2_deploy")) as fh:
        text = fh.read().replace("num_output: 1024", "num_output: 512")
    net = load_net(read_prototxt(text))
    with pytest.raises(ShapeError) as e:
        copy_trained_layers(net, f)
    assert "Hint" not in str(e.value)


@pytest.mark.caffe
@pytest.mark.parametrize("name,shape", [("jigsaw_cfn_tower_s2_deploy", (1, 3, 64, 64)),
                                        ("alexnet_s4_deploy", (1, 3, 227, 227))])
def test_shipped_deploy_matches_caffe(name, shape):
    require_oracle()
    torch.manual_seed(3)
    net = load_net(path(name))
    x = torch.rand(*shape) * 255
    with torch.no_grad():
        ours = net.forward_all(data=x)
    with open(path(name)) as fh:
        text = fh.read()
    res = caffe_run(text, params={k: [q.detach().numpy() for q in v] for k, v in net.params.items()},
                    inputs={"data": x.numpy()})
    for k, t in ours.items():
        b = res["data"][k]
        scale = max(float(np.abs(b).max()), 1e-6)
        np.testing.assert_allclose(t.numpy(), b, rtol=1e-4, atol=2e-5 * scale, err_msg=k)


def test_hint_names_the_stride_that_fits(tmp_path):
    from caffe_compat.io import read_prototxt
    text = """
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }
    layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
            convolution_param { num_output: 4 kernel_size: 3 stride: 1 } }
    layer { name: "fc6" type: "InnerProduct" bottom: "conv1" top: "fc6" inner_product_param { num_output: 10 } }"""
    src = load_net(read_prototxt(text))
    f = str(tmp_path / "s1.caffemodel")
    save_caffemodel(src, f)
    dst = load_net(read_prototxt(text.replace("stride: 1", "stride: 2")))
    with pytest.raises(ShapeError, match=r"'conv1' has stride 2, and stride 1 would give the source's size"):
        copy_trained_layers(dst, f)
