"""The README a newcomer follows: its two commands are CI's, its recipes run, its layer table is the registry's.

Recipes are the fenced blocks after ``<!-- readme-test: NAME -->`` markers.
They run verbatim in a scratch folder that holds small stand-ins of the files
they name (a Jigsaw tower caffemodel with filler weights, a tiny solver on
photo crops) and a link to ``prototxt/``; ``caffekt`` there is this
interpreter's ``python -m caffe_compat.cli``.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

README = os.path.join(REPO, "README.md")
CI_RUN = os.path.join(REPO, ".ci", "run")


def _readme() -> str:
    with open(README, encoding="utf-8") as f:
        return f.read()


def block(name: str) -> str:
    """The fenced block right after ``<!-- readme-test: name -->``."""
    m = re.search(r"<!-- readme-test: " + re.escape(name) + r" -->\s*```\w*\n(.*?)```", _readme(), re.S)
    assert m, f"README has no block marked readme-test: {name}"
    return m.group(1)


def commands(name: str):
    return [l.strip() for l in block(name).splitlines() if l.strip() and not l.strip().startswith("#")]


def pip_steps(cmd: str):
    """``python -m pip install X`` / ``"$PY" -m pip install X`` -> [X, ...], quoting removed."""
    steps = []
    for part in re.split(r"&&|\n", cmd):
        words = shlex.split(part)
        if "pip" in words and "install" in words:
            steps.append(" ".join(words[words.index("install") + 1:]))
    return steps


def _ci_text() -> str:
    with open(CI_RUN, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------ the two commands


def test_main_job_command_is_the_demo():
    assert commands("demo-command") == [
        "sudo apt-get install -y dataset-fashion-mnist && python -m pip install torch==2.13.0 && "
        "python -m pip install -e . && caffekt demo"]
    # the data package the demo uses is the one CI installs
    assert "apt-get install -y -qq --no-install-recommends dataset-fashion-mnist" in _ci_text()


def test_test_command_is_ci_and_fast_tier_installs_what_ci_installs():
    assert commands("ci-command") == ["bash .ci/run"]
    ci = _ci_text()
    ci_pips = [s for line in ci.splitlines() if line.startswith("stage ") for s in pip_steps(line)]
    assert ci_pips == ["torch==2.13.0", "-e .[test]"]
    fast = commands("fast-tier")
    assert len(fast) == 1
    assert pip_steps(fast[0]) == ci_pips
    assert fast[0].endswith("&& python -m pytest") and '"$PY" -m pytest' in ci
    # the demo installs the same pinned torch first, then the package without test extras
    assert pip_steps(commands("demo-command")[0]) == ["torch==2.13.0", "-e ."]


def test_pip_steps_parser_sees_quoting_and_order():
    assert pip_steps('"$PY" -m pip install -e ".[test]"') == ["-e .[test]"]
    assert pip_steps("python -m pip install a==1 && python -m pip install b && x") == ["a==1", "b"]


def test_demo_help_lists_its_options():
    proc = subprocess.run([sys.executable, "-m", "caffe_compat.cli", "demo", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0
    for opt in ("--quick", "-o DIR, --output DIR", "--seed", "--cache", "--quiet"):
        assert opt in proc.stdout


# ------------------------------------------------------------------ the recipes


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A folder with the recipes' stand-in files, and a ``caffekt`` on PATH bound to this interpreter."""
    import torch

    import caffe_compat as cc
    from caffekt.kt.pipeline import build_photo_set
    from caffekt.prototxt import path

    d = tmp_path_factory.mktemp("readme")
    os.symlink(os.path.join(REPO, "prototxt"), d / "prototxt")
    torch.manual_seed(0)
    cc.save_caffemodel(cc.load_net(path("jigsaw_cfn_tower_s2_deploy.prototxt")), str(d / "jps_alexnet.caffemodel"))
    # a 2-tower stand-in of the authors' 9-tower snapshot: tower t's layers named conv1_s<t> ... fc6_s<t>
    from caffe_compat.binary import read_caffemodel
    from caffe_compat.proto import caffe_pb2
    snap = caffe_pb2.NetParameter(name="CaffeNet")
    with read_caffemodel(str(d / "jps_alexnet.caffemodel")) as m:
        for t in (1, 2):
            for lb in m.layers:
                if len(lb.blobs):
                    lp = snap.layer.add(name=f"{lb.name}_s{t}", type=lb.type)
                    for a in lb.blobs:
                        b = lp.blobs.add()
                        b.shape.dim.extend(a.shape)
                        b.data.extend(np.asarray(a, dtype=np.float32).ravel().tolist())
    (d / "caffenet_train_iter_350000.caffemodel").write_bytes(snap.SerializeToString())
    build_photo_set(str(d / "photos"), crops_per_photo=4, size=32)
    (d / "net.prototxt").write_text(
        'name: "mynet"\n'
        'layer { name: "data" type: "ImageData" top: "data" top: "label"\n'
        '  image_data_param { source: "photos/train.txt" root_folder: "photos/" batch_size: 4 shuffle: true }\n'
        '  transform_param { mean_value: 104 mean_value: 117 mean_value: 123 } }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"\n'
        '  inner_product_param { num_output: 8 weight_filler { type: "xavier" } } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')
    (d / "solver.prototxt").write_text('net: "net.prototxt"\nbase_lr: 0.001\nlr_policy: "fixed"\nmomentum: 0.9\n'
                                       'max_iter: 4\nsnapshot: 4\nsnapshot_prefix: "mynet"\nsolver_mode: CPU\n')
    bindir = d / "_bin"
    bindir.mkdir()
    shim = bindir / "caffekt"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m caffe_compat.cli "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return d, env


def run_block(name: str, scratch, timeout=600):
    d, env = scratch
    outs = []
    for cmd in commands(name):
        proc = subprocess.run(["bash", "-c", cmd], cwd=str(d), env=env, capture_output=True, text=True,
                              timeout=timeout)
        assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        outs.append(proc.stdout)
    return outs


def test_recipe_load(scratch):
    d, env = scratch
    proc = subprocess.run([sys.executable, "-c", block("load")], cwd=str(d), env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "cannot copy param 0 weights from layer 'fc6'" in out and "Hint:" in out
    assert "alexnet_s4_conv_deploy" in out and "strict=False" in out
    assert "5 layer(s) copied" in out and "not copied (mismatch): fc6" in out
    assert out.strip().splitlines()[-1] == "torch.Size([1, 256, 13, 13])"


def test_recipe_inspect(scratch):
    (out,) = run_block("inspect", scratch)
    assert "kind:     caffemodel" in out and "jigsaw_cfn_tower_s2" in out and "96x3x11x11" in out


def test_recipe_parity(scratch):
    onnx_out, cv_out = run_block("parity", scratch)
    for out in (onnx_out, cv_out):
        assert "OK: 13 blobs agree within float32 rounding" in out


def test_recipe_export(scratch):
    d, _ = scratch
    frcnn, onnx_out = run_block("export", scratch)
    assert "copied (5): conv1, conv2, conv3, conv4, conv5" in frcnn
    assert re.search(r"^initialised fc6: weights gaussian\(mean 0, std 0\.001\), bias constant 0\.1 "
                     r"\(Jigsaw transfer recipe\)", frcnn, re.M)
    from caffe_compat.net import load_net
    from caffe_compat.weights import copy_trained_layers
    from caffekt.converters.fast_rcnn import frcnn_target
    rep = copy_trained_layers(load_net(frcnn_target("caffenet")), str(d / "frcnn_caffenet_init.caffemodel"))
    assert rep.untouched == [] and rep.mismatched == []
    assert onnx_out.strip().endswith("OK: onnxruntime agrees within float32 rounding") and (d / "jps_tower.onnx").stat().st_size > 1_000_000


def test_recipe_train(scratch):
    d, _ = scratch
    first, resumed, plot = run_block("train", scratch)
    assert "iteration 4: snapshot snapshots/mynet_iter_4.caffemodel" in first
    assert "iteration 8: snapshot snapshots/mynet_iter_8.caffemodel" in resumed
    from caffe_compat.logs import read_log
    assert read_log(str(d / "snapshots" / "mynet_log.csv"))["iter"].tolist() == list(range(8))
    assert "wrote curves.png" in plot


def test_recipe_kt(scratch):
    listing, plan = run_block("kt", scratch)
    for name in ("jigsawpp_alexnet_cc_small", "hog_cc_small", "jigsawpp_vgg16_cc", "context_cc"):
        assert re.search(rf"^{name}\s", listing, re.M)
    assert [l.split()[0] for l in plan.splitlines()] == ["[jigsaw]", "[features]", "[cluster]", "[train-cc]",
                                                         "[probe]"]


def test_full_scale_recipe_flags_exist():
    """The torchrun recipe's flags are real (the multi-process runs themselves are tested in tests/solver, tests/kt)."""
    for argv, flags in ((["kt", "jigsaw", "train", "--help"], ("--images", "--perms", "-o DIR, --output DIR")),
                        (["kt", "train-cc", "--help"], ("--labels", "-o DIR, --output DIR")),
                        (["train", "--help"], ("-o DIR, --output DIR", "--resume", "--max-iter"))):
        proc = subprocess.run([sys.executable, "-m", "caffe_compat.cli", *argv], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0
        for f in flags:
            assert f in proc.stdout, (argv, f)


# ------------------------------------------------------------------ the layer table


def _gen():
    spec = importlib.util.spec_from_file_location("gen_layer_table", os.path.join(REPO, "tools", "gen_layer_table.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_layer_table_is_the_registry():
    gen = _gen()
    text = _readme()
    assert text == gen.readme_with_table(text, gen.readme_table()), \
        "README's layer table is stale: run python tools/gen_layer_table.py"
    with open(os.path.join(REPO, "docs", "layers.md"), encoding="utf-8") as f:
        assert f.read() == gen.layers_md(), "docs/layers.md is stale: run python tools/gen_layer_table.py"
    from caffe_compat.layers._registry import known_types
    rows = re.findall(r"^\| `(\w+)` \|", text.split(gen.START)[1].split(gen.END)[0], re.M)
    assert rows == [t for t, _ in gen.builtin_layers()] and set(rows) <= set(known_types())
    assert {"Convolution", "Pooling", "LRN", "MergeData", "ROIPooling", "SmoothL1Loss", "LSTM"} <= set(rows)


def test_layer_table_changes_when_the_registry_does(monkeypatch):
    gen = _gen()
    from caffe_compat.layers import _registry

    class Fake:
        """Fake: y = x (a stand-in built-in)."""
        bottom_arity, top_arity = 1, 1
    Fake.__module__ = "caffe_compat.layers.fake"
    monkeypatch.setitem(sys.modules, "caffe_compat.layers.fake", type(sys)("caffe_compat.layers.fake"))
    monkeypatch.setitem(_registry._REGISTRY, "Fake", Fake)
    text = _readme()
    assert "| `Fake` | `fake.py` | 1 | 1 |" in gen.readme_table()
    assert gen.readme_with_table(text, gen.readme_table()) != text
    # a plugin registered from elsewhere is not a built-in and stays out
    Fake.__module__ = "myplugin"
    assert "`Fake`" not in gen.readme_table()


def test_layer_table_descriptions_come_from_the_docstrings():
    gen = _gen()
    md = gen.layers_md()
    assert re.search(r"^\| `ReLU` \| `caffe_compat\.layers\.neuron\.ReLU` \| 1 \| 1 \| relu_layer\.cpp \| "
                     r"ReLU: y = max\(x,0\) \+ slope\*min\(x,0\)", md, re.M)
    assert re.search(r"^\| `EuclideanLoss` .*\| euclidean_loss_layer\.cpp \| EuclideanLoss: loss = sum "
                     r"\(a - b\)\^2 / N / 2\. \|$", md, re.M)


def test_gen_refuses_a_readme_without_markers():
    gen = _gen()
    with pytest.raises(ValueError, match="no layer-table markers"):
        gen.readme_with_table("# no table here\n", "x")


# ------------------------------------------------------------------ the reduced-scale reproduction


def _experiments():
    spec = importlib.util.spec_from_file_location("experiments_run", os.path.join(REPO, "experiments", "run.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_results_file_comes_from_the_readme_command():
    with open(os.path.join(REPO, "docs", "results.md"), encoding="utf-8") as f:
        res = f.read()
    m = re.search(r"^Produced by `(python experiments/run\.py [^`]+)`", res, re.M)
    assert m, "docs/results.md does not name the command that made it"
    assert f"`{m.group(1)}`" in _readme()
    assert "--seeds 0 1 2" in m.group(1) and "--scale small" in m.group(1)
    _experiments()   # puts experiments/ on the path
    from report import ROWS
    for model in ROWS:
        row = re.search(r"^\| " + re.escape(model) + r" \|(.*)\|$", res, re.M)
        assert row, model
        cells = [c.strip() for c in row.group(1).split("|")]
        filled = cells[-1:] if model == "raw pixels" else cells
        assert len(cells) == 6 and all(re.fullmatch(r"\d+\.\d ± \d+\.\d", c) for c in filled), cells
    assert "](results_probes.png)" in res and os.path.isfile(os.path.join(REPO, "docs", "results_probes.png"))


def _fake_summaries(rows):
    summaries = []
    for seed, base in ((0, 0.50), (1, 0.60), (2, 0.70)):
        probes = {m: ({"pixels": base} if m == "raw pixels" else {f"conv{i}": base + 0.01 * (i - 1)
                                                                  for i in range(1, 6)}) for m in rows}
        summaries.append({"seed": seed, "probes": probes,
                          "clusters": {k: {"nmi": 0.5, "purity": 0.5, "empty": 0} for k in ("alexnet", "vgg", "hog")},
                          "losses": {k: {"first": 3.0, "last10": 2.0} for k in
                                     ("jigsaw-alexnet", "jigsaw-vgg", "cc-alexnet", "cc-vgg", "cc-hog",
                                      "cc-supervised")},
                          "puzzles": {k: {"accuracy": 0.9, "puzzles": 20, "chance": 0.1, "permutations": 10}
                                      for k in ("alexnet", "vgg")},
                          "seconds": {"fashion-mnist": 1.0}})
    return summaries


def test_results_tables_are_mean_and_sample_std():
    ex = _experiments()
    from report import ROWS, results_markdown
    sc = ex.load_scale("tiny")
    data = {"seed": 0, "size": 64, "class_counts": {"train": [30] * 10, "test": [50] * 10}}
    md = results_markdown(sc, _fake_summaries(ROWS), "python experiments/run.py --scale tiny --seeds 0 1 2", 60.0,
                          data, "x.png", "versions", 0.0)
    # conv1: 50, 60, 70 -> 60.0 ± 10.0 (sample std); best layer is conv5: 54, 64, 74 -> 64.0 ± 10.0
    assert "| random init | 60.0 ± 10.0 | 61.0 ± 10.0 | 62.0 ± 10.0 | 63.0 ± 10.0 | 64.0 ± 10.0 | 64.0 ± 10.0 |" in md
    assert "| raw pixels |  |  |  |  |  | 60.0 ± 10.0 |" in md
    # equal rows: every claim is within noise (claim 2: "keeps")
    assert md.count("**within noise**") == 3 and md.count("**reproduced (within noise: keeps)**") == 1
    assert "all 500 test images" in md


def test_seed_config_is_a_valid_pipeline():
    ex = _experiments()
    import tempfile
    from caffekt.kt import pipeline
    with tempfile.TemporaryDirectory() as d:
        cfg = ex.seed_config(ex.load_scale("tiny"), 3, os.path.join(d, "w"), os.path.join(d, "data"))
        names = [s["name"] for s in cfg["stages"]]
        assert names == ["fashion-mnist", "jigsaw-alexnet", "jigsaw-vgg", "features-alexnet", "cluster-alexnet",
                         "cc-alexnet", "features-vgg", "cluster-vgg", "cc-vgg", "features-hog", "cluster-hog",
                         "cc-hog", "cc-supervised", "probe", "probe-teacher"]
        assert all(s["kind"] in pipeline.STAGES for s in cfg["stages"])
        assert {s.get("seed") for s in cfg["stages"] if s["kind"] in ("jigsaw", "cluster")} == {3}
        # no label reaches pretext, features or clustering: they read the unlabelled list
        for s in cfg["stages"]:
            if s["kind"] in ("jigsaw", "features", "hog"):
                assert s["images"].endswith("unlabelled.txt"), s["name"]
        cc = [s for s in cfg["stages"] if s["kind"] == "train-cc"]
        assert [s["labels"].endswith("train.txt") for s in cc] == [False, False, False, True]   # only the bound
        assert all(s["val"].endswith("test.txt") for s in cfg["stages"] if s["kind"] == "probe")
        assert pipeline.plan(cfg) == 0
        assert pipeline.run(cfg, only_plan=True, log=lambda _l: None) == names


def test_detect_recipe_commands_parse():
    """The VOC07 recipe needs VOC; its commands must parse (the scene-set e2e test runs the same steps small)."""
    from caffe_compat.cli import build_parser
    from caffekt.kt.detect.config import load
    cmds = commands("detect-recipe")
    assert [c.split()[1:3] for c in cmds] == [["export", "frcnn"], ["detect", "proposals"], ["detect", "train"],
                                            ["detect", "test"], ["detect", "eval"]]
    parser = build_parser()
    for cmd in cmds:
        args = parser.parse_args(shlex.split(cmd)[1:])
        if getattr(args, "cfg", None):
            cfg = load(args.cfg)
            assert cfg["SOLVER"]["max_iter"] == 150000 and cfg["TRAIN"]["MAX_SIZE"] == 2000
    # the test step reads the snapshot the train step writes under the paper config's SNAPSHOT_INFIX
    assert "frcnn_out/caffenet_fast_rcnn_multiscale_iter_150000.caffemodel" in cmds[3]
