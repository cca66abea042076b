"""The io facade: kind detection, wrong-kind refusals, caffemodels upgraded with blobs kept."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

import caffe_compat as C
from caffe_compat import binary
from caffe_compat.errors import TextFormatError, WrongFileKind
from caffe_compat.proto import caffe_pb2 as pb
from caffe_compat.upgrade import UpgradeWarning

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "upgrade")

pytestmark = pytest.mark.filterwarnings("ignore::caffe_compat.upgrade.UpgradeWarning")


@pytest.fixture()
def files(tmp_path):
    """One small file of every binary kind, written with the binary writers."""
    rng = np.random.default_rng(3)
    net = pb.NetParameter(name="n")
    net.layer.add(name="ip", type="InnerProduct", bottom=["x"], top=["y"]).inner_product_param.num_output = 2
    w = [rng.standard_normal((2, 3)).astype(np.float32), rng.standard_normal(2).astype(np.float32)]
    out = {"caffemodel": tmp_path / "m.caffemodel", "solverstate": tmp_path / "s.solverstate",
           "binaryproto": tmp_path / "mean.binaryproto", "datum": tmp_path / "d.datum"}
    C.write_caffemodel(str(out["caffemodel"]), net, {"ip": w})
    C.write_solverstate(str(out["solverstate"]),
                        binary.SolverState(iter=7, learned_net="m.caffemodel", history=w, current_step=1))
    C.write_blobproto(str(out["binaryproto"]), rng.standard_normal((1, 3, 4, 4)).astype(np.float32))
    out["datum"].write_bytes(binary.encode_datum(np.zeros((3, 2, 2), np.uint8), label=4))
    return {k: str(v) for k, v in out.items()}


def test_detect_binary_kinds(files):
    for kind, path in files.items():
        assert C.detect_kind(path) == kind, path


def test_detect_text_kinds(fixtures_dir):
    bvlc = os.path.join(fixtures_dir, "bvlc", "bvlc_alexnet")
    assert C.detect_kind(os.path.join(bvlc, "deploy.prototxt")) == "net"
    assert C.detect_kind(os.path.join(bvlc, "solver.prototxt")) == "solver"
    assert C.detect_kind(os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin")) == "unknown"


def test_detect_other(tmp_path):
    (tmp_path / "e").write_bytes(b"")
    (tmp_path / "h.caffemodel.h5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 32)
    (tmp_path / "t.txt").write_text("hello world, no fields here\n")
    assert C.detect_kind(str(tmp_path / "e")) == "unknown"
    assert C.detect_kind(str(tmp_path / "h.caffemodel.h5")) == "hdf5"
    assert C.detect_kind(str(tmp_path / "t.txt")) == "unknown"


def test_wrong_kind_is_refused(files, fixtures_dir):
    solver = os.path.join(fixtures_dir, "bvlc", "bvlc_alexnet", "solver.prototxt")
    deploy = os.path.join(fixtures_dir, "bvlc", "bvlc_alexnet", "deploy.prototxt")
    with pytest.raises(WrongFileKind, match=r"solver\.prototxt: holds a solver prototxt, expected a net prototxt"):
        C.read_prototxt(solver)
    with pytest.raises(WrongFileKind, match=r"holds a solver file, expected a net or caffemodel file"):
        C.read_net(solver)
    with pytest.raises(WrongFileKind, match=r"m\.caffemodel: holds a caffemodel file, expected a net or solver"):
        C.read_prototxt(files["caffemodel"])
    with pytest.raises(WrongFileKind, match=r"deploy\.prototxt: holds a net file, expected a caffemodel file"):
        C.read_caffemodel(deploy)
    with pytest.raises(WrongFileKind, match="holds a solverstate file, expected a binaryproto file"):
        C.read_blobproto(files["solverstate"])
    with pytest.raises(WrongFileKind, match="holds a binaryproto file, expected a solverstate file"):
        C.read_solverstate(files["binaryproto"])


def test_unparseable_text_reaches_the_text_parser(tmp_path):
    p = tmp_path / "broken.prototxt"
    p.write_text('name: "x"\nlayer {\n  nme: "a"\n}\n')
    with pytest.raises(TextFormatError, match=r"broken\.prototxt: line 3:3: unknown field 'nme'"):
        C.read_net(str(p))


def test_read_prototxt_text_or_path(tmp_path):
    text = open(os.path.join(GOLDEN, "v1_net.prototxt")).read()
    from_text = C.read_prototxt(text)
    from_path = C.read_prototxt(os.path.join(GOLDEN, "v1_net.prototxt"))
    assert from_text == from_path and from_text.layer[0].type == "Input"
    raw = C.read_prototxt(text, upgrade=False)
    assert len(raw.layers) == 6 and not len(raw.layer)
    solver = C.read_prototxt(os.path.join(GOLDEN, "old_solver.prototxt"), kind="solver")
    assert solver.type == "Nesterov"


def test_read_prototxt_info_keeps_dialect():
    from caffe_compat.io import read_prototxt_info
    net, info, applied = read_prototxt_info('layers { name: "p" type: POOLING pooling_param { ceil_mode: false } }')
    assert applied == ["V1ToV2"] and info.pool_rounding == {"p": pb.PoolingParameter.FLOOR}
    assert net.layer[0].pooling_param.round_mode == pb.PoolingParameter.FLOOR


def test_read_solver_fills_snapshot_prefix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my_solver.prototxt").write_text('net: "n.prototxt"\nbase_lr: 0.1\nsolver_type: ADAM\n')
    s = C.read_solver("my_solver.prototxt")
    assert (s.snapshot_prefix, s.type) == ("my_solver", "Adam")
    # read_prototxt does not: only Caffe's solver reader fills it in
    assert not C.read_prototxt("my_solver.prototxt", kind="solver").HasField("snapshot_prefix")


# ----------------------------------------------------------------- caffemodels

def _v1_caffemodel(path, rng):
    """A V1 caffemodel built with the schema: conv (2 blobs), relu, ip (2 blobs), legacy 4-D dims."""
    net = C.read_prototxt(os.path.join(GOLDEN, "v1_net.prototxt"), upgrade=False)
    weights = {"conv1": [rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)],
               "fc": [rng.standard_normal((5, 64)), rng.standard_normal(5)]}
    weights = {k: [a.astype(np.float32) for a in v] for k, v in weights.items()}
    for l in net.layers:
        for a in weights.get(l.name, []):
            b = l.blobs.add()
            legacy = (1,) * (4 - a.ndim) + a.shape  # V1-era files store num/channels/height/width
            b.num, b.channels, b.height, b.width = legacy
            b.data.extend(a.ravel().tolist())
    with open(path, "wb") as f:
        f.write(net.SerializeToString())
    return weights


def test_v1_caffemodel_upgraded_with_blobs_kept(tmp_path):
    rng = np.random.default_rng(5)
    p = str(tmp_path / "v1.caffemodel")
    weights = _v1_caffemodel(p, rng)
    with pytest.warns(UpgradeWarning):
        m = C.read_caffemodel(p)
    with m:
        assert m.format == "V1" and m.upgrades == ["V1ToV2", "Input"]
        assert [l.name for l in m.layers] == [l.name for l in m.net.layer] == \
            ["input", "conv1", "relu1", "pool1", "drop1", "fc", "prob"]
        assert [l.type for l in m.layers][:2] == ["Input", "Convolution"]
        assert sorted(m.blobs) == ["conv1", "fc"]
        for name, arrays in weights.items():
            got = m.blobs[name]
            assert len(got) == 2
            for g, a in zip(got, arrays):
                # legacy 4-D dims, as Blob::FromProto reads them
                assert g.shape == (1,) * (4 - a.ndim) + a.shape
                np.testing.assert_array_equal(g.reshape(a.shape), a)
        assert m.net.layer[1].param[1].lr_mult == 2  # blobs_lr moved too


def test_v1_caffemodel_without_upgrade(tmp_path):
    p = str(tmp_path / "v1.caffemodel")
    _v1_caffemodel(p, np.random.default_rng(1))
    with C.read_caffemodel(p, upgrade=False) as m:
        assert m.format == "V1" and m.upgrades == [] and len(m.net.layers) == 6
        assert [l.type for l in m.layers][0] == "CONVOLUTION"


def test_v0_caffemodel_padding_layer_has_no_blobs(tmp_path):
    net = C.read_prototxt(os.path.join(GOLDEN, "v0_net.prototxt"), upgrade=False)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    conv = [c for c in net.layers if c.layer.name == "conv1"][0]
    b = conv.layer.blobs.add()
    b.shape.dim.extend(w.shape)
    b.data.extend(w.ravel().tolist())
    p = tmp_path / "v0.caffemodel"
    p.write_bytes(net.SerializeToString())
    with C.read_caffemodel(str(p)) as m:
        assert m.format == "V0" and m.upgrades == ["V0ToV1", "V1ToV2", "Input"]
        assert [l.name for l in m.layers] == ["input", "conv1", "relu1", "norm1", "pool1", "fc", "prob"]
        np.testing.assert_array_equal(m.blobs["conv1"][0], w)
        assert m.net.layer[1].convolution_param.pad == [1]


def test_blobs_are_zero_copy(files):
    with C.read_caffemodel(files["caffemodel"]) as m:
        a = m.blobs["ip"][0]
        assert a.shape == (2, 3) and not a.flags.owndata and not a.flags.writeable


def test_read_net_of_caffemodel_has_structure_only(tmp_path):
    p = str(tmp_path / "v1.caffemodel")
    _v1_caffemodel(p, np.random.default_rng(9))
    net = C.read_net(p)
    assert [l.name for l in net.layer][:2] == ["input", "conv1"]
    assert all(len(l.blobs) == 0 for l in net.layer)


def test_write_prototxt_atomic(tmp_path):
    net = C.read_prototxt(os.path.join(GOLDEN, "v1_net.prototxt"))
    target = tmp_path / "out.prototxt"
    target.write_text("old content")
    C.write_prototxt(net, str(target))
    assert C.read_prototxt(str(target)) == net
    assert sorted(os.listdir(tmp_path)) == ["out.prototxt"]


def test_no_warning_for_current_files(fixtures_dir):
    with warnings.catch_warnings():
        warnings.simplefilter("error", UpgradeWarning)
        C.read_net(os.path.join(fixtures_dir, "bvlc", "bvlc_googlenet", "deploy.prototxt"))
