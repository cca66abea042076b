"""Kraehenbuehl rescaling in the Fast R-CNN export, and deploy forms of prototxt targets.

The rescaled weights are checked on a net built afresh from the written
deploy + caffemodel, fed by this file's own preprocessing (cv2 resize, BGR
minus the Fast R-CNN means); pre-activations are recomputed from the
caffemodel's blobs with torch.nn.functional on the net's blobs, and the
gradient ratios by this file's own backward pass.
"""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from caffe_compat.errors import CaffeFormatError, UnsupportedParameter
from caffe_compat.io import read_net
from caffe_compat.net import load_net
from caffekt.converters.convert import LayerWeights, WeightSet, read_weights, write_caffemodel_weights
from caffekt.converters.fast_rcnn import export_frcnn
from caffekt.converters.deploy_form import deploy_form

MEANS = np.array([102.9801, 115.9465, 122.7717], np.float32)
S = 32
N_IMG = 8

TOY = """name: "ToyFRCNN"
layer { name: "data" type: "Python" top: "data" top: "rois" top: "labels" top: "bbox_targets"
  top: "bbox_loss_weights" python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1" param { lr_mult: 0 } param { lr_mult: 0 }
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "conv2" type: "Convolution" bottom: "pool1" top: "conv2"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1 group: 2 } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "roi_pool5" type: "ROIPooling" bottom: "conv2" bottom: "rois" top: "pool5"
  roi_pooling_param { pooled_w: 3 pooled_h: 3 spatial_scale: 0.25 } }
layer { name: "fc6" type: "InnerProduct" bottom: "pool5" top: "fc6" inner_product_param { num_output: 32 } }
layer { name: "relu6" type: "ReLU" bottom: "fc6" top: "fc6" }
layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 } }
layer { name: "fc7" type: "InnerProduct" bottom: "fc6" top: "fc7" inner_product_param { num_output: 24 } }
layer { name: "relu7" type: "ReLU" bottom: "fc7" top: "fc7" }
layer { name: "drop7" type: "Dropout" bottom: "fc7" top: "fc7" dropout_param { dropout_ratio: 0.5 } }
layer { name: "cls_score" type: "InnerProduct" bottom: "fc7" top: "cls_score" inner_product_param {
  num_output: 5 weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" value: 0 } } }
layer { name: "bbox_pred" type: "InnerProduct" bottom: "fc7" top: "bbox_pred" inner_product_param {
  num_output: 20 weight_filler { type: "gaussian" std: 0.001 } bias_filler { type: "constant" value: 0 } } }
layer { name: "loss_cls" type: "SoftmaxWithLoss" bottom: "cls_score" bottom: "labels" top: "loss_cls" }
layer { name: "loss_bbox" type: "SmoothL1Loss" bottom: "bbox_pred" bottom: "bbox_targets"
  bottom: "bbox_loss_weights" top: "loss_bbox" }
"""
TRUNK = ["conv1", "conv2", "fc6", "fc7"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny matmuls on a loaded 2-core box are 10000x slower with a contended thread pool
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """(target prototxt, source caffemodel with conv1/conv2, image folder, list file with labels)."""
    d = tmp_path_factory.mktemp("toy")
    (d / "train.prototxt").write_text(TOY)
    rng = np.random.default_rng(0)
    imgs = d / "imgs"
    imgs.mkdir()
    for i in range(N_IMG):   # odd sizes: every image is warped to S x S
        im = cv2.GaussianBlur((rng.random((29 + 3 * i, 41 - i, 3)) * 255).astype(np.uint8), (0, 0), 2)
        assert cv2.imwrite(str(imgs / f"im{i}.png"), im)
    (d / "list.txt").write_text("".join(f"imgs/im{i}.png {i % 3}\n" for i in range(N_IMG)))
    ws = WeightSet([
        LayerWeights("conv1", "", [(0.05 * rng.standard_normal((8, 3, 3, 3))).astype(np.float32),
                                   (0.1 * rng.standard_normal(8)).astype(np.float32)]),
        LayerWeights("conv2", "", [(0.1 * rng.standard_normal((12, 4, 3, 3))).astype(np.float32),
                                   (0.1 * rng.standard_normal(12)).astype(np.float32)])])
    write_caffemodel_weights(str(d / "src.caffemodel"), ws)
    return str(d / "train.prototxt"), str(d / "src.caffemodel"), str(imgs), str(d / "list.txt")


def _inputs(folder):
    """This file's own preprocessing: cv2 colour read, resize to S x S, BGR minus means, CHW."""
    names = sorted(os.listdir(folder))
    x = np.stack([cv2.resize(cv2.imread(os.path.join(folder, n), cv2.IMREAD_COLOR), (S, S)).astype(np.float32)
                  - MEANS for n in names]).transpose(0, 3, 1, 2)
    rois = np.array([[i, 0, 0, S - 1, S - 1] for i in range(len(names))], np.float32)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(rois)


def _net(deploy, weights, folder):
    x, rois = _inputs(folder)
    net = load_net(deploy, weights=weights, strict=True,
                   input_shapes={"data": tuple(x.shape), "rois": tuple(rois.shape)})
    return net, {"data": x, "rois": rois}


def _blobs(net, feed):
    with torch.no_grad():
        return net.forward_all(**feed)


def _preacts(net, feed, w):
    """Pre-activations of the trunk from the caffemodel's blobs ``w`` and the net's non-learnable blobs."""
    b = _blobs(net, feed)
    t = {k: [torch.from_numpy(a) for a in v] for k, v in w.items()}
    out = {"conv1": F.conv2d(feed["data"], t["conv1"][0], t["conv1"][1], stride=2, padding=1),
           "conv2": F.conv2d(b["pool1"], t["conv2"][0], t["conv2"][1], padding=1, groups=2)}
    out["fc6"] = b["pool5"].reshape(len(b["pool5"]), -1) @ t["fc6"][0].T + t["fc6"][1]
    out["fc7"] = torch.relu(out["fc6"]) @ t["fc7"][0].T + t["fc7"][1]
    return {k: v.double().transpose(0, 1).reshape(v.shape[1], -1) for k, v in out.items()}


def _weights(path):
    return {k: [a.copy() for a in v] for k, v in read_weights(path).as_dict().items()}


def test_within_layer_gives_the_chosen_layers_mean_beta_and_unit_std(toy, tmp_path):
    target, src, imgs, _lst = toy
    plain, out, dep = (str(tmp_path / n) for n in ("plain.caffemodel", "r.caffemodel", "d.prototxt"))
    export_frcnn(src, target, plain)
    rep = export_frcnn(src, target, out, rescale=imgs, rescale_mode="within",
                       rescale_options={"size": S}, deploy_out=dep)
    assert rep.rescale.within == ["fc6", "fc7"] and rep.rescale.trunk == TRUNK
    assert rep.rescale.heads == ["cls_score", "bbox_pred"] and rep.rescale.images == N_IMG
    assert "within-layer (mean 0, std 1): fc6, fc7" in str(rep)
    w, w0 = _weights(out), _weights(plain)
    net, feed = _net(dep, out, imgs)
    pre = _preacts(net, feed, w)
    for name in ("fc6", "fc7"):
        np.testing.assert_allclose(pre[name].mean(1).numpy(), 0.0, atol=1e-3)
        np.testing.assert_allclose(pre[name].std(1, unbiased=False).numpy(), 1.0, atol=1e-3)
    # before: the Jigsaw fill gives fc6 a tiny spread around 0.1 -- the check above is not vacuous
    pre0 = _preacts(*_net(dep, plain, imgs), w0)
    assert pre0["fc6"].std(1, unbiased=False).max() < 0.1 and abs(pre0["fc6"].mean() - 0.1) < 0.05
    for name in ("conv1", "conv2", "cls_score", "bbox_pred"):   # copied layers and heads untouched
        for a, b in zip(w[name], w0[name]):
            np.testing.assert_array_equal(a, b)
    # W <- W / sigma: per output row, a positive multiple of the original
    ratio = w["fc7"][0] / w0["fc7"][0]
    np.testing.assert_allclose(ratio, ratio[:, :1] * np.ones_like(ratio), rtol=1e-4)
    assert (ratio > 0).all()


def test_within_layer_all_layers_with_beta(toy, tmp_path):
    target, src, imgs, lst = toy
    out, dep = str(tmp_path / "r.caffemodel"), str(tmp_path / "d.prototxt")
    rep = export_frcnn(src, target, out, rescale=lst, rescale_mode="within", deploy_out=dep,
                       rescale_options={"size": S, "layers": "all", "beta": 0.1})
    assert rep.rescale.within == TRUNK
    pre = _preacts(*_net(dep, out, imgs), _weights(out))
    for name in TRUNK:   # conv channels: over images and positions
        np.testing.assert_allclose(pre[name].mean(1).numpy(), 0.1, atol=1e-3)
        np.testing.assert_allclose(pre[name].std(1, unbiased=False).numpy(), 1.0, atol=1e-3)


def _ratios(net, feed, seed=0):
    """This file's r_k = sqrt(mean(dW^2)/mean(W^2)) for N(0,1) gradients on fc7 (after relu7/drop7)."""
    for p in net.parameters():
        p.requires_grad_(True)
        p.grad = None
    y = net.forward_all(**feed)["fc7"]
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed))
    (y * g).sum().backward()
    return {n: float((net.params[n][0].grad.double() ** 2).mean() / (net.params[n][0].detach().double() ** 2).mean()) ** 0.5
            for n in TRUNK}


@pytest.mark.parametrize("match", [False, True])
def test_between_layer_equal_ratios_and_function_kept_up_to_a_scale(toy, tmp_path, match):
    target, src, imgs, _lst = toy
    plain, out, dep = (str(tmp_path / n) for n in ("plain.caffemodel", "r.caffemodel", "d.prototxt"))
    export_frcnn(src, target, plain, deploy_out=dep)
    rep = export_frcnn(src, target, out, rescale=imgs, rescale_mode="between",
                       rescale_options={"size": S, "match_output_std": match})
    b = rep.rescale.between
    assert b.converged and 1 <= b.iterations <= 10 and "converged" in str(rep)
    net0, feed = _net(dep, plain, imgs)
    net1, _ = _net(dep, out, imgs)
    r0, r1 = _ratios(net0, feed), _ratios(net1, feed)
    assert max(r0.values()) / min(r0.values()) > 100          # far apart before
    g = np.exp(np.mean(np.log(list(r1.values()))))
    assert all(abs(r / g - 1) < 0.02 for r in r1.values()), r1  # within 2% of their geometric mean
    np.testing.assert_allclose([r0[n] for n in TRUNK], [b.ratios_before[n] for n in TRUNK], rtol=1e-4)
    # a fresh draw: sampling noise only (8 images), three orders of magnitude less than before
    r2 = _ratios(net1, feed, seed=7)
    assert max(r2.values()) / min(r2.values()) < 1.5
    # ReLU / max / ROI pooling / test-time dropout are positively homogeneous: every blob is the old
    # one times the product of the scales of the layers before it (1 without the output-std term)
    b0, b1 = _blobs(net0, feed), _blobs(net1, feed)
    cum = 1.0
    for layer, blob in (("conv1", "pool1"), ("conv2", "pool5"), ("fc6", "fc6"), ("fc7", "fc7")):
        cum *= b.scales[layer]
        np.testing.assert_allclose(b1[blob].numpy(), cum * b0[blob].numpy(), rtol=2e-4,
                                   atol=2e-5 * cum * float(b0[blob].abs().max()))
    assert cum == pytest.approx(b.output_scale, rel=1e-9)
    if match:
        assert abs(b.output_std[1] - 1) < 0.1 and b.output_std[0] < 1e-3   # pulled towards std 1
    else:
        assert b.output_scale == pytest.approx(1.0, rel=1e-5)
    w, w0 = _weights(out), _weights(plain)
    for name in ("cls_score", "bbox_pred"):
        np.testing.assert_array_equal(w[name][0], w0[name][0])


def test_both_runs_within_then_between(toy, tmp_path):
    target, src, imgs, _lst = toy
    rep = export_frcnn(src, target, str(tmp_path / "r.caffemodel"), rescale=imgs,
                       rescale_options={"size": S, "max_images": 5})
    r = rep.rescale
    assert r.mode == "both" and r.within == ["fc6", "fc7"] and r.between.converged and r.images == 5
    # within-layer left fc7 at unit pre-activation std, so its post-ReLU output std is O(1) already
    assert 0.2 < r.between.output_std[0] < 2


def test_unreadable_image_names_it_and_writes_nothing(toy, tmp_path):
    target, src, imgs, _lst = toy
    d = tmp_path / "imgs"
    d.mkdir()
    cv2.imwrite(str(d / "a.png"), np.zeros((9, 9, 3), np.uint8))
    (d / "b.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    out, dep = tmp_path / "o.caffemodel", tmp_path / "o.prototxt"
    with pytest.raises(CaffeFormatError, match=r"b\.jpg: Could not decode the image"):
        export_frcnn(src, target, str(out), rescale=str(d), rescale_options={"size": S}, deploy_out=str(dep))
    lst = tmp_path / "l.txt"
    lst.write_text(f"{imgs}/im0.png 1\nmissing.png 0\n")
    with pytest.raises(CaffeFormatError, match=r"missing\.png: Could not open or find file"):
        export_frcnn(src, target, str(out), rescale=str(lst), rescale_options={"size": S})
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CaffeFormatError, match="empty: no images to rescale on"):
        export_frcnn(src, target, str(out), rescale=str(empty))
    with pytest.raises(UnsupportedParameter, match=r"--rescale-layers \['fc8'\]: not learnable trunk layers"):
        export_frcnn(src, target, str(out), rescale=imgs, rescale_options={"layers": "fc6,fc8"})
    assert not out.exists() and not dep.exists()


def _param(path):
    got = read_net(path)
    return got[0] if isinstance(got, tuple) else got


@pytest.mark.parametrize("arch,size", [("CaffeNet", 227), ("VGG16", 224)])
def test_deploy_form_of_fast_rcnn_train_is_its_test_prototxt(fixtures_dir, arch, size):
    base = os.path.join(fixtures_dir, "fast-rcnn", arch)
    with pytest.warns(Warning):   # test.prototxt uses the deprecated net-level input fields
        test = _param(os.path.join(base, "test.prototxt"))
    ours = deploy_form(_param(os.path.join(base, "train.prototxt")),
                       input_shapes={"data": (1, 3, size, size)})
    assert [str(lp) for lp in ours.layer] == [str(lp) for lp in test.layer]


def test_cli_rescale_and_deploy_out_for_a_prototxt_target(toy, tmp_path, capsys):
    from caffe_compat.cli import main
    target, src, imgs, lst = toy
    out, dep = str(tmp_path / "o.caffemodel"), str(tmp_path / "d.prototxt")
    assert main(["export", "frcnn", "--from", src, "--target", target, "-o", out, "--rescale", lst,
                 "--rescale-mode", "within", "--rescale-size", str(S), "--rescale-bias", "0.1",
                 "--deploy-out", dep]) == 0
    text = capsys.readouterr().out
    assert "within-layer (mean 0.1, std 1): fc6, fc7" in text and f"wrote {dep}" in text
    d = _param(dep)
    assert [lp.name for lp in d.layer] == ["input", "conv1", "relu1", "pool1", "conv2", "relu2", "roi_pool5",
                                           "fc6", "relu6", "drop6", "fc7", "relu7", "drop7", "cls_score",
                                           "bbox_pred", "cls_prob"]
    pre = _preacts(*_net(dep, out, imgs), _weights(out))
    np.testing.assert_allclose(pre["fc7"].mean(1).numpy(), 0.1, atol=1e-3)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.png").write_bytes(b"nope")
    assert main(["export", "frcnn", "--from", src, "--target", target, "-o", str(tmp_path / "z.caffemodel"),
                 "--rescale", str(bad)]) == 2
    assert "x.png: Could not decode the image" in capsys.readouterr().err
    assert not (tmp_path / "z.caffemodel").exists()
