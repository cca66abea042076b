"""Legacy upgrade (port of upgrade_proto.cpp): golden V0/V1 nets, errors, and two oracles.

The golden expected files in tests/golden/upgrade were written by hand from
upgrade_proto.cpp, not produced by this code.  OpenCV's Caffe importer (its
own port of upgrade_proto) and, in the oracle tier, real Caffe load the
legacy files directly; both must compute the same outputs from them as from
our upgraded V2 files.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from caffe_compat.errors import UpgradeError
from caffe_compat.proto import caffe_pb2 as pb
from caffe_compat.prototxt import format_text, parse_net_text, parse_solver_text
from caffe_compat.upgrade import (NET_STEPS, UpgradeWarning, net_needs_upgrade, resolve_snapshot_prefix,
                                  upgrade_net, upgrade_net_traced, upgrade_solver)

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "upgrade")


def golden(name):
    return os.path.join(GOLDEN, name)


def load(name):
    with open(golden(name)) as f:
        return parse_net_text(f.read(), golden(name))[0]


def quiet_upgrade(net, path=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UpgradeWarning)
        return upgrade_net_traced(net, path)


def test_step_order_mirrors_upgrade_net_as_needed():
    assert [s.name for s in NET_STEPS] == ["V0ToV1", "DataTransform", "V1ToV2", "Input", "BatchNorm"]


@pytest.mark.parametrize("name,steps,origin", [
    ("v0_net", ["V0ToV1", "V1ToV2", "Input"], [None, 1, 2, 3, 4, 5, 6]),  # layer 0 was padding
    ("v1_net", ["V1ToV2", "Input"], [None, 0, 1, 2, 3, 4, 5]),
    ("v1_data", ["DataTransform", "V1ToV2"], [0, 1, 2]),
])
def test_golden_nets(name, steps, origin):
    net = load(f"{name}.prototxt")
    with pytest.warns(UpgradeWarning) as rec:
        out, applied, got_origin = upgrade_net_traced(net, golden(f"{name}.prototxt"))
    assert applied == steps and got_origin == origin
    assert len([w for w in rec if issubclass(w.category, UpgradeWarning)]) == len(steps)
    assert f"{name}.prototxt" in str(rec[0].message)
    expected = load(f"{name}.expected.prototxt")
    assert format_text(out) == format_text(expected)
    assert out == expected
    assert not net_needs_upgrade(out)


def test_v0_padding_folded_field_by_field():
    net, _, _ = quiet_upgrade(load("v0_net.prototxt"))
    names = [l.name for l in net.layer]
    assert names == ["input", "conv1", "relu1", "norm1", "pool1", "fc", "prob"]  # pad1 gone
    conv = net.layer[1]
    assert conv.type == "Convolution" and list(conv.bottom) == ["data"]  # rewired past the padding
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride), cp.num_output) == ([1], [3], [2], 4)
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    assert net.layer[4].pooling_param.pool == pb.PoolingParameter.AVE
    assert net.layer[5].inner_product_param.bias_term is True
    assert net.layer[5].inner_product_param.HasField("bias_term")
    assert list(net.layer[0].input_param.shape[0].dim) == [2, 3, 9, 9]
    assert not len(net.input) and not len(net.input_dim) and not len(net.layers)


def test_v1_params_and_share_mode():
    net, _, _ = quiet_upgrade(load("v1_net.prototxt"))
    conv = net.layer[1]
    assert [p.name for p in conv.param] == ["conv1_w", "conv1_b"]
    assert conv.param[0].share_mode == pb.ParamSpec.PERMISSIVE and not conv.param[1].HasField("share_mode")
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1), (2, 0)]
    fc = net.layer[5]
    assert len(fc.param) == 1 and fc.param[0].lr_mult == 1 and not fc.param[0].HasField("decay_mult")
    assert net.layer[4].include[0].phase == pb.TRAIN


def test_data_transform_and_mergedata():
    net, _, _ = quiet_upgrade(load("v1_data.prototxt"))
    d = net.layer[0]
    assert d.transform_param.scale == pytest.approx(0.00390625)
    assert (d.transform_param.mean_file, d.transform_param.crop_size, d.transform_param.mirror) == \
        ("mean.binaryproto", 27, True)
    for f in ("scale", "mean_file", "crop_size", "mirror"):
        assert not d.data_param.HasField(f)
    assert net.layer[2].type == "MergeData"
    assert net.layer[2].merge_data_param.max_substitute == 3


def test_every_v1_enum_has_a_type_string():
    from caffe_compat.upgrade import V1_TYPES
    assert set(V1_TYPES) == set(pb.V1LayerParameter.LayerType.keys())
    assert V1_TYPES["SOFTMAX_LOSS"] == "SoftmaxWithLoss" and V1_TYPES["MERGEDATA"] == "MergeData"


def test_solver_type_upgrade_golden():
    with open(golden("old_solver.prototxt")) as f:
        s = parse_solver_text(f.read())
    with pytest.warns(UpgradeWarning):
        s, applied = upgrade_solver(s, "old_solver.prototxt")
    with open(golden("old_solver.expected.prototxt")) as f:
        assert s == parse_solver_text(f.read())
    assert applied == ["SolverType"] and s.type == "Nesterov" and not s.HasField("solver_type")
    assert s.snapshot_prefix == "snapshots/tiny"  # upgrade leaves it alone


def test_current_files_are_untouched(fixtures_dir):
    path = os.path.join(fixtures_dir, "bvlc", "bvlc_alexnet", "deploy.prototxt")
    with open(path) as f:
        net = parse_net_text(f.read(), path)[0]
    before = net.SerializeToString()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning either
        _, applied = upgrade_net(net, path)
    assert applied == [] and net.SerializeToString() == before


# ----------------------------------------------------------------- refusals and edge cases

def _net(text):
    return parse_net_text(text)[0]


def test_layer_and_layers_together_is_refused():
    net = _net('layer { name: "a" type: "ReLU" }\nlayers { name: "b" type: RELU }')
    with pytest.raises(UpgradeError, match=r"x\.prototxt: the net has both 'layer' and 'layers' fields"):
        quiet_upgrade(net, "x.prototxt")


def test_v0_param_for_wrong_type_names_layer_and_field():
    net = _net('layers { layer { name: "r" type: "relu" num_output: 3 } bottom: "d" top: "r" }\ninput: "d"')
    with pytest.raises(UpgradeError) as ei:
        quiet_upgrade(net, "old.prototxt")
    assert str(ei.value) == ("old.prototxt: layer 0 'r': V0 parameter 'num_output' is not valid for layer "
                             "type 'relu'; expected it only for conv, innerproduct")


def test_unknown_v0_type_and_unknown_bottom():
    with pytest.raises(UpgradeError, match="unknown V0 layer type 'warp'"):
        quiet_upgrade(_net('input: "d" layers { layer { name: "w" type: "warp" } bottom: "d" top: "w" }'))
    with pytest.raises(UpgradeError, match="layer 0 'c': bottom 'nowhere' is produced by no earlier layer"):
        quiet_upgrade(_net('layers { layer { name: "c" type: "conv" } bottom: "nowhere" top: "c" }'))


def test_padding_into_non_conv_is_refused():
    net = _net('input: "d"\n'
               'layers { layer { name: "pad" type: "padding" pad: 2 } bottom: "d" top: "p" }\n'
               'layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }')
    with pytest.raises(UpgradeError, match="takes the output of padding layer 'pad'; expected a conv or pool"):
        quiet_upgrade(net)


def test_padding_into_pool_sets_pool_pad():
    net = _net('input: "d" input_dim: 1 input_dim: 1 input_dim: 4 input_dim: 4\n'
               'layers { layer { name: "pad" type: "padding" pad: 1 } bottom: "d" top: "p" }\n'
               'layers { layer { name: "pool" type: "pool" kernelsize: 2 pool: MAX } bottom: "p" top: "q" }')
    out, applied, origin = quiet_upgrade(net)
    assert out.layer[1].pooling_param.pad == 1 and list(out.layer[1].bottom) == ["d"]
    assert origin == [None, 1]


def test_input_without_shape_is_dropped():
    # a legacy caffemodel: inputs named but no dims -> no Input layer, fields cleared
    net = _net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    out, applied, origin = quiet_upgrade(net)
    assert applied == ["Input"] and [l.name for l in out.layer] == ["r"] and origin == [0]
    assert not len(out.input)


def test_input_count_mismatch_is_refused():
    with pytest.raises(UpgradeError, match="net has 2 inputs but 4 input_dim"):
        quiet_upgrade(_net('input: "a" input: "b" input_dim: 1 input_dim: 3 input_dim: 5 input_dim: 5'))
    with pytest.raises(UpgradeError, match="net has 2 inputs but 1 input_shape"):
        quiet_upgrade(_net('input: "a" input: "b" input_shape { dim: 1 }'))


def test_batchnorm_with_three_params_gets_zero_multipliers():
    net = _net('layer { name: "bn" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } '
               'param { lr_mult: 1 decay_mult: 5 } }\n'
               'layer { name: "bn2" type: "BatchNorm" param { lr_mult: 1 } param { lr_mult: 1 } }')
    out, applied, _ = quiet_upgrade(net)
    assert applied == ["BatchNorm"]
    assert [(p.lr_mult, p.decay_mult) for p in out.layer[0].param] == [(0, 0)] * 3
    assert [(p.lr_mult, p.HasField("decay_mult")) for p in out.layer[1].param] == [(1, False)] * 2


def test_solver_type_and_type_together_is_refused():
    s = parse_solver_text('solver_type: ADAM type: "Adam"')
    with pytest.raises(UpgradeError, match=r"s\.prototxt: the solver sets both the old 'solver_type'"):
        upgrade_solver(s, "s.prototxt")


def test_snapshot_prefix_rules(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = pb.SolverParameter()
    resolve_snapshot_prefix(s, "models/x/solver.prototxt")
    assert s.snapshot_prefix == "models/x/solver"  # absent: the solver path without extension
    os.mkdir("snaps")
    s = pb.SolverParameter(snapshot_prefix="snaps")
    resolve_snapshot_prefix(s, "models/x/solver.prototxt")
    assert s.snapshot_prefix == os.path.join("snaps", "solver")  # a directory: stem inside it
    s = pb.SolverParameter(snapshot_prefix="out/caffenet_train")
    resolve_snapshot_prefix(s, "models/x/solver.prototxt")
    assert s.snapshot_prefix == "out/caffenet_train"  # anything else: as written (cwd-relative)


# ----------------------------------------------------------------- OpenCV oracle

def _legacy_caffemodel(net_v: pb.NetParameter, weights):
    """The legacy net with ``weights`` (layer -> arrays) stored the legacy way (V0: inside ``layer``)."""
    m = pb.NetParameter()
    m.CopyFrom(net_v)
    for conn in m.layers:
        holder = conn.layer if conn.HasField("layer") else conn
        for a in weights.get(holder.name, []):
            b = holder.blobs.add()
            b.shape.dim.extend(a.shape)
            b.data.extend(a.ravel().tolist())
    return m.SerializeToString()


LEGACY_WEIGHTS = {
    "v0_net": {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(5, 4 * 4 * 4), (5,)]},
    "v1_net": {"conv1": [(4, 3, 3, 3), (4,)], "fc": [(5, 4 * 4 * 4), (5,)]},
}
INPUT_SHAPES = {"v0_net": (2, 3, 9, 9), "v1_net": (2, 3, 8, 8)}


@pytest.mark.parametrize("name", ["v0_net", "v1_net"])
def test_opencv_runs_legacy_and_upgraded_alike(name, tmp_path):
    cv2 = pytest.importorskip("cv2")
    if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
        pytest.skip("this OpenCV has no Caffe importer")
    from caffe_compat.io import upgrade_file

    rng = np.random.default_rng(7)
    weights = {k: [rng.standard_normal(s).astype(np.float32) for s in shapes]
               for k, shapes in LEGACY_WEIGHTS[name].items()}
    legacy_proto = golden(f"{name}.prototxt")
    legacy_model = tmp_path / f"{name}.caffemodel"
    legacy_model.write_bytes(_legacy_caffemodel(load(f"{name}.prototxt"), weights))
    new_proto, new_model = tmp_path / "v2.prototxt", tmp_path / "v2.caffemodel"
    assert upgrade_file(legacy_proto, str(new_proto))[0] == "net"
    kind, applied = upgrade_file(str(legacy_model), str(new_model))
    assert kind == "caffemodel" and "V1ToV2" in applied

    x = rng.standard_normal(INPUT_SHAPES[name]).astype(np.float32)

    def run(proto, model):
        net = cv2.dnn.readNetFromCaffe(str(proto), str(model))
        net.setInput(x, "data")
        return net.forward("prob")

    # OpenCV 4.14 ignores blobs stored inside a V0 layer (V0LayerParameter
    # field 50; real Caffe reads them, see the oracle test below), so for V0
    # it gets the legacy text with our upgraded weights: the text upgrade is
    # still OpenCV's own.
    ref = run(legacy_proto, new_model if name == "v0_net" else legacy_model)
    ours = run(new_proto, new_model)
    assert ref.shape == ours.shape == (2, 5)
    np.testing.assert_array_equal(ours, ref)
    # and the weights really were used: a perturbed conv changes the output
    weights["conv1"][0][0, 0, 0, 0] += 1.0
    legacy_model.write_bytes(_legacy_caffemodel(load(f"{name}.prototxt"), weights))
    upgrade_file(str(legacy_model), str(new_model))
    assert not np.array_equal(run(new_proto, new_model), ours)


# ----------------------------------------------------------------- real Caffe oracle

@pytest.mark.caffe
@pytest.mark.parametrize("name", ["v0_net", "v1_net"])
def test_real_caffe_loads_legacy_and_upgraded_alike(name, tmp_path):
    import json
    from _oracle import run_script
    from caffe_compat.io import upgrade_file

    rng = np.random.default_rng(11)
    weights = {k: [rng.standard_normal(s).astype(np.float32) for s in shapes]
               for k, shapes in LEGACY_WEIGHTS[name].items()}
    legacy_model = tmp_path / "legacy.caffemodel"
    legacy_model.write_bytes(_legacy_caffemodel(load(f"{name}.prototxt"), weights))
    new_proto, new_model = tmp_path / "v2.prototxt", tmp_path / "v2.caffemodel"
    upgrade_file(golden(f"{name}.prototxt"), str(new_proto))
    upgrade_file(str(legacy_model), str(new_model))
    x = rng.standard_normal(INPUT_SHAPES[name]).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import json, numpy as np, caffe
caffe.set_mode_cpu()
x = np.load({str(tmp_path / 'x.npy')!r})
out = {{}}
for tag, proto, model in [("legacy", {golden(name + '.prototxt')!r}, {str(legacy_model)!r}),
                          ("v2", {str(new_proto)!r}, {str(new_model)!r})]:
    net = caffe.Net(proto, model, caffe.TEST)
    net.blobs["data"].data[...] = x
    prob = net.forward()["prob"].copy()
    np.save({str(tmp_path)!r} + "/" + tag + ".npy", prob)
    out[tag] = {{"layers": list(net._layer_names), "types": [l.type for l in net.layers],
                "params": {{k: [list(b.data.shape) for b in v] for k, v in net.params.items()}},
                "blobs": {{k: list(b.data.shape) for k, b in net.blobs.items()}}}}
print(json.dumps(out))
"""
    res = json.loads(run_script(code).stdout.strip().splitlines()[-1])
    assert res["legacy"] == res["v2"]
    ours = load(f"{name}.expected.prototxt")
    assert res["v2"]["layers"] == [l.name for l in ours.layer
                                   if not any(r.phase == pb.TRAIN for r in l.include)]
    assert res["v2"]["params"] == {k: [list(a.shape) for a in v] for k, v in weights.items()}
    np.testing.assert_array_equal(np.load(tmp_path / "legacy.npy"), np.load(tmp_path / "v2.npy"))
