"""Fast R-CNN export: tower extraction, recipe fills, strict loads into the fixture nets, refusals."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from caffe_compat.errors import ShapeError, UnsupportedParameter
from caffe_compat.net import load_net
from caffekt.converters.convert import LayerWeights, WeightSet, read_weights, write_caffemodel_weights
from caffekt.converters.fast_rcnn import export_frcnn, frcnn_target, target_layers

CONV_SHAPES = {"conv1": [(96, 3, 11, 11), (96,)], "conv2": [(256, 48, 5, 5), (256,)],
               "conv3": [(384, 256, 3, 3), (384,)], "conv4": [(384, 192, 3, 3), (384,)],
               "conv5": [(256, 192, 3, 3), (256,)], "fc6": [(1024, 2304), (1024,)]}
TRAIN_SHAPES = {"data": (1, 3, 227, 227), "rois": (1, 5), "labels": (1,),
                "bbox_targets": (1, 84), "bbox_loss_weights": (1, 84)}


@pytest.fixture(scope="module")
def two_towers(tmp_path_factory):
    """A 2-tower pretext caffemodel in the authors' naming; tower k holds values around k."""
    rng = np.random.default_rng(0)
    ws = WeightSet()
    for k in (1, 2):
        for name, shapes in CONV_SHAPES.items():
            ws.append(LayerWeights(f"{name}_s{k}", "", [
                (k + 0.01 * rng.standard_normal(s)).astype(np.float32) for s in shapes]))
    ws.append(LayerWeights("fc8_jigsaw", "", [np.ones((7, 3), np.float32), np.ones(7, np.float32)]))
    path = str(tmp_path_factory.mktemp("src") / "towers.caffemodel")
    write_caffemodel_weights(path, ws)
    return path, ws


def _fixture(fixtures_dir, arch, phase):
    return os.path.join(fixtures_dir, "fast-rcnn", arch, f"{phase}.prototxt")


def test_export_caffenet_tower2_loads_strict(fixtures_dir, two_towers, tmp_path):
    src, ws = two_towers
    out = str(tmp_path / "frcnn.caffemodel")
    rep = export_frcnn(src, _fixture(fixtures_dir, "CaffeNet", "train"), out, tower=2)
    assert rep.copied == ["conv1", "conv2", "conv3", "conv4", "conv5"]
    assert ("conv1_s2", "conv1") in rep.renamed and "conv1_s1" in rep.ignored and "fc8_jigsaw" in rep.ignored
    how = dict(rep.initialised)
    assert list(how) == ["fc6", "fc7", "cls_score", "bbox_pred"]
    assert "re-initialised" in how["fc6"] and "1024x2304 does not fit target 4096x9216" in how["fc6"]
    assert "Jigsaw transfer recipe" in how["fc7"] and "target's own fillers" in how["cls_score"]
    for phase in ("train", "test"):
        net = load_net(_fixture(fixtures_dir, "CaffeNet", phase), weights=out, strict=True,
                       phase=phase.upper(), python_layers="as_input",
                       input_shapes=TRAIN_SHAPES if phase == "train" else None)
        np.testing.assert_array_equal(net.params["conv3"][0].detach().numpy(), ws.get("conv3_s2").blobs[0])
    got = read_weights(out).as_dict()
    assert list(got) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "cls_score", "bbox_pred"]
    fc6w, fc6b = got["fc6"]
    assert abs(fc6w.std() - 0.001) < 2e-5 and abs(fc6w.mean()) < 2e-5
    np.testing.assert_array_equal(fc6b, np.full(4096, 0.1, np.float32))
    assert abs(got["cls_score"][0].std() - 0.01) < 5e-4 and not got["cls_score"][1].any()
    assert abs(got["bbox_pred"][0].std() - 0.001) < 5e-5


def test_builtin_targets_match_the_fixture_shapes(fixtures_dir):
    for arch, kind in (("CaffeNet", "caffenet"), ("VGG16", "vgg16")):
        ours = {k: v[1] for k, v in target_layers(frcnn_target(kind), phase="TEST").items()}
        for phase in ("train", "test"):
            from caffe_compat.io import read_net
            param = read_net(_fixture(fixtures_dir, arch, phase))
            param = param[0] if isinstance(param, tuple) else param
            theirs = {k: v[1] for k, v in target_layers(param, phase=phase.upper()).items()}
            assert ours == theirs, (arch, phase)


def test_vgg16_export_from_conv_only_source(fixtures_dir, tmp_path):
    tl = target_layers(frcnn_target("vgg16"), phase="TEST")
    rng = np.random.default_rng(1)
    ws = WeightSet(LayerWeights(n, "Convolution", [rng.standard_normal(s).astype(np.float32) for s in shapes])
                   for n, (lp, shapes) in tl.items() if lp.type == "Convolution")
    src = str(tmp_path / "vggconv.safetensors")
    from caffekt.converters.convert import write_weights
    write_weights(src, ws)
    out = str(tmp_path / "vgg.caffemodel")
    rep = export_frcnn(src, "vgg16", out, fc_std=0.005, fc_bias=0.0, deploy_out=str(tmp_path / "d.prototxt"))
    assert len(rep.copied) == 13 and [n for n, _ in rep.initialised] == ["fc6", "fc7", "cls_score", "bbox_pred"]
    net = load_net(_fixture(fixtures_dir, "VGG16", "test"), weights=out, strict=True)
    assert abs(net.params["fc7"][0].std().item() - 0.005) < 1e-4
    load_net(str(tmp_path / "d.prototxt"), weights=out, strict=True)


def test_refusals_write_nothing(fixtures_dir, two_towers, tmp_path):
    src, _ws = two_towers
    target = _fixture(fixtures_dir, "CaffeNet", "train")
    out = tmp_path / "x.caffemodel"
    with pytest.raises(UnsupportedParameter, match=r"the source has no tower 3: its towers are \[1, 2\]"):
        export_frcnn(src, target, str(out), tower=3)
    with pytest.raises(UnsupportedParameter, match="--map conv5=conv9: target .* has no learnable layer 'conv9'"):
        export_frcnn(src, target, str(out), mapping={"conv5": "conv9"})
    with pytest.raises(UnsupportedParameter, match="--map nope=conv1: the source has no weight layer 'nope'"):
        export_frcnn(src, target, str(out), mapping={"nope": "conv1"})
    # a conv fed by the wrong source layer: the CopyTrainedLayersFrom message, before writing
    with pytest.raises(ShapeError, match=r"cannot copy param 0 weights from layer 'conv2'; shape mismatch.  "
                                         r"Source param shape is 384 256 3 3"):
        export_frcnn(src, target, str(out), mapping={"conv3": "conv2"})
    bad = tmp_path / "noconv5.prototxt"
    bad.write_text(open(target).read().replace('name: "conv5"', 'name: "conv5x"'))
    with pytest.raises(UnsupportedParameter, match="target layer 'conv5x' \\(Convolution\\) has no source blobs"):
        export_frcnn(src, str(bad), str(out))
    assert not out.exists() and os.listdir(tmp_path) == ["noconv5.prototxt"]


def test_cli_export_frcnn(fixtures_dir, two_towers, tmp_path, capsys):
    from caffe_compat.cli import main
    src, _ = two_towers
    out = str(tmp_path / "o.caffemodel")
    assert main(["export", "frcnn", "--from", src, "--target", "caffenet", "-o", out,
                 "--conv-only", "--fill", "cls_score:gaussian:0.02"]) == 0
    text = capsys.readouterr().out
    assert "copied (5): conv1, conv2, conv3, conv4, conv5" in text and "tower 1 extracted" in text
    assert "initialised cls_score: weights gaussian(mean 0, std 0.02), bias constant 0 (as requested)" in text
    assert main(["export", "frcnn", "--from", src, "--target", "caffenet", "-o", out, "--tower", "5"]) == 2
    assert "no tower 5" in capsys.readouterr().err


@pytest.mark.caffe
def test_real_caffe_loads_export_and_agrees(fixtures_dir, two_towers, tmp_path):
    """Real Caffe (no ROIPooling in the oracle) runs conv1-5 and fc6-fc7 fed by our ROI-pooled blob."""
    import sys
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from _oracle import caffe_run, require_oracle, run_script
    require_oracle()
    types = run_script("import caffe, json; print(json.dumps(list(caffe.layer_type_list())))")
    src, _ = two_towers
    out = str(tmp_path / "frcnn.caffemodel")
    export_frcnn(src, _fixture(fixtures_dir, "CaffeNet", "train"), out, tower=1)
    net = load_net(_fixture(fixtures_dir, "CaffeNet", "test"), weights=out, strict=True)
    rng = np.random.default_rng(3)
    data = (rng.standard_normal((1, 3, 227, 227)) * 0.1).astype(np.float32)
    rois = np.array([[0, 10, 20, 150, 200], [0, 0, 0, 226, 226]], np.float32)
    with torch.no_grad():
        ours = {k: v.numpy() for k, v in net.forward_all(data=torch.from_numpy(data),
                                                         rois=torch.from_numpy(rois)).items()}
    # the fixture's layers, minus the fork's ROIPooling: pool5 becomes an input
    text = open(_fixture(fixtures_dir, "CaffeNet", "test")).read()
    body = text[text.index("layer {"):]
    start = body.index("layer {\n  name: \"roi_pool5\"")
    end = body.index("layer {", start + 1)
    body = body[:start] + body[end:]
    head = ('input: "data" input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }\n'
            'input: "pool5" input_shape { dim: 2 dim: 256 dim: 6 dim: 6 }\n')
    res = caffe_run(head + body, inputs={"data": data, "pool5": ours["pool5"]}, weights_file=out)
    assert "ROIPooling" not in json.loads(types.stdout)  # why the fork layer had to go
    for blob in ("conv5", "fc7", "cls_score", "bbox_pred"):
        ref = res["data"][blob]
        np.testing.assert_allclose(ours[blob], ref, rtol=1e-4, atol=1e-4 * float(np.abs(ref).max()))
        assert np.abs(ref).max() > 0
