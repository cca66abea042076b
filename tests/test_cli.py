"""The ``caffekt`` console script: help, inspect, upgrade, exit codes."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from caffe_compat import cli
from caffe_compat.proto import caffe_pb2 as pb

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "upgrade")


def caffekt(*argv):
    """Run the installed console script (falls back to ``python -m caffe_compat.cli``)."""
    exe = shutil.which("caffekt")
    cmd = [exe, *argv] if exe else [sys.executable, "-m", "caffe_compat.cli", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_help_lists_subcommands():
    r = caffekt("--help")
    assert r.returncode == 0
    assert "inspect" in r.stdout and "upgrade" in r.stdout


@pytest.mark.parametrize("name", sorted(cli.commands()))
def test_every_subcommand_has_help(name, capsys):
    with pytest.raises(SystemExit) as ei:
        cli.main([name, "--help"])
    assert ei.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: caffekt {name}")


def inspect_json(path, *extra):
    r = caffekt("inspect", "--json", *extra, path)
    assert r.returncode == 0, r.stderr
    assert len(r.stdout.strip().splitlines()) == 1  # one JSON object
    return json.loads(r.stdout)


def test_inspect_alexnet_deploy(fixtures_dir):
    path = os.path.join(fixtures_dir, "bvlc", "bvlc_alexnet", "deploy.prototxt")
    with open(path) as f:
        n_layers = len(re.findall(r"^layer \{", f.read(), re.M))
    d = inspect_json(path, "--no-shapes")
    assert {"kind", "version", "layers", "num_params"} <= set(d)
    assert (d["kind"], d["version"], d["upgrades"]) == ("net", "V2", [])
    assert len(d["layers"]) == n_layers == 24
    assert d["layers"][1] == {"name": "conv1", "type": "Convolution", "bottom": ["data"], "top": ["conv1"],
                              "blobs": []}
    assert d["layers"][-1]["type"] == "Softmax"


def test_inspect_jigsaw_reports_fork_fields(fixtures_dir):
    d = inspect_json(os.path.join(fixtures_dir, "jigsaw", "train_val_cfn_jps++.prototxt"), "--no-shapes")
    assert len(d["layers"]) == 195
    assert d["fork_fields"]["LayerParameter.merge_data_param"] == ["merge"]
    assert d["fork_fields"]["TransformationParameter.hash_file"] == ["data_0"]
    assert set(d["fork_fields"]["DataParameter.rand_jump"]) == {"data_0", "data_r"}


def test_inspect_fast_rcnn_reports_roi_pooling(fixtures_dir):
    d = inspect_json(os.path.join(fixtures_dir, "fast-rcnn", "VGG16", "test.prototxt"), "--no-shapes")
    assert d["fork_fields"]["LayerParameter.roi_pooling_param"] == ["roi_pool5"]
    assert d["upgrades"] == ["Input"] and d["layers"][0]["type"] == "Input"
    assert len(d["layers"]) == 40 + 1  # the input fields became one Input layer


def test_inspect_legacy_net_and_dialect():
    d = inspect_json(os.path.join(GOLDEN, "v0_net.prototxt"), "--no-shapes")
    assert d["version"] == "V0" and d["upgrades"] == ["V0ToV1", "V1ToV2", "Input"]
    assert [l["name"] for l in d["layers"]] == ["input", "conv1", "relu1", "norm1", "pool1", "fc", "prob"]


def test_inspect_caffemodel(tmp_path):
    from caffe_compat.io import write_caffemodel
    net = pb.NetParameter(name="m")
    net.layer.add(name="conv", type="Convolution", bottom=["x"], top=["c"])
    p = net.layer.add(name="pool", type="Pooling", bottom=["c"], top=["p"])
    p.pooling_param.round_mode = pb.PoolingParameter.FLOOR
    shapes = [(8, 3, 5, 5), (8,)]
    path = str(tmp_path / "m.caffemodel")
    write_caffemodel(path, net, {"conv": [np.ones(s, np.float32) for s in shapes]})
    d = inspect_json(path)
    assert (d["kind"], d["version"]) == ("caffemodel", "V2")
    assert d["layers"][0]["blobs"] == [list(s) for s in shapes]
    assert d["num_params"] == 8 * 3 * 5 * 5 + 8
    assert d["dialect"]["pooling_field13"] == {"pool": 1}
    human = caffekt("inspect", path)
    assert human.returncode == 0 and "8x3x5x5 8" in human.stdout and "parameters: 608" in human.stdout


def test_inspect_solver_and_solverstate(tmp_path, fixtures_dir):
    d = inspect_json(os.path.join(GOLDEN, "old_solver.prototxt"))
    assert d["kind"] == "solver" and d["upgrades"] == ["SolverType"]
    assert d["fields"]["solver_type"] == "NESTEROV" and d["fields"]["base_lr"] == 0.01
    from caffe_compat import binary
    st = tmp_path / "x.solverstate"
    binary.write_solverstate(str(st), binary.SolverState(iter=12, learned_net="x.caffemodel",
                                                         history=[np.zeros((2, 3), np.float32)]))
    d = inspect_json(str(st))
    assert (d["kind"], d["iter"], d["history"], d["num_params"]) == ("solverstate", 12, [[2, 3]], 6)


def test_inspect_mean_file(tmp_path):
    from caffe_compat.io import write_blobproto
    mean = np.stack([np.full((4, 4), v, np.float32) for v in (104.0, 117.0, 123.0)])[None]
    path = str(tmp_path / "mean.binaryproto")
    write_blobproto(path, mean)
    d = inspect_json(path)
    assert d["kind"] == "binaryproto" and d["shape"] == [1, 3, 4, 4]
    assert d["channel_means"] == [104.0, 117.0, 123.0]


@pytest.mark.parametrize("command", ["inspect", "upgrade"])
def test_garbage_input_exits_2_with_one_line(tmp_path, command):
    bad = tmp_path / "garbage.bin"
    bad.write_bytes(bytes(range(256)) * 4)
    args = [command, str(bad)] + (["-o", str(tmp_path / "out")] if command == "upgrade" else [])
    r = caffekt(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"caffekt {command}: error: {bad}")
    assert not (tmp_path / "out").exists()


def test_broken_prototxt_exits_2_naming_line(tmp_path):
    p = tmp_path / "broken.prototxt"
    p.write_text('layer {\n  name: "a"\n  type: "ReLU"\n  bottom: "x"\n  botom: "y"\n}\n')
    r = caffekt("inspect", str(p))
    assert r.returncode == 2
    assert f"{p}: line 5:3: unknown field 'botom'" in r.stderr and "did you mean 'bottom'" in r.stderr


def test_missing_file_exits_2(tmp_path):
    r = caffekt("inspect", str(tmp_path / "nope.prototxt"))
    assert r.returncode == 2 and "No such file" in r.stderr


def test_upgrade_text_round_trip(tmp_path):
    out = tmp_path / "v2.prototxt"
    r = caffekt("upgrade", os.path.join(GOLDEN, "v1_net.prototxt"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert "net upgraded (V1ToV2, Input)" in r.stdout
    from caffe_compat.prototxt import parse_net_text
    with open(os.path.join(GOLDEN, "v1_net.expected.prototxt")) as f:
        expected = parse_net_text(f.read())[0]
    assert parse_net_text(out.read_text())[0] == expected
    again = tmp_path / "v2b.prototxt"
    r = caffekt("upgrade", str(out), "-o", str(again))
    assert r.returncode == 0 and "already in the current format" in r.stdout
    assert again.read_text() == out.read_text()


def test_upgrade_solver(tmp_path):
    out = tmp_path / "solver.prototxt"
    r = caffekt("upgrade", os.path.join(GOLDEN, "old_solver.prototxt"), "-o", str(out))
    assert r.returncode == 0 and "solver upgraded (SolverType)" in r.stdout
    text = out.read_text()
    assert 'type: "Nesterov"' in text and "solver_type" not in text
    assert 'snapshot_prefix: "snapshots/tiny"' in text


def test_upgrade_caffemodel_round_trip(tmp_path):
    from caffe_compat.io import read_caffemodel
    from test_io import _v1_caffemodel
    src = str(tmp_path / "v1.caffemodel")
    weights = _v1_caffemodel(src, np.random.default_rng(4))
    dst = str(tmp_path / "v2.caffemodel")
    r = caffekt("upgrade", src, "-o", dst)
    assert r.returncode == 0, r.stderr
    assert "caffemodel upgraded (V1ToV2, Input)" in r.stdout
    with read_caffemodel(dst) as m:
        assert m.format == "V2" and m.upgrades == []
        assert [l.type for l in m.net.layer][:2] == ["Input", "Convolution"]
        for name, arrays in weights.items():
            for g, a in zip(m.blobs[name], arrays):
                np.testing.assert_array_equal(g.reshape(a.shape), a)


def test_upgrade_refuses_solverstate(tmp_path):
    from caffe_compat import binary
    st = tmp_path / "x.solverstate"
    binary.write_solverstate(str(st), binary.SolverState(iter=1, learned_net="m"))
    r = caffekt("upgrade", str(st), "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "holds a solverstate file" in r.stderr


def test_inspect_infers_prototxt_blob_shapes(tmp_path):
    pytest.importorskip("caffe_compat.net")
    p = tmp_path / "c.prototxt"
    p.write_text(
        'layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'
        'layer { name: "c" type: "Convolution" bottom: "data" top: "c"\n'
        '        convolution_param { num_output: 6 kernel_size: 3 group: 3 } }\n'
        'layer { name: "d" type: "Deconvolution" bottom: "c" top: "d"\n'
        '        convolution_param { num_output: 4 kernel_size: 2 bias_term: false } }\n')
    d = inspect_json(str(p))
    if not d["shapes_inferred"]:
        pytest.skip(f"net builder cannot build it yet: {d.get('shapes_note')}")
    # Caffe: conv weight (num_output, C_in/group, kh, kw); deconv weight (C_in, num_output/group, kh, kw)
    assert [l["blobs"] for l in d["layers"]] == [[], [[6, 1, 3, 3], [6]], [[6, 4, 2, 2]]]
    assert d["num_params"] == 6 * 9 + 6 + 6 * 4 * 4
