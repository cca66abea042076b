"""The Solver loop without the oracle: bit-identical resume, Caffe's snapshot
schedule and names, atomic writes, and errors raised before training."""
from __future__ import annotations

import os
import textwrap

import pytest
import torch

from caffe_compat.errors import UnsupportedParameter
from caffe_compat.io import read_solver, read_solverstate
from caffe_compat.net import load_net
from caffe_compat.solver import snapshot as snap
from caffe_compat.solver.solver import Solver

# 1x1 convolutions stand in for InnerProduct; Dropout makes the run depend on torch's RNG
NET = textwrap.dedent("""\
    name: "loop"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 8 dim: 5 dim: 1 dim: 1 } } }
    layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 8 dim: 2 dim: 1 dim: 1 } } }
    layer { name: "c1" type: "Convolution" bottom: "data" top: "h"
      param { lr_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      convolution_param { num_output: 7 kernel_size: 1
        weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "constant" value: 0.1 } } }
    layer { name: "t1" type: "TanH" bottom: "h" top: "h" }
    layer { name: "drop" type: "Dropout" bottom: "h" top: "h" dropout_param { dropout_ratio: 0.3 } }
    layer { name: "c2" type: "Convolution" bottom: "h" top: "out"
      convolution_param { num_output: 2 kernel_size: 1 weight_filler { type: "gaussian" std: 0.5 } } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }
    """)


class Feeder:
    """Fresh random data each pass from its own generator; its position is JSON state."""

    def __init__(self):
        self.k = 0

    def __call__(self):
        g = torch.Generator().manual_seed(1000 + self.k)
        self.k += 1
        return {"data": torch.randn(8, 5, 1, 1, generator=g), "target": torch.randn(8, 2, 1, 1, generator=g)}

    def state_dict(self):
        return {"k": self.k}

    def load_state_dict(self, d):
        self.k = int(d["k"])


def _make(d, name="s", **fields):
    net = os.path.join(d, "net.prototxt")
    with open(net, "w") as f:
        f.write(NET)
    base = dict(type="Adam", base_lr=0.01, lr_policy="multistep", gamma=0.5, stepvalue=[2, 4], momentum=0.9,
                weight_decay=1e-3, iter_size=2, max_iter=6, snapshot=3, random_seed=7)
    base.update(fields)
    lines = [f'net: "{net}"', f'snapshot_prefix: "{os.path.join(d, name)}"']
    for k, v in base.items():
        vals = v if isinstance(v, list) else [v]
        lines += [f'{k}: "{x}"' if isinstance(x, str) else f"{k}: {str(x).lower()}" for x in vals]
    sp = os.path.join(d, name + ".prototxt")
    with open(sp, "w") as f:
        f.write("\n".join(lines) + "\n")
    return sp


def _solver(sp, feed=None):
    param = read_solver(sp)
    torch.manual_seed(int(param.random_seed))  # fillers draw from torch's RNG
    net = load_net(param.net, phase="TRAIN")
    return Solver(param, net, feed if feed is not None else Feeder(), where=sp)


def _w(s):
    return [p.detach().clone() for p in s.net.learnable_params()]


def test_resume_is_bit_identical(tmp_path):
    d = str(tmp_path)
    sp = _make(d)
    a = _solver(sp)
    a.solve()
    assert a.iter == 6
    # snapshots at 3 and 6 (6 is the snapshot interval, so no extra final one)
    names = sorted(f for f in os.listdir(d) if f.startswith("s_iter_"))
    assert names == ["s_iter_3.caffemodel", "s_iter_3.solverstate", "s_iter_3.solverstate.caffekt.json",
                     "s_iter_3.solverstate.caffekt.npz", "s_iter_6.caffemodel", "s_iter_6.solverstate",
                     "s_iter_6.solverstate.caffekt.json", "s_iter_6.solverstate.caffekt.npz"]
    st = read_solverstate(os.path.join(d, "s_iter_3.solverstate"))
    assert (st.iter, st.current_step, len(st.history)) == (3, 1, 8)  # Adam: 4 params -> 8 blobs
    # a fresh solver with other weights and RNG, resumed at 3, ends bit-identical
    torch.manual_seed(99)
    b = _solver(sp)
    torch.manual_seed(12345)
    b.solve(os.path.join(d, "s_iter_3.solverstate"))
    assert b.iter == 6 and b.feed.k == a.feed.k == 12
    for x, y in zip(_w(a), _w(b)):
        assert torch.equal(x, y)
    assert b.smoothed_loss == a.smoothed_loss


def test_resume_without_side_files_differs_and_warns(tmp_path):
    d = str(tmp_path)
    sp = _make(d)
    a = _solver(sp)
    a.solve()
    state = os.path.join(d, "s_iter_3.solverstate")
    os.remove(state + snap.SIDE_JSON)
    b = _solver(sp)
    with pytest.warns(UserWarning, match="no caffekt side files"):
        b.solve(state)
    assert b.iter == 6
    # the feeder restarted at 0 and dropout masks differ: not the same run
    assert any(not torch.equal(x, y) for x, y in zip(_w(a), _w(b)))


def test_snapshot_after_train_and_schedule(tmp_path):
    d = str(tmp_path)
    s = _solver(_make(d, max_iter=5, snapshot=2, type="SGD"))
    s.solve()
    got = sorted(f for f in os.listdir(d) if f.endswith(".caffemodel"))
    assert got == ["s_iter_2.caffemodel", "s_iter_4.caffemodel", "s_iter_5.caffemodel"]
    d2 = os.path.join(d, "off")
    os.makedirs(d2)
    s = _solver(_make(d2, max_iter=5, snapshot=2, type="SGD", snapshot_after_train=False))
    s.solve()
    assert sorted(f for f in os.listdir(d2) if f.endswith(".caffemodel")) == ["s_iter_2.caffemodel",
                                                                               "s_iter_4.caffemodel"]


def test_killed_snapshot_leaves_no_partial_file(tmp_path, monkeypatch):
    d = str(tmp_path)
    s = _solver(_make(d, max_iter=1, snapshot=0, snapshot_after_train=False))
    s.step(1)
    import caffe_compat.binary as binary
    real = binary.blobs._write_blob_body

    def dying(f, b):
        f.write(b"\0" * 16)
        raise KeyboardInterrupt  # what a kill mid-write looks like to the writer
    monkeypatch.setattr(binary.blobs, "_write_blob_body", dying)
    with pytest.raises(KeyboardInterrupt):
        s.snapshot()
    monkeypatch.setattr(binary.blobs, "_write_blob_body", real)
    assert [f for f in os.listdir(d) if "_iter_" in f or f.endswith(".tmp")] == []


def test_average_loss_smoothing(tmp_path):
    s = _solver(_make(str(tmp_path), average_loss=3, type="SGD", max_iter=5, snapshot=0))
    seen = []
    s.callbacks.append(lambda solver, loss: seen.append((loss, solver.smoothed_loss)))
    s.step(5)
    losses = [l for l, _ in seen]
    for i, (_, sm) in enumerate(seen):
        window = losses[max(0, i - 2): i + 1]
        assert sm == pytest.approx(sum(window) / len(window), rel=1e-5)


@pytest.mark.parametrize("fields,msg", [
    (dict(lr_policy="cosine"), r"s.prototxt: unknown lr_policy 'cosine'"),
    (dict(type="AdaGrad", momentum=0.9), "momentum cannot be used with AdaGrad"),
    (dict(average_loss=0), "average_loss should be >= 1, got 0"),
    (dict(snapshot_format=0), "snapshot_format HDF5 is not supported"),
])
def test_bad_settings_refused_before_training(tmp_path, fields, msg):
    with pytest.raises(UnsupportedParameter, match=msg):
        _solver(_make(str(tmp_path), **fields))


def test_snapshot_filename():
    assert snap.snapshot_filename("out/lenet", 10000, ".solverstate") == "out/lenet_iter_10000.solverstate"
