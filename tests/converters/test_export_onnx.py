"""ONNX export vs our module in onnxruntime: pooling corner cases, LRN with k, fixture deploys."""
from __future__ import annotations

import io
import os

import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from caffe_compat.net import load_net  # noqa: E402
from caffekt.converters.onnx_export import check_onnx, export_net, op_counts  # noqa: E402

POOLS = """name: "pools"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 6 dim: 13 dim: 11 } } }
layer { name: "ave_ceil_pad" type: "Pooling" bottom: "data" top: "a1" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "ave_ceil" type: "Pooling" bottom: "data" top: "a2" pooling_param { pool: AVE kernel_size: 3 stride: 2 } }
layer { name: "ave_bigpad" type: "Pooling" bottom: "data" top: "a3" pooling_param { pool: AVE kernel_size: 4 stride: 3 pad: 3 } }
layer { name: "ave_floor" type: "Pooling" bottom: "data" top: "a4" pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR } }
layer { name: "max_ceil_pad" type: "Pooling" bottom: "data" top: "m1" pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 } }
layer { name: "max_gap" type: "Pooling" bottom: "data" top: "m2" pooling_param { pool: MAX kernel_size: 2 stride: 3 } }
layer { name: "glob" type: "Pooling" bottom: "data" top: "g" pooling_param { pool: AVE global_pooling: true } }
layer { name: "lrn" type: "LRN" bottom: "data" top: "l1" lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 } }
layer { name: "lrn_w" type: "LRN" bottom: "data" top: "l2" lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 norm_region: WITHIN_CHANNEL } }
layer { name: "sm" type: "Softmax" bottom: "data" top: "s" }
"""


def _randomize(net, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for ps in net.params.values():
            for p in ps:
                fan_in = max(1, p[0].numel()) if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=g) / fan_in ** 0.5)


def _check(net, outputs=None, opset=13):
    buf = io.BytesIO()
    names = export_net(net, buf, outputs=outputs, opset=opset)
    verdict, checks, shapes = check_onnx(buf.getvalue(), net, names, names, batch=2)
    assert verdict == "ok"
    assert all(s[0] == 2 for s in shapes.values())  # traced at batch 1, run at 2
    for c in checks:
        assert c.ok, c
        assert c.max_rel_err <= 1e-5
    return buf.getvalue(), checks


def test_pooling_lrn_softmax_corner_cases(tmp_path):
    p = tmp_path / "pools.prototxt"
    p.write_text(POOLS)
    net = load_net(str(p))
    data, checks = _check(net, outputs=[b for b in net.blob_shapes if b != "data"])
    assert {c.name for c in checks} == {"a1", "a2", "a3", "a4", "m1", "m2", "g", "l1", "l2", "s"}
    ops = op_counts(data)
    assert ops.get("LRN") == 1 and ops.get("Softmax") == 1
    lrn = next(n for n in onnx.load_from_string(data).graph.node if n.op_type == "LRN")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
    assert attrs["bias"] == pytest.approx(2.0) and attrs["size"] == 5
    # Caffe's shapes survive: ceil with the clip rule, a window past the image dropped
    assert net.blob_shapes["a1"] == (1, 6, 7, 6) and net.blob_shapes["a3"] == (1, 6, 6, 5)


def test_opset_below_13_refused(tmp_path):
    from caffe_compat.errors import UnsupportedParameter
    p = tmp_path / "pools.prototxt"
    p.write_text(POOLS)
    with pytest.raises(UnsupportedParameter, match="opset 12"):
        export_net(load_net(str(p)), io.BytesIO(), opset=12)


FIXTURE_DEPLOYS = ["bvlc/bvlc_reference_caffenet/deploy.prototxt",
                   pytest.param("bvlc/bvlc_alexnet/deploy.prototxt", marks=pytest.mark.slow),
                   "bvlc/bvlc_googlenet/deploy.prototxt"]


@pytest.mark.parametrize("rel", FIXTURE_DEPLOYS)
def test_fixture_deploys_every_blob(fixtures_dir, rel):
    net = load_net(os.path.join(fixtures_dir, rel))
    _randomize(net)
    outs = [b for b in net.blob_shapes if b not in net.inputs]
    _data, checks = _check(net, outputs=outs)
    assert len(checks) == len(outs)


@pytest.mark.parametrize("name,shape", [("jigsaw_cfn_tower_s2_deploy", None),
                                        ("alexnet_s4_conv_deploy", None),
                                        pytest.param("vgg16_deploy", (1, 3, 64, 64),
                                                     marks=pytest.mark.slow)])
def test_shipped_deploys(name, shape):
    from caffekt.prototxt import path
    probe = load_net(path(name))
    shapes = {probe.inputs[0]: shape} if shape else None
    net = load_net(path(name), input_shapes=shapes) if shape else probe
    _randomize(net)
    _check(net, outputs=[b for b in net.blob_shapes if b not in net.inputs])


def test_cli_export_onnx(tmp_path, capsys):
    from caffe_compat.cli import main
    from caffe_compat.weights import save_caffemodel
    p = tmp_path / "pools.prototxt"
    p.write_text(POOLS + 'layer { name: "ip" type: "InnerProduct" bottom: "a1" top: "ip" '
                 'inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 1 } } }\n')
    w = str(tmp_path / "w.caffemodel")
    save_caffemodel(load_net(str(p)), w)
    out = tmp_path / "o.onnx"
    assert main(["export", "onnx", str(p), w, "-o", str(out), "--opset", "13"]) == 0
    text = capsys.readouterr().out
    assert "onnx.checker: ok" in text and "OK" in text and out.exists()
    out.unlink()
    # a tolerance nothing can meet: exit 1, and nothing written
    assert main(["export", "onnx", str(p), w, "-o", str(out), "--rtol", "-1"]) == 1
    assert "FAILED" in capsys.readouterr().out and not out.exists()
