"""Every real net in ../shared/fixtures builds (TEST, and TRAIN where it has one) and runs;
the BVLC deploys match the real Caffe blob for blob (oracle tier)."""
from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch

from caffe_compat.net import load_net

from _oracle import caffe_run, require_oracle

SPLIT = re.compile(r".*_split(_\d+)?$")


def randomize(net, seed=0):
    """Weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1): keeps activations O(1) through deep nets."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.learnable_params():
            fan_in = p[0].numel() if p.dim() > 1 else 10
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(fan_in))


def _fx(fixtures_dir, rel):
    p = os.path.join(fixtures_dir, rel)
    if not os.path.isfile(p):
        pytest.skip(f"fixture {rel} absent")
    return p


def _rois(r, h, w, g):
    x1 = torch.randint(0, w // 2, (r,), generator=g).float()
    y1 = torch.randint(0, h // 2, (r,), generator=g).float()
    return torch.stack([torch.zeros(r), x1, y1, x1 + w // 3, y1 + h // 3], 1)


BVLC = [("bvlc/bvlc_alexnet", 227), ("bvlc/bvlc_reference_caffenet", 227), ("bvlc/bvlc_googlenet", 224)]


@pytest.mark.parametrize("rel,size", BVLC)
@pytest.mark.parametrize("phase", ["TEST", "TRAIN"])
def test_bvlc_train_val_builds_and_runs(fixtures_dir, rel, size, phase):
    p = _fx(fixtures_dir, rel + "/train_val.prototxt")
    net = load_net(p, phase=phase, input_shapes={"data": (2, 3, size, size), "label": (2,)})
    randomize(net)
    out = net(data=torch.randn(2, 3, size, size), label=torch.tensor([3.0, 7.0]))
    losses = [k for k in out if k.startswith("loss")]
    assert losses and all(torch.isfinite(out[k]).all() and out[k].dim() == 0 for k in losses)
    if phase == "TEST":
        assert any(k.startswith("accuracy") or "top-1" in k or "top-5" in k for k in out)
    assert torch.isfinite(net.loss(out))


@pytest.mark.parametrize("rel,size", BVLC)
def test_bvlc_deploy_builds_and_runs(fixtures_dir, rel, size):
    net = load_net(_fx(fixtures_dir, rel + "/deploy.prototxt"), input_shapes={"data": (1, 3, size, size)})
    randomize(net)
    out = net(torch.randn(1, 3, size, size))
    assert list(out) == ["prob"] and out["prob"].shape == (1, 1000)
    torch.testing.assert_close(out["prob"].sum(), torch.tensor(1.0))


def _fast_rcnn(fixtures_dir, model, kind, phase):
    p = _fx(fixtures_dir, f"fast-rcnn/{model}/{kind}.prototxt")
    g = torch.Generator().manual_seed(0)
    h, w, r = 96, 128, 4
    feeds = {"data": torch.randn(1, 3, h, w, generator=g), "rois": _rois(r, h, w, g)}
    if kind == "train":
        feeds.update(labels=torch.tensor([0.0, 3.0, 20.0, 5.0]), bbox_targets=torch.randn(r, 84, generator=g),
                     bbox_loss_weights=(torch.rand(r, 84, generator=g) > 0.5).float())
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    net = load_net(p, phase=phase, input_shapes=shapes, python_layers="as_input")
    randomize(net)
    return net, net(**feeds)


@pytest.mark.parametrize("kind,phase", [("test", "TEST"), ("train", "TRAIN"), ("train", "TEST")])
def test_fast_rcnn_caffenet(fixtures_dir, kind, phase):
    net, out = _fast_rcnn(fixtures_dir, "CaffeNet", kind, phase)
    if kind == "test":
        assert out["cls_prob"].shape == (4, 21) and out["bbox_pred"].shape == (4, 84)
    else:
        assert sorted(out) == ["loss_bbox", "loss_cls"] and torch.isfinite(net.loss(out))


@pytest.mark.slow
@pytest.mark.parametrize("kind,phase", [("test", "TEST"), ("train", "TRAIN")])
def test_fast_rcnn_vgg16(fixtures_dir, kind, phase):
    net, out = _fast_rcnn(fixtures_dir, "VGG16", kind, phase)
    assert all(torch.isfinite(v).all() for v in out.values())


def test_fast_rcnn_python_layer_needs_option(fixtures_dir):
    from caffe_compat.errors import UnknownLayerType
    with pytest.raises(UnknownLayerType, match="layer 'data': type 'Python'.*python_layers='as_input'"):
        load_net(_fx(fixtures_dir, "fast-rcnn/CaffeNet/train.prototxt"), phase="TRAIN")


@pytest.mark.parametrize("phase", ["TRAIN", "TEST"])
def test_jigsaw_authors_train_val_builds_as_is(fixtures_dir, phase):
    p = _fx(fixtures_dir, "jigsaw/train_val_cfn_jps++.prototxt")
    b = 2
    shapes = {"data_0": (b, 27, 64, 64), "label": (b,), "data_r": (b, 27, 64, 64)}
    net = load_net(p, phase=phase, input_shapes=shapes)
    assert net.inputs == ["data_0", "label", "data_r"]
    assert net.layer_names.count("slice_data") == 2  # duplicate names are legal in Caffe
    # nine towers share conv1..fc6 by ParamSpec name: 6 pairs + fc7 + fc8
    assert len(net.learnable_params()) == 16
    assert net.params["conv1_s1"][0] is net.params["conv1_s9"][0]
    assert net.blob_shapes["pool5_s1"] == (b, 256, 3, 3) and net.blob_shapes["concat"] == (b, 9216)
    randomize(net)
    g = torch.Generator().manual_seed(0)
    out = net(data_0=torch.randn(b, 27, 64, 64, generator=g), label=torch.tensor([1.0, 700.0]),
              data_r=torch.randn(b, 27, 64, 64, generator=g))
    assert sorted(out) == (["accuracy", "loss"] if phase == "TEST" else ["loss"])
    assert torch.isfinite(out["loss"])


@pytest.mark.caffe
@pytest.mark.parametrize("rel,size", BVLC)
def test_bvlc_deploy_matches_caffe_blob_for_blob(fixtures_dir, rel, size):
    require_oracle()
    p = _fx(fixtures_dir, rel + "/deploy.prototxt")
    net = load_net(p, input_shapes={"data": (1, 3, size, size)})
    randomize(net, seed=1)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        ours = net.forward_all(data=x)
    with open(p) as f:
        text = f.read()
    res = caffe_run(text, params={k: [q.detach().numpy() for q in v] for k, v in net.params.items()},
                    inputs={"data": x.numpy()}, timeout=600)
    theirs = {k: v for k, v in res["data"].items() if not SPLIT.match(k)}
    assert set(theirs) == set(ours)
    for name, t in ours.items():
        a, b = t.numpy(), theirs[name]
        assert a.shape == b.shape, name
        scale = max(float(np.abs(b).max()), 1e-6)
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-5 * scale, err_msg=name)
