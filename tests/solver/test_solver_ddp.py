"""Two processes under torchrun (gloo, CPU) train like one process with twice the batch, as
Caffe's multi-GPU NCCL solver does (parallel.cpp: diffs summed over ranks, scaled by
1/solver_count; DataLayer::Skip gives rank r the samples at offsets r, r+N, ...)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import _train_case as case
from caffe_compat import cli
from caffe_compat.io import read_caffemodel, read_solverstate

SOLVER = dict(dropout=False, max_iter=6, snapshot=0, test_interval=3)


def _blobs(path):
    with read_caffemodel(path) as m:
        return {lb.name: [np.array(b) for b in lb.blobs] for lb in m.layers if lb.blobs}


def _single(d, batch):
    sp = case.make_case(str(d), batch=batch, **SOLVER)
    assert cli.main(["train", sp, "--quiet"]) == 0
    return d / "snaps"


def test_two_gloo_ranks_equal_one_process_with_double_batch(tmp_path):
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    sp = case.make_case(str(tmp_path / "ddp"), batch=4, **SOLVER)
    out = tmp_path / "ddp" / "out"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "caffe_compat.cli", "train", sp, "-o", str(out), "--quiet"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("iteration 6: snapshot") == 1          # rank 0 alone reports and writes
    assert sorted(os.listdir(out)) == ["tiny_iter_6.caffemodel", "tiny_iter_6.solverstate",
                                       "tiny_iter_6.solverstate.caffekt.json",
                                       "tiny_iter_6.solverstate.caffekt.npz", "tiny_log.csv"]
    got = _blobs(str(out / "tiny_iter_6.caffemodel"))
    want = _blobs(str(_single(tmp_path / "b8", 8) / "tiny_iter_6.caffemodel"))
    half = _blobs(str(_single(tmp_path / "b4", 4) / "tiny_iter_6.caffemodel"))
    for name in ("conv", "ip"):
        for g, w, h in zip(got[name], want[name], half[name]):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
            assert np.abs(h - w).max() > 1e-4      # one rank's batch alone would not give this
    hg = read_solverstate(str(out / "tiny_iter_6.solverstate")).history
    hw = read_solverstate(str(tmp_path / "b8" / "snaps" / "tiny_iter_6.solverstate")).history
    for g, w in zip(hg, hw):                       # momentum history: the averaged gradients
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
