"""caffemodel <-> safetensors / .pt: naming, bit-exact round trips, torchvision keys, refusals."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from caffe_compat.errors import CaffeFormatError, UnsupportedParameter
from caffe_compat.io import read_caffemodel
from caffe_compat.net import load_net
from caffekt.converters import convert as C

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv.a" type: "Convolution" bottom: "data" top: "c"
  convolution_param { num_output: 4 kernel_size: 3 } }
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" }
layer { name: "fc" type: "InnerProduct" bottom: "c" top: "fc" inner_product_param { num_output: 5 } }
"""


def _weights():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    w.reshape(-1)[:4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.finfo(np.float32).tiny]
    return C.WeightSet([
        C.LayerWeights("conv.a", "Convolution", [w, rng.standard_normal(4).astype(np.float32)]),
        C.LayerWeights("bn", "BatchNorm", [rng.random(4, dtype=np.float32), rng.random(4, dtype=np.float32),
                                           np.array([3.0], np.float32)]),
        C.LayerWeights("fc", "InnerProduct", [rng.standard_normal((5, 144)).astype(np.float32),
                                              rng.standard_normal(5).astype(np.float32)]),
    ])


def _bits(ws):
    return [(lw.name, [(a.shape, np.ascontiguousarray(a).view(np.uint32).tobytes()) for a in lw.blobs])
            for lw in ws]


@pytest.fixture()
def tiny(tmp_path):
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(NET)
    model = str(tmp_path / "tiny.caffemodel")
    C.write_caffemodel_weights(model, _weights(), str(proto))
    return str(proto), model


@pytest.mark.parametrize("ext", [".safetensors", ".pt"])
def test_round_trip_is_bit_exact(tiny, tmp_path, ext):
    proto, model = tiny
    mid = str(tmp_path / ("w" + ext))
    back = str(tmp_path / "back.caffemodel")
    C.convert(model, mid)
    C.convert(mid, back, prototxt=proto)
    assert _bits(C.read_weights(back)) == _bits(C.read_weights(model)) == _bits(_weights())
    # with the same prototxt the whole file is identical, not just the blobs
    assert open(back, "rb").read() == open(model, "rb").read()


def test_safetensors_keys_and_metadata(tiny, tmp_path):
    from safetensors import safe_open
    _proto, model = tiny
    out = str(tmp_path / "w.safetensors")
    C.convert(model, out)
    with safe_open(out, framework="numpy") as f:
        assert sorted(f.keys()) == ["bn.0", "bn.1", "bn.2", "conv.a.0", "conv.a.1", "fc.0", "fc.1"]
        meta = json.loads(f.metadata()[C.METADATA_KEY])
    assert meta == [["conv.a", "Convolution", 2], ["bn", "BatchNorm", 3], ["fc", "InnerProduct", 2]]
    ws = C.read_weights(out)
    assert ws.names() == ["conv.a", "bn", "fc"] and [lw.type for lw in ws] == ["Convolution", "BatchNorm", "InnerProduct"]


def test_weights_only_caffemodel_loads_strict(tiny, tmp_path):
    proto, model = tiny
    pt = str(tmp_path / "w.pt")
    C.convert(model, pt)
    wo = str(tmp_path / "wo.caffemodel")
    C.convert(pt, wo)  # no prototxt: name + blobs only
    m = read_caffemodel(wo)
    assert [lb.name for lb in m.layers] == ["conv.a", "bn", "fc"]
    assert [lb.type for lb in m.layers] == ["", "", ""]  # .pt carries no types
    net = load_net(proto, weights=wo, strict=True)
    np.testing.assert_array_equal(net.params["fc"][0].detach().numpy(), _weights()[2].blobs[0])


class _Gadget:
    pass


def test_aliases_and_torch_load_is_weights_only(tmp_path):
    p = str(tmp_path / "a.pt")
    torch.save({"conv1.weight": torch.ones(2, 3, 1, 1), "conv1.bias": torch.zeros(2)}, p)
    ws = C.read_weights(p)
    assert ws.names() == ["conv1"] and [b.shape for b in ws[0].blobs] == [(2, 3, 1, 1), (2,)]
    evil = str(tmp_path / "evil.pt")
    torch.save({"x.0": torch.ones(1), "obj": _Gadget()}, evil)  # an arbitrary class: full unpickling
    with pytest.raises(CaffeFormatError, match="evil.pt.*weights_only=True"):
        C.read_weights(evil)


def test_refusals(tmp_path, tiny):
    from safetensors.numpy import save_file
    p = str(tmp_path / "bad.safetensors")
    save_file({"conv1": np.ones(2, np.float32)}, p)
    with pytest.raises(CaffeFormatError, match=r"'conv1' is not '<layer>.<blob index>'"):
        C.read_weights(p)
    save_file({"conv1.0": np.ones(2, np.float32), "conv1.2": np.ones(2, np.float32)}, p)
    with pytest.raises(CaffeFormatError, match=r"layer 'conv1' has blob indices \[0, 2\]"):
        C.read_weights(p)
    save_file({"conv1.0": np.ones(2, np.float64)}, p)
    with pytest.raises(CaffeFormatError, match="dtype float64"):
        C.read_weights(p)
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CaffeFormatError, match="junk.safetensors: not a readable safetensors"):
        C.read_weights(str(tmp_path / "junk.safetensors"))
    proto, model = tiny
    other = tmp_path / "other.prototxt"
    other.write_text(NET.replace('name: "fc"', 'name: "fc_new"'))
    out = tmp_path / "o.caffemodel"
    with pytest.raises(UnsupportedParameter, match="no layer named 'fc'"):
        C.convert(model, str(out), prototxt=str(other))
    assert not out.exists()
    with pytest.raises(UnsupportedParameter, match="must end in"):
        C.convert(model, str(tmp_path / "o.bin"))


# torchvision.models.vgg16().state_dict() keys, written out by hand (torchvision is not imported)
TORCHVISION_VGG16 = {
    "conv1_1": "features.0", "conv1_2": "features.2", "conv2_1": "features.5", "conv2_2": "features.7",
    "conv3_1": "features.10", "conv3_2": "features.12", "conv3_3": "features.14",
    "conv4_1": "features.17", "conv4_2": "features.19", "conv4_3": "features.21",
    "conv5_1": "features.24", "conv5_2": "features.26", "conv5_3": "features.28",
    "fc6": "classifier.0", "fc7": "classifier.3", "fc8": "classifier.6",
}


def test_torchvision_vgg16_table():
    keys = C.torchvision_vgg16_keys()
    assert len(keys) == 32
    for layer, mod in TORCHVISION_VGG16.items():
        assert keys[f"{layer}.0"] == f"{mod}.weight" and keys[f"{layer}.1"] == f"{mod}.bias"
    ws = C.WeightSet(C.LayerWeights(n, "", [np.zeros((1, 1, 2, 3), np.float32) if n.startswith("fc")
                                            else np.zeros((2, 1, 3, 3), np.float32),
                                            np.zeros(2, np.float32)]) for n in TORCHVISION_VGG16)
    sd = C.to_torchvision_vgg16(ws)
    assert sd["classifier.0.weight"].shape == (2, 3)  # legacy 4-D IP weight squeezed
    with pytest.raises(UnsupportedParameter, match=r"no layer\(s\) \['fc8'\]"):
        C.to_torchvision_vgg16(ws[:-1])


def test_cli_convert(tiny, tmp_path, capsys):
    from caffe_compat.cli import main
    proto, model = tiny
    out = str(tmp_path / "r.safetensors")
    assert main(["convert", model, "-o", out, "--rename", "fc=fc8", "--drop", "bn",
                 "--reinit", "fc8:gaussian:0.5:0.25"]) == 0
    ws = C.read_weights(out)
    assert ws.names() == ["conv.a", "fc8"]
    np.testing.assert_array_equal(ws[1].blobs[1], np.full(5, 0.25, np.float32))
    assert 0.4 < ws[1].blobs[0].std() < 0.6 and ws[1].blobs[0].shape == (5, 144)
    assert main(["convert", model, "-o", out, "--drop", "nope"]) == 2
    assert "--drop: no weight layer named 'nope'" in capsys.readouterr().err


def test_convert_file_folds_bn_and_writes_the_matching_net(tiny, tmp_path):
    from caffekt.converters.surgery import convert_file
    proto, _ = tiny
    ws = _weights()
    ws[0].blobs[0].reshape(-1)[:4] = 0.5   # finite outputs: the fixture's float32 extremes overflow when scaled
    model = str(tmp_path / "plain.caffemodel")
    C.write_caffemodel_weights(model, ws, proto)
    out, net_out = str(tmp_path / "f.caffemodel"), str(tmp_path / "f.prototxt")
    with pytest.raises(UnsupportedParameter, match="--fold-bn needs --prototxt"):
        convert_file(model, out, fold_bn=True)
    assert not (tmp_path / "f.caffemodel").exists()
    res = convert_file(model, out, prototxt=proto, fold_bn=True, prototxt_output=net_out)
    assert res.folded == [("conv.a", "bn", None)] and res.weights.names() == ["conv.a", "fc"]
    assert res.tensors == 4 and res.nbytes == (tmp_path / "f.caffemodel").stat().st_size
    x = torch.from_numpy(np.random.default_rng(1).standard_normal((1, 3, 8, 8)).astype(np.float32))
    with torch.no_grad():
        ref = load_net(proto, weights=model, phase="TEST")(data=x)["fc"]
        got = load_net(net_out, weights=out, phase="TEST")(data=x)["fc"]
    assert torch.isfinite(ref).all() and ref.abs().max() > 0.1
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-4, atol=1e-5)
