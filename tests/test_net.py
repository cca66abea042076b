"""Net builder: Caffe's Net::Init rules (filtering, in-place, sharing, loss, outputs), export."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from caffe_compat.errors import CaffeFormatError, ShapeError, UnknownLayerType, UnsupportedParameter
from caffe_compat.net import load_net
from caffe_compat.io import read_prototxt

from _oracle import caffe_run, require_oracle, run_script

RULES = """
name: "rules"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 2 } } }
layer { name: "a" type: "Power" bottom: "data" top: "a" include { phase: TRAIN } }
layer { name: "b" type: "Power" bottom: "data" top: "b" include { phase: TEST } }
layer { name: "c" type: "Power" bottom: "data" top: "c" include { stage: "s1" } }
layer { name: "d" type: "Power" bottom: "data" top: "d" include { stage: "s1" stage: "s2" } }
layer { name: "e" type: "Power" bottom: "data" top: "e" include { stage: "s1" } include { stage: "s2" } }
layer { name: "f" type: "Power" bottom: "data" top: "f" exclude { stage: "s1" } }
layer { name: "g" type: "Power" bottom: "data" top: "g" include { not_stage: "s2" } }
layer { name: "h" type: "Power" bottom: "data" top: "h" include { min_level: 1 } }
layer { name: "i" type: "Power" bottom: "data" top: "i" include { max_level: 1 } }
layer { name: "j" type: "Power" bottom: "data" top: "j" exclude { phase: TEST min_level: 2 } }
layer { name: "k" type: "Power" bottom: "data" top: "k" include { phase: TRAIN stage: "s2" max_level: 0 } }
"""

STATES = [(ph, lv, st) for ph in ("TRAIN", "TEST") for lv in (0, 1, 2)
          for st in ((), ("s1",), ("s2",), ("s1", "s2"))]


def _net(text, **kw):
    return load_net(read_prototxt(text), **kw)


def test_filter_rules_hand_checked():
    # Worked out by hand from Net::StateMeetsRule.
    n = _net(RULES, phase="TEST", level=2, stages=("s1",))
    assert n.layer_names == ["data", "b", "c", "e", "g", "h"]
    n = _net(RULES, phase="TRAIN", level=0, stages=("s2",))
    assert n.layer_names == ["data", "a", "e", "f", "i", "j", "k"]
    assert n.outputs == ["a", "e", "f", "i", "j", "k"]


@pytest.mark.caffe
def test_filter_rules_match_caffe(tmp_path):
    require_oracle()
    proto = tmp_path / "rules.prototxt"
    proto.write_text(RULES)
    code = ("import caffe, json\nout = []\n"
            f"for ph, lv, st in {[(p, l, list(s)) for p, l, s in STATES]!r}:\n"
            f"    n = caffe.Net({str(proto)!r}, caffe.TRAIN if ph == 'TRAIN' else caffe.TEST, level=lv, stages=st)\n"
            "    out.append([list(n._layer_names), list(n.blobs.keys()), list(n.outputs)])\n"
            "print(json.dumps(out))\n")
    got = json.loads(run_script(code).stdout.strip().splitlines()[-1])
    split = re.compile(r".*_split(_\d+)?$")
    for (ph, lv, st), (layers, blobs, outputs) in zip(STATES, got):
        n = _net(RULES, phase=ph, level=lv, stages=st)
        assert n.layer_names == [x for x in layers if not split.match(x)], (ph, lv, st)
        assert list(n.blob_shapes) == [x for x in blobs if not split.match(x)], (ph, lv, st)
        assert n.outputs == sorted(outputs), (ph, lv, st)


def test_include_and_exclude_together_is_an_error():
    text = RULES + 'layer { name: "z" type: "Power" bottom: "data" top: "z" include { phase: TEST } exclude { phase: TRAIN } }'
    with pytest.raises(CaffeFormatError, match="layer 'z'.*either include rules or exclude rules"):
        _net(text)


INPLACE = """
name: "inplace"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 3 dim: 5 dim: 5 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "scale" type: "Power" bottom: "conv" top: "conv" power_param { scale: 3 shift: -1 } }
layer { name: "side" type: "Power" bottom: "data" top: "side" power_param { power: 2 } }
"""


def test_in_place_reports_last_value_and_outputs():
    torch.manual_seed(0)
    n = _net(INPLACE)
    x = torch.randn(2, 3, 5, 5)
    allb = n.forward_all(data=x)
    w, b = n.params["conv"]
    ref = torch.nn.functional.conv2d(x, w, b).clamp_min(0) * 3 - 1
    torch.testing.assert_close(allb["conv"], ref)
    assert list(allb) == ["data", "conv", "side"]
    out = n(x)  # positional: the single input
    assert list(out) == ["conv", "side"]
    torch.testing.assert_close(out["conv"], ref)


@pytest.mark.caffe
def test_in_place_and_blobs_match_caffe():
    torch.manual_seed(1)
    n = _net(INPLACE)
    x = torch.randn(2, 3, 5, 5)
    ours = n.forward_all(data=x)
    res = caffe_run(INPLACE, params={k: [p.detach().numpy() for p in v] for k, v in n.params.items()},
                    inputs={"data": x.numpy()})
    for name, t in ours.items():
        np.testing.assert_allclose(t.detach().numpy(), res["data"][name], rtol=1e-5, atol=1e-5)


SHARED = """
name: "shared"
force_backward: true
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 2 dim: 2 dim: 6 dim: 6 } } }
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1" param { name: "w" } param { name: "b" lr_mult: 2 }
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "c2" type: "Convolution" bottom: "data" top: "c2" param { name: "w" } param { name: "b" }
        convolution_param { num_output: 3 kernel_size: 3 stride: 2 } }
layer { name: "c3" type: "Convolution" bottom: "c1" top: "c3"
        convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.3 } } }
"""


def test_shared_params_one_object_and_order():
    n = _net(SHARED)
    assert n.params["c1"][0] is n.params["c2"][0] and n.params["c1"][1] is n.params["c2"][1]
    assert n.layer("c2").blobs[0] is n.params["c1"][0]
    lp = n.learnable_params()
    assert [(i["layer"], i["index"]) for i in n.param_info] == [("c1", 0), ("c1", 1), ("c3", 0), ("c3", 1)]
    assert lp[0] is n.params["c1"][0] and lp[2] is n.params["c3"][0]
    assert n.param_info[1]["lr_mult"] == 2.0
    assert len(list(n.parameters())) == 4


@pytest.mark.caffe
def test_shared_param_gradient_is_sum_like_caffe():
    torch.manual_seed(2)
    n = _net(SHARED)
    x = torch.randn(2, 2, 6, 6)
    out = n(data=x)
    g2 = torch.randn_like(out["c2"])
    g3 = torch.randn_like(out["c3"])
    torch.autograd.backward([out["c2"], out["c3"]], [g2, g3])
    res = caffe_run(SHARED, params={k: [p.detach().numpy() for p in v] for k, v in n.params.items()},
                    inputs={"data": x.numpy()}, top_diffs={"c2": g2.numpy(), "c3": g3.numpy()})
    for layer in ("c1", "c3"):
        for i, p in enumerate(n.params[layer]):
            np.testing.assert_allclose(p.grad.numpy(), res["param_diffs"][f"{layer}/{i}"], rtol=1e-4, atol=1e-5)


def test_shared_shape_mismatch_message():
    text = SHARED.replace("num_output: 3 kernel_size: 3 stride: 2", "num_output: 3 kernel_size: 5 stride: 2")
    with pytest.raises(ShapeError, match=r"cannot share param 'w' owned by layer 'c1' with layer 'c2'; "
                                         r"shape mismatch.  Owner layer param shape is 3 2 3 3 \(54\); "
                                         r"sharing layer expects shape 3 2 5 5 \(150\)"):
        _net(text)


def test_shared_lr_mult_mismatch():
    text = SHARED.replace('param { name: "b" }', 'param { name: "b" lr_mult: 1 }')
    with pytest.raises(UnsupportedParameter, match="shared param 'b' has mismatched lr_mult"):
        _net(text)


def test_shared_gradients_add_up():
    torch.manual_seed(3)
    n = _net(SHARED)
    x = torch.randn(2, 2, 6, 6)
    n(data=x)["c2"].sum().backward()
    g_c2 = n.params["c1"][0].grad.clone()
    n.zero_grad()
    n(data=x)["c3"].sum().backward()
    g_c3 = n.params["c1"][0].grad.clone()
    n.zero_grad()
    o = n(data=x)
    (o["c2"].sum() + o["c3"].sum()).backward()
    torch.testing.assert_close(n.params["c1"][0].grad, g_c2 + g_c3)


LOSS = """
name: "loss"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 4 dim: 5 } shape { dim: 4 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "data" bottom: "label" top: "loss" }
layer { name: "aux" type: "Power" bottom: "data" top: "aux" loss_weight: 0.5 propagate_down: false }
"""


def test_loss_weights_and_total():
    n = _net(LOSS)
    assert n.loss_weights == {"loss": 1.0, "aux": 0.5}
    x = torch.randn(4, 5, requires_grad=True)
    y = torch.tensor([0.0, 1.0, 4.0, 2.0])
    out = n(data=x, label=y)
    ref = torch.nn.functional.cross_entropy(x, y.long()) + 0.5 * x.sum()
    torch.testing.assert_close(n.loss(out), ref)
    n.loss(out).backward()
    # propagate_down: false on "aux": only the softmax loss reaches data
    x2 = x.detach().clone().requires_grad_(True)
    torch.nn.functional.cross_entropy(x2, y.long()).backward()
    torch.testing.assert_close(x.grad, x2.grad)


def test_loss_weight_count_must_match_tops():
    text = LOSS.replace("loss_weight: 0.5", "loss_weight: 0.5 loss_weight: 1")
    with pytest.raises(CaffeFormatError, match="layer 'aux'.*loss_weight must be unspecified or specified once per top"):
        _net(text)


@pytest.mark.parametrize("snippet,err,msg", [
    ('layer { name: "x" type: "Power" bottom: "nope" top: "x" }', CaffeFormatError,
     r"unknown bottom blob 'nope' \(layer 'x', bottom index 0\)"),
    ('layer { name: "x" type: "Power" bottom: "data" top: "conv" }', CaffeFormatError,
     r"top blob 'conv' produced by multiple sources"),
    ('layer { name: "x" type: "Power" bottom: "data" bottom: "conv" top: "x" }', UnsupportedParameter,
     r"layer 'x' \(type Power\) takes exactly 1 bottom blob\(s\), got 2"),
    ('layer { name: "x" type: "Powr" bottom: "data" top: "x" }', UnknownLayerType, r"Did you mean 'Power'"),
    ('layer { name: "x" type: "Power" bottom: "data" top: "x" param { lr_mult: 1 } }', UnsupportedParameter,
     r"too many params specified for layer 'x'"),
])
def test_build_errors_name_the_layer(snippet, err, msg):
    with pytest.raises(err, match=msg):
        _net(INPLACE + snippet)


def test_inputs_and_bad_calls():
    n = _net(LOSS)
    assert n.inputs == ["data", "label"]
    with pytest.raises(TypeError, match=r"missing net input\(s\) \['label'\]"):
        n(data=torch.zeros(4, 5))
    with pytest.raises(TypeError, match="'lbl' is not an input"):
        n(data=torch.zeros(4, 5), lbl=torch.zeros(4))
    with pytest.raises(ShapeError, match=r"input_shapes names \['lbl'\]"):
        _net(LOSS, input_shapes={"lbl": (3,)})
    n = _net(LOSS, input_shapes={"data": (7, 5), "label": (7,)})
    assert n.blob_shapes["data"] == (7, 5)


def test_data_layer_needs_input_shapes():
    text = """
    layer { name: "data" type: "Data" top: "data" top: "label"
            transform_param { crop_size: 227 } data_param { source: "x" batch_size: 8 } }
    layer { name: "p" type: "Power" bottom: "data" top: "p" }"""
    with pytest.raises(ShapeError, match=r"layer 'data' \(type Data\) becomes a net input.*"
                                         r"input_shapes=\{'data': \(8, \?, 227, 227\)\}"):
        _net(text)
    n = _net(text, input_shapes={"data": (8, 3, 227, 227)})
    assert n.inputs == ["data", "label"] and n.blob_shapes["label"] == (8,)
    out = n(data=torch.ones(8, 3, 227, 227), label=torch.zeros(8))
    assert sorted(out) == ["label", "p"]


@pytest.mark.parametrize("layer,shape", [
    # Each data layer's DataLayerSetUp shape, worked out from its params (see layers/input.py).
    ('type: "ImageData" image_data_param { source: "l.txt" batch_size: 4 new_height: 40 new_width: 50 }',
     (4, 3, 40, 50)),
    ('type: "ImageData" image_data_param { source: "l.txt" batch_size: 4 is_color: false }'
     ' transform_param { crop_size: 32 }', (4, 1, 32, 32)),
    ('type: "WindowData" window_data_param { source: "w.txt" batch_size: 6 }'
     ' transform_param { crop_size: 24 }', (6, 3, 24, 24)),
    ('type: "MemoryData" memory_data_param { batch_size: 5 channels: 2 height: 7 width: 9 }', (5, 2, 7, 9)),
])
def test_data_layers_become_inputs_with_caffes_shapes(layer, shape):
    n = _net(f'layer {{ name: "data" top: "data" top: "label" {layer} }}\n'
             'layer { name: "p" type: "Power" bottom: "data" top: "p" }')
    assert n.inputs == ["data", "label"]
    assert n.blob_shapes["data"] == shape and n.blob_shapes["label"] == (shape[0],)


def test_python_layer_refused_or_input():
    text = """
    layer { name: "d" type: "Python" top: "data" top: "rois" python_param { module: "m" layer: "L" } }
    layer { name: "p" type: "Power" bottom: "data" top: "p" }"""
    with pytest.raises(UnknownLayerType, match="python_layers='as_input'"):
        _net(text)
    with pytest.raises(ShapeError, match=r"Python layer m.L"):
        _net(text, python_layers="as_input")
    n = _net(text, python_layers="as_input", input_shapes={"data": (1, 3, 8, 8), "rois": (2, 5)})
    assert n.inputs == ["data", "rois"]


def test_dummy_data():
    text = """
    layer { name: "dd" type: "DummyData" top: "a" top: "b"
            dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 }
                               data_filler { type: "constant" value: 7 } data_filler { type: "gaussian" std: 2 } } }"""
    n = _net(text)
    assert n.inputs == []
    out = n()
    torch.testing.assert_close(out["a"], torch.full((2, 3), 7.0))
    assert out["b"].shape == (4,)
    assert not torch.equal(n()["b"], n()["b"])  # redrawn each forward, as Caffe's refill


def test_split_layer_in_prototxt_runs_and_gradients_sum():
    text = INPLACE + """
    layer { name: "sp" type: "Split" bottom: "side" top: "s1" top: "s2" }
    layer { name: "q" type: "Eltwise" bottom: "s1" bottom: "s2" top: "q" }"""
    n = _net(text)
    x = torch.randn(2, 3, 5, 5, requires_grad=True)
    out = n(data=x)
    torch.testing.assert_close(out["q"], 2 * x.detach() ** 2)
    out["q"].sum().backward()
    torch.testing.assert_close(x.grad, 4 * x.detach())


def test_export_onnx_and_torch_export(tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    torch.manual_seed(4)
    n = _net(INPLACE).eval()
    x = torch.randn(2, 3, 5, 5)
    ref = n(data=x)
    ep = torch.export.export(n, (), {"data": x})
    got = ep.module()(data=x)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k])
    path = str(tmp_path / "n.onnx")
    # TorchScript exporter (onnxscript is not a dependency); the dict output flattens in name order
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(n, (x,), path, input_names=["data"], output_names=n.outputs, dynamo=False)
    sess = ort.InferenceSession(path)
    assert [o.name for o in sess.get_outputs()] == ["conv", "side"]
    outs = sess.run(None, {"data": x.numpy()})
    np.testing.assert_allclose(outs[0], ref["conv"].detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs[1], ref["side"].detach().numpy(), rtol=1e-5, atol=1e-5)


def test_lr_mult_zero_means_no_grad():
    text = INPLACE.replace('top: "conv"\n', 'top: "conv" param { lr_mult: 0 } param { lr_mult: 0 }\n', 1)
    n = _net(text)
    assert [p.requires_grad for p in n.params["conv"]] == [False, False]
    n = _net("force_backward: true\n" + text)
    assert [p.requires_grad for p in n.params["conv"]] == [True, True]



def test_module_to_and_double_reach_every_layer():
    # nn.Module.to()/.double() go through Module._apply: a layer method of that
    # name would shadow it and break moving a net to another device or dtype.
    net = _net("""
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 9 dim: 9 } } }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 4 kernel_size: 3 weight_filler { type: "gaussian" std: 0.1 } } }
layer { name: "pool" type: "Pooling" bottom: "conv" top: "pool" pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "fc" type: "InnerProduct" bottom: "pool" top: "fc" inner_product_param { num_output: 2 } }
""")
    x = torch.randn(1, 3, 9, 9)
    ref = net(x)["fc"]
    net64 = net.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in net64.parameters())
    out = net64(x.double())["fc"]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out.float(), ref, rtol=1e-5, atol=1e-6)
