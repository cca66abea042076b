"""``caffekt train`` / ``caffekt plot`` on a tiny ImageData case: Caffe's snapshot names,
bit-identical resume, data fed from the layer params (checked against cv2 + NumPy),
sharded streams, logs, and typed errors before training (exit 2, file named)."""
from __future__ import annotations

import csv
import os
import sys
import types

import numpy as np
import pytest
import torch

import _train_case as case
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter
from caffe_compat import cli
from caffe_compat.io import read_caffemodel, read_solver, read_solverstate
from caffe_compat.proto import caffe_pb2
from caffe_compat import train as T
from caffe_compat.train import feeders as TF


def _train(*args) -> int:
    return cli.main(["train", *map(str, args), "--quiet"])


def _blobs(path):
    with read_caffemodel(path) as m:
        return {lb.name: [np.array(b) for b in lb.blobs] for lb in m.layers if lb.blobs}


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def solver(tmp_path):
    return case.make_case(str(tmp_path))


def test_snapshot_names_and_contents(solver, tmp_path, monkeypatch, capsys):
    # run from another directory: net, list and snapshot folder are found beside the solver
    monkeypatch.chdir(os.path.dirname(os.path.dirname(str(tmp_path))))
    assert _train(solver) == 0
    snaps = sorted(os.listdir(tmp_path / "snaps"))
    want = sorted(f"tiny_iter_{n}{ext}" for n in (4, 8, 12)
                  for ext in (".caffemodel", ".solverstate", ".solverstate.caffekt.json",
                              ".solverstate.caffekt.npz")) + ["tiny_log.csv"]
    assert snaps == want
    st = read_solverstate(str(tmp_path / "snaps" / "tiny_iter_12.solverstate"))
    assert st.iter == 12 and st.current_step == 2        # step policy: floor(11 / 5)
    assert st.learned_net == str(tmp_path / "snaps" / "tiny_iter_12.caffemodel")
    assert len(st.history) == 4                          # SGD: one history blob per learnable param
    b = _blobs(str(tmp_path / "snaps" / "tiny_iter_12.caffemodel"))
    assert [x.shape for x in b["conv"]] == [(4, 3, 3, 3), (4,)]
    assert [x.shape for x in b["ip"]] == [(3, 64), (3,)]
    assert "tiny_iter_12.caffemodel" in capsys.readouterr().out


def test_out_dir_keeps_caffe_names(solver, tmp_path):
    out = tmp_path / "elsewhere"
    assert _train(solver, "-o", out, "--max-iter", 5) == 0
    assert sorted(p for p in os.listdir(out) if not p.endswith((".json", ".npz"))) == [
        "tiny_iter_4.caffemodel", "tiny_iter_4.solverstate", "tiny_iter_5.caffemodel",
        "tiny_iter_5.solverstate", "tiny_log.csv"]
    assert os.listdir(tmp_path / "snaps") == []


def test_resume_is_bit_identical_and_log_continues(solver, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert _train(solver, "-o", a) == 0
    assert _train(solver, "-o", b, "--max-iter", 6) == 0     # snapshots 4 and 6 (after train)
    # a killed run may leave a cut row: it must not survive the resume
    with open(b / "tiny_log.csv", "a") as f:
        f.write("6,0.5,0.")
    assert _train(solver, "-o", b, "--resume", b / "tiny_iter_4.solverstate") == 0
    with open(a / "tiny_iter_12.caffemodel", "rb") as fa, open(b / "tiny_iter_12.caffemodel", "rb") as fb:
        assert fa.read() == fb.read()
    ra, rb = _rows(a / "tiny_log.csv"), _rows(b / "tiny_log.csv")
    assert [r["iter"] for r in rb] == [str(i) for i in range(12)]
    assert [r["loss"] for r in ra] == [r["loss"] for r in rb]
    assert float(rb[-1]["seconds"]) >= float(rb[3]["seconds"])


def test_resume_auto_takes_latest_complete_snapshot(solver, tmp_path):
    out = tmp_path / "o"
    assert _train(solver, "-o", out, "--max-iter", 8) == 0
    prefix = str(out / "tiny")
    assert T.latest_snapshot(prefix) == prefix + "_iter_8.solverstate"
    os.remove(prefix + "_iter_8.solverstate.caffekt.json")     # as if killed inside the snapshot
    assert T.latest_snapshot(prefix) == prefix + "_iter_4.solverstate"
    assert T.latest_snapshot(str(tmp_path / "nothing")) is None
    assert _train(solver, "-o", out, "--resume", "auto") == 0
    assert [r["iter"] for r in _rows(out / "tiny_log.csv")] == [str(i) for i in range(12)]


def test_log_columns_follow_caffe(tmp_path):
    sp = case.make_case(str(tmp_path), average_loss=3, max_iter=10)
    assert _train(sp) == 0
    rows = _rows(tmp_path / "snaps" / "tiny_log.csv")
    assert list(rows[0]) == ["iter", "loss", "smoothed_loss", "lr", "seconds", "test0/acc", "test0/loss"]
    assert [r["iter"] for r in rows] == [str(i) for i in range(11)]   # + the test after the last iteration
    train = rows[:10]
    loss = np.array([float(r["loss"]) for r in train], np.float32)
    for i, r in enumerate(train):   # Solver::UpdateSmoothedLoss = mean of the last average_loss losses
        assert float(r["smoothed_loss"]) == pytest.approx(float(loss[max(0, i - 2):i + 1].mean()), rel=1e-6)
        assert float(r["lr"]) == np.float32(0.05 * 0.5 ** (i // 5))
    tested = [r["iter"] for r in rows if r["test0/acc"]]
    assert tested == ["0", "5", "10"]
    assert rows[10]["loss"] == "" and 0 <= float(rows[10]["test0/acc"]) <= 1
    # 12 test images, 6 per batch, 2 test_iter: accuracy is a multiple of 1/12
    for r in rows:
        if r["test0/acc"]:
            assert float(r["test0/acc"]) * 12 == pytest.approx(round(float(r["test0/acc"]) * 12), abs=1e-5)


def test_tensorboard_scalars_when_available(solver, tmp_path, monkeypatch):
    calls = []

    class Writer:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir))

        def add_scalar(self, tag, value, step):
            calls.append((tag, step, value))

        def close(self):
            calls.append(("close",))

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    assert _train(solver, "--max-iter", 3) == 0
    assert calls[0] == ("init", str(tmp_path / "snaps" / "tiny") + "_tb") and calls[-1] == ("close",)
    tags = [c[:2] for c in calls[1:-1]]
    assert ("train/loss", 0) in tags and ("train/lr", 2) in tags and ("test0/acc", 0) in tags
    assert sum(1 for t in tags if t[0] == "train/loss") == 3


def test_plot_renders_png(solver, tmp_path):
    assert _train(solver) == 0
    png = tmp_path / "curves.png"
    assert cli.main(["plot", str(tmp_path / "snaps" / "tiny_log.csv"), "-o", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    import cv2
    img = cv2.imread(str(png))
    assert img.shape == (900, 800, 3)          # 3 panels (loss, lr, tests) at 100 dpi
    assert img.std() > 10                      # not a blank canvas
    from caffe_compat.plot import plot_log      # the library call behind the command
    svg = tmp_path / "curves.svg"
    assert plot_log(str(tmp_path / "snaps" / "tiny_log.csv"), str(svg)) == svg.stat().st_size
    assert svg.read_text().lstrip().startswith("<?xml")


def test_plot_refuses_non_log(tmp_path, capsys):
    bad = tmp_path / "x.csv"
    bad.write_text("a,b\n1,2\n")
    assert cli.main(["plot", str(bad), "-o", str(tmp_path / "o.png")]) == 2
    assert f"{bad}: line 1: not a caffekt training log" in capsys.readouterr().err
    assert not (tmp_path / "o.png").exists()


def test_weights_are_loaded_before_training(solver, tmp_path):
    out = tmp_path / "w"
    assert _train(solver, "-o", out, "--max-iter", 4) == 0
    w = out / "tiny_iter_4.caffemodel"
    sp = case.make_case(str(tmp_path / "ft"), base_lr=0, momentum=0, max_iter=1, snapshot=0)
    assert _train(sp, "--weights", w) == 0
    got, want = _blobs(str(tmp_path / "ft" / "snaps" / "tiny_iter_1.caffemodel")), _blobs(str(w))
    for name in ("conv", "ip"):
        for x, y in zip(got[name], want[name]):
            np.testing.assert_array_equal(x, y)       # lr 0: the weights are exactly the file's


def test_image_data_batches_match_cv2(solver, tmp_path):
    # the TEST net's feed: imread -> resize 8x8 -> centre crop 6 -> CHW * scale, wrapping around the list
    import cv2
    param = read_solver(solver)
    T.resolve_solver_paths(param, solver)
    _train_spec, tests = T.net_specs(param, solver)
    ctx = T.FeedContext("TEST", 0, base_dir=str(tmp_path))
    net, feed = T.build_net(tests[0], ctx)
    assert net.inputs == ["data", "label"]
    lines = [ln.split() for ln in open(tmp_path / "list.txt").read().split("\n") if ln]
    for k in range(3):
        got = feed()
        idx = [(6 * k + j) % 12 for j in range(6)]
        want = np.stack([cv2.resize(cv2.imread(str(tmp_path / lines[i][0])), (8, 8))[1:7, 1:7].transpose(2, 0, 1)
                         for i in idx]).astype(np.float32) * np.float32(0.00390625)
        np.testing.assert_array_equal(got["data"].numpy(), want)
        np.testing.assert_array_equal(got["label"].numpy(), np.array([lines[i][1] for i in idx], np.float32))
        assert got["label"].dtype == torch.float32


@pytest.mark.parametrize("shuffle", [False, True])
def test_sharded_stream_is_the_single_process_batch(shuffle):
    from caffe_compat.data.loader import epoch_order
    n, bs, world = 7, 3, 2
    single = iter(TF._KeyStream(n, world * bs, shuffle, 5, 0, 1, 0))
    ranks = [iter(TF._KeyStream(n, bs, shuffle, 5, r, world, 0)) for r in range(world)]
    stream = [(p // n, int(epoch_order(n, 5, p // n, shuffle)[p % n])) for p in range(5 * world * bs)]
    for t in range(5):
        whole = next(single)
        assert whole == stream[t * world * bs:(t + 1) * world * bs]       # epochs follow one another
        parts = [next(r) for r in ranks]
        assert parts[0] == whole[0::2] and parts[1] == whole[1::2]        # DataLayer::Skip: offset % N == rank


def test_feeder_registry_hook(tmp_path, monkeypatch):
    # a Jigsaw++-style Data layer goes to the built-in fork feeder (data.jps), unless a registered one claims it
    monkeypatch.setattr(TF, "_plugins_loaded", True)     # only the feeders this test registers
    net = tmp_path / "p.prototxt"
    net.write_text('name: "p"\n'
                   'layer { name: "data" type: "Data" top: "data" top: "label" '
                   'transform_param { hash_file: "h.txt" siamese_size: 2 patch_size: 4 } '
                   'data_param { source: "nowhere" batch_size: 2 backend: LMDB } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    sp = tmp_path / "s.prototxt"
    sp.write_text(case.solver_text(net=str(net), base_lr=0.1, lr_policy="fixed", max_iter=2,
                                   snapshot_prefix=str(tmp_path / "p")))
    with pytest.raises(CaffeFormatError, match=r"layer 'data' \(type Data\): data source not found"):
        T.train(str(sp), progress=False)
    seen = []

    def factory(lp, ctx):
        seen.append((lp.name, ctx.phase, ctx.seed))
        return T.ConstantFeed({"data": torch.ones(2, 6, 4, 4), "label": torch.tensor([0.0, 2.0])})

    T.register_data_feeder("test-puzzle", lambda lp: lp.transform_param.HasField("hash_file"), factory)
    try:
        res = T.train(str(sp), progress=False)
    finally:
        T.DATA_FEEDERS[:] = [e for e in T.DATA_FEEDERS if e[0] != "test-puzzle"]
    assert seen == [("data", "TRAIN", 0)] and res.iter == 2
    assert _blobs(str(tmp_path / "p_iter_2.caffemodel"))["ip"][0].shape == (3, 96)


def test_lmdb_data_layer_feeds_what_image_data_feeds(solver, tmp_path):
    # convert_imageset-style LMDB of the same PNGs: the Data layer's TEST batches equal ImageData's
    from caffe_compat.data.sources import write_lmdb
    lines = [ln.split() for ln in open(tmp_path / "list.txt").read().split("\n") if ln]
    write_lmdb(str(tmp_path / "db"), [(p, int(lab)) for p, lab in lines], resize=(8, 8),
               root_folder=str(tmp_path) + "/")
    lp = caffe_pb2.LayerParameter(name="data", type="Data", top=["data", "label"])
    lp.transform_param.crop_size, lp.transform_param.scale = 6, 0.00390625
    lp.data_param.source, lp.data_param.batch_size, lp.data_param.backend = "db", 6, lp.data_param.LMDB
    ctx = T.FeedContext("TEST", 0, base_dir=str(tmp_path), where="layer 'data'")
    lmdb_feed = T.make_feeder(lp, ctx)
    assert lmdb_feed.shapes() == {"data": (6, 3, 6, 6), "label": (6,)}
    img = caffe_pb2.LayerParameter(name="data", type="ImageData", top=["data", "label"])
    img.transform_param.CopyFrom(lp.transform_param)
    p = img.image_data_param
    p.source, p.root_folder, p.batch_size, p.new_height, p.new_width = "list.txt", str(tmp_path) + "/", 6, 8, 8
    img_feed = T.make_feeder(img, ctx)
    for _ in range(3):
        a, b = lmdb_feed(), img_feed()
        np.testing.assert_array_equal(a["data"].numpy(), b["data"].numpy())
        np.testing.assert_array_equal(a["label"].numpy(), b["label"].numpy())


def _solver_param(text):
    from caffe_compat.prototxt import parse_solver_text
    return parse_solver_text(text)


def test_net_selection_follows_init_train_and_test_nets(tmp_path):
    net = tmp_path / "n.prototxt"
    net.write_text('name: "n"\nstate { stage: "own" }\n'
                   'layer { name: "x" type: "Input" top: "x" input_param { shape { dim: 1 } } }\n')
    other = tmp_path / "t.prototxt"
    other.write_text('name: "t"\nlayer { name: "y" type: "Input" top: "y" input_param { shape { dim: 1 } } }\n')
    param = _solver_param(f'net: "{net}" test_net: "{other}" test_iter: 1 test_iter: 2 test_interval: 1 '
                          'train_state { stage: "tr" level: 3 } test_state { stage: "a" } test_state { stage: "b" }')
    train, tests = T.net_specs(param, "s.prototxt")
    assert train.phase == "TRAIN" and train.param.state.phase == caffe_pb2.TRAIN
    assert list(train.param.state.stage) == ["own", "tr"] and train.param.state.level == 3
    # explicit test nets first, then the generic net for the remaining test_iter entries
    assert [t.source for t in tests] == [f"test_net file {other}", f"net file {net}"]
    assert [list(t.param.state.stage) for t in tests] == [["a"], ["own", "b"]]
    assert all(t.param.state.phase == caffe_pb2.TEST for t in tests)
    with pytest.raises(UnsupportedParameter, match="exactly one train net"):
        T.net_specs(_solver_param(f'net: "{net}" train_net: "{net}"'), "s")
    with pytest.raises(UnsupportedParameter, match=r"test_iter must be specified for each test network \(1 test"):
        T.net_specs(_solver_param(f'train_net: "{net}" test_net: "{other}"'), "s")
    with pytest.raises(UnsupportedParameter, match="test_state must be unspecified or specified once"):
        T.net_specs(_solver_param(f'net: "{net}" test_iter: 1 test_iter: 1 test_state {{ stage: "a" }}'), "s")


# ---------------------------------------------------------------- refusals, before training


def _expect_exit2(capsys, *args, says):
    assert _train(*args) == 2
    err = capsys.readouterr().err
    for s in says:
        assert s in err, err
    return err


def _no_snapshots(d):
    return not any(p.endswith(".caffemodel") for p in os.listdir(d))


def test_missing_net_file(tmp_path, capsys):
    sp = case.make_case(str(tmp_path), net="missing.prototxt")
    os.remove(tmp_path / "net.prototxt") if (tmp_path / "net.prototxt").exists() else None
    _expect_exit2(capsys, sp, says=["missing.prototxt: net file not found (solver field 'net')"])


def test_missing_data_source(tmp_path, capsys):
    sp = case.make_case(str(tmp_path))
    os.remove(tmp_path / "list.txt")
    _expect_exit2(capsys, sp, says=["list.txt: cannot read the image list"])
    assert _no_snapshots(tmp_path / "snaps")


@pytest.mark.parametrize("field,value,says", [
    ("type", "Adagradd", "unknown solver type 'Adagradd'"),
    ("lr_policy", "cosine", "unknown lr_policy 'cosine'"),
])
def test_unknown_type_or_policy(tmp_path, capsys, field, value, says):
    sp = case.make_case(str(tmp_path), **{field: value})
    _expect_exit2(capsys, sp, says=[sp, says])


def test_mismatched_solverstate(solver, tmp_path, capsys):
    # a solverstate of a net with other params (the tiny 3-layer Input net) cannot resume this one
    other = case.make_case(str(tmp_path / "other"), batch=2)
    with open(tmp_path / "other" / "net.prototxt") as f:
        text = f.read().replace("num_output: 4", "num_output: 5")
    with open(tmp_path / "other" / "net.prototxt", "w") as f:
        f.write(text)
    assert _train(other, "--max-iter", 4) == 0
    bad = tmp_path / "other" / "snaps" / "tiny_iter_4.solverstate"
    _expect_exit2(capsys, solver, "--resume", bad, says=[str(bad), "history blob 0 has 135 values"])
    assert _no_snapshots(tmp_path / "snaps")


def test_missing_snapshot_folder(tmp_path, capsys):
    sp = case.make_case(str(tmp_path), snapshot_prefix="nowhere/tiny")
    _expect_exit2(capsys, sp, says=[f"{sp}: the folder of snapshot_prefix does not exist (nowhere)"])


def test_loader_workers_do_not_change_the_run(solver, tmp_path):
    a, b = tmp_path / "w0", tmp_path / "w2"
    assert _train(solver, "-o", a, "--max-iter", 4) == 0
    assert _train(solver, "-o", b, "--max-iter", 4, "--workers", 2) == 0
    assert (a / "tiny_iter_4.caffemodel").read_bytes() == (b / "tiny_iter_4.caffemodel").read_bytes()


def test_resume_and_weights_refused(solver, tmp_path, capsys):
    _expect_exit2(capsys, solver, "--resume", "x.solverstate", "--weights", "w.caffemodel",
                  says=["resume training or weights to fine-tune, not both"])


@pytest.mark.parametrize("layer,says", [
    ('type: "Data" data_param { source: "db" batch_size: 2 backend: LEVELDB }', "backend LEVELDB (caffe.proto's default) is not supported"),
    ('type: "Data" data_param { source: "no_such_db" batch_size: 2 }', "(caffe.proto's default) is not supported"),
    ('type: "Data" data_param { source: "no_such_db" batch_size: 2 backend: LMDB }',
     "no_such_db: net file"),
    ('type: "HDF5Data" hdf5_data_param { source: "h.txt" batch_size: 2 }', "HDF5Data needs the h5py package"),
    ('type: "MemoryData" memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 }',
     "MemoryData has no source"),
])
def test_unsupported_data_layers(tmp_path, capsys, layer, says):
    net = tmp_path / "n.prototxt"
    net.write_text('layer { name: "data" top: "data" top: "label" ' + layer + ' }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 2 } }\n'
                   'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }\n')
    sp = tmp_path / "s.prototxt"
    sp.write_text(case.solver_text(net=str(net), base_lr=0.1, lr_policy="fixed", max_iter=2))
    if "h5py" in says and TF._has_module("h5py"):
        pytest.skip("h5py is installed")
    _expect_exit2(capsys, sp, says=[f"net file {net}, layer 'data'", says])


def test_memory_data_and_input_fed_by_the_caller(tmp_path):
    net = tmp_path / "n.prototxt"
    net.write_text('layer { name: "data" type: "MemoryData" top: "data" top: "label" '
                   'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }\n'
                   'layer { name: "t" type: "Input" top: "target" input_param { shape { dim: 2 dim: 3 } } }\n'
                   'layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" '
                   'inner_product_param { num_output: 3 } }\n'
                   'layer { name: "loss" type: "EuclideanLoss" bottom: "ip" bottom: "target" top: "loss" }\n'
                   'layer { name: "sink" type: "Silence" bottom: "label" }\n')
    sp = tmp_path / "s.prototxt"
    sp.write_text(case.solver_text(net=str(net), base_lr=0.5, lr_policy="fixed", max_iter=1,
                                   snapshot_prefix=str(tmp_path / "m")))
    x = np.arange(8, dtype=np.float32).reshape(2, 1, 2, 2)
    y = np.array([[1, -2, 3], [0.5, 0, -1]], np.float32)
    T.train(str(sp), progress=False, feeds={"data": torch.from_numpy(x), "label": torch.zeros(2),
                                            "target": torch.from_numpy(y)})
    # one SGD step from zero weights (constant-0 fillers): out = 0, dL/dout = -y / N,
    # so W = lr * y^T x / N and b = lr * sum_n y / N
    w = _blobs(str(tmp_path / "m_iter_1.caffemodel"))["ip"]
    np.testing.assert_allclose(w[0], 0.5 * y.T @ x.reshape(2, 4) / 2, rtol=1e-6)
    np.testing.assert_allclose(w[1], 0.5 * y.sum(0) / 2, rtol=1e-6)
