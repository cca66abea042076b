"""Solver parity with real Caffe (``caffe.get_solver`` in the oracle subprocess).

The tiny net of ``_tiny.py`` (shared weight, lr/decay mults, Input data) is
trained here and in real Caffe from the same initial weights; weights must
agree to 1e-5 relative after every iteration, snapshots must carry Caffe's
names, and solverstates must resume across the two implementations.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from caffe_compat.io import read_caffemodel, read_solver, read_solverstate
from caffe_compat.net import load_net
from caffe_compat.solver.solver import Solver

import _solver_tiny as _tiny
from _solver_tiny import SOLVER_TYPE_SETTINGS
from _oracle import require_oracle, run_script

pytestmark = pytest.mark.caffe

RTOL, ATOL = 1e-5, 1e-7


def _need_layers():
    from caffe_compat import layers as L
    missing = {"InnerProduct", "EuclideanLoss", "TanH", "Input"} - set(L._registry.known_types())
    if missing:
        pytest.skip(f"layers not implemented yet: {sorted(missing)}")


def _ours(solver_path, w, data, target):
    param = read_solver(solver_path)
    net = load_net(param.net, phase="TRAIN")
    with torch.no_grad():
        for name, arrays in w.items():
            for p, a in zip(net.params[name], arrays):
                p.copy_(torch.from_numpy(a))
    feed = {"data": torch.from_numpy(data), "target": torch.from_numpy(target)}
    return Solver(param, net, feed, where=solver_path)


def _weights(solver):
    return {f"{n}/{i}": p.detach().numpy().copy() for n, ps in solver.net.params.items() for i, p in enumerate(ps)}


def _run_caffe(d, cases, w, data, target):
    init = {f"{n}/{i}": a for n, arrays in w.items() for i, a in enumerate(arrays)}
    np.savez(os.path.join(d, "init.npz"), data=data, target=target, **init)
    req = {"init": os.path.join(d, "init.npz"), "out": os.path.join(d, "caffe_out.npz"), "cases": cases}
    run_script(f"REQ = {json.dumps(json.dumps(req))}\n" + _tiny.DRIVER)
    with np.load(req["out"]) as z:
        res = {}
        for k in z.files:
            case, it, blob = k.split("|")
            res.setdefault(case, {}).setdefault(int(it), {})[blob] = z[k]
    return res


def _close(ours, theirs, what):
    for k in theirs:
        np.testing.assert_allclose(ours[k], theirs[k], rtol=RTOL, atol=ATOL, err_msg=f"{what} {k}")


MAIN = dict(base_lr=0.05, lr_policy="step", gamma=0.5, stepsize=25, momentum=0.9, weight_decay=0.01,
            iter_size=2, clip_gradients=0.8, max_iter=60, snapshot=20)


def test_sgd_step_momentum_decay_itersize_clip_60_iterations(tmp_path):
    require_oracle()
    _need_layers()
    d = str(tmp_path)
    w, data, target = _tiny.initial()
    theirs_sp = _tiny.write_case(d, "caffe", **MAIN)
    ours_sp = _tiny.write_case(d, "ours", **MAIN)
    caffe = _run_caffe(d, [{"name": "main", "solver": theirs_sp, "iters": 60}], w, data, target)["main"]
    s = _ours(ours_sp, w, data, target)
    clipped = 0
    for it in range(1, 61):
        s.step(1)
        clipped += s.grad_norm is not None and s.grad_norm > 0.8
        _close(_weights(s), caffe[it], f"iteration {it}")
    assert clipped > 0, "the test should exercise gradient clipping"
    assert s.rate == pytest.approx(0.05 * 0.25)  # two step changes happened
    # snapshots: Caffe's names, at 20/40/60, weights equal to Caffe's own snapshot files
    for it in (20, 40, 60):
        for side in ("caffe", "ours"):
            for ext in (".caffemodel", ".solverstate"):
                assert os.path.isfile(os.path.join(d, side, f"snap_iter_{it}{ext}")), (side, it, ext)
        mine = read_caffemodel(os.path.join(d, "ours", f"snap_iter_{it}.caffemodel"))
        real = read_caffemodel(os.path.join(d, "caffe", f"snap_iter_{it}.caffemodel"))
        assert [l.name for l in mine.layers if l.blobs] == [l.name for l in real.layers if l.blobs]
        for a, b in zip([l for l in mine.layers if l.blobs], [l for l in real.layers if l.blobs]):
            for x, y in zip(a.blobs, b.blobs):
                np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)
        st_m = read_solverstate(os.path.join(d, "ours", f"snap_iter_{it}.solverstate"))
        st_r = read_solverstate(os.path.join(d, "caffe", f"snap_iter_{it}.solverstate"))
        assert (st_m.iter, st_m.current_step) == (st_r.iter, st_r.current_step) == (it, it // 25 if it < 60 else 2)
        assert st_m.learned_net == os.path.join(d, "ours", f"snap_iter_{it}.caffemodel")
        assert [h.shape for h in st_m.history] == [h.shape for h in st_r.history]
        assert len(st_m.history) == 5  # 6 blobs, one shared
        for x, y in zip(st_m.history, st_r.history):
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL)


SIX = SOLVER_TYPE_SETTINGS


def test_six_solver_types_20_iterations(tmp_path):
    require_oracle()
    _need_layers()
    d = str(tmp_path)
    w, data, target = _tiny.initial(1)
    cases, paths = [], {}
    for kind, kw in SIX.items():
        fields = dict(type=kind, lr_policy="multistep", gamma=0.5, stepvalue=[7, 14], weight_decay=0.005,
                      max_iter=20, **kw)
        cases.append({"name": kind, "solver": _tiny.write_case(d, "caffe_" + kind, **fields), "iters": 20})
        paths[kind] = _tiny.write_case(d, "ours_" + kind, **fields)
    caffe = _run_caffe(d, cases, w, data, target)
    for kind in SIX:
        s = _ours(paths[kind], w, data, target)
        for it in range(1, 21):
            s.step(1)
            _close(_weights(s), caffe[kind][it], f"{kind} iteration {it}")
        assert s.current_step == 2
        moved = max(np.abs(_weights(s)["ip3/0"] - w["ip3"][0]).max(), 0)
        assert moved > 1e-3, kind


@pytest.mark.parametrize("kind", ["SGD", "Adam"])
def test_solverstate_resumes_across_implementations(tmp_path, kind):
    require_oracle()
    _need_layers()
    d = str(tmp_path)
    w, data, target = _tiny.initial(2)
    fields = dict(type=kind, base_lr=0.02, lr_policy="multistep", gamma=0.5, stepvalue=[4, 8, 13],
                  momentum=0.9, weight_decay=0.005, max_iter=20, snapshot=10)
    caffe_sp = _tiny.write_case(d, "caffe", **fields)
    ours_sp = _tiny.write_case(d, "ours", **fields)
    # ours: 10 iterations, snapshot at 10
    s = _ours(ours_sp, w, data, target)
    s.step(10)
    ours_state = os.path.join(d, "ours", "snap_iter_10.solverstate")
    assert os.path.isfile(ours_state) and os.path.isfile(ours_state + ".caffekt.json")
    caffe = _run_caffe(d, [
        # real Caffe trains 20 straight (snapshotting at 10) ...
        {"name": "straight", "solver": caffe_sp, "iters": 20},
        # ... and separately resumes from OUR iteration-10 solverstate
        {"name": "from_ours", "solver": caffe_sp, "iters": 10, "restore": ours_state},
    ], w, data, target)
    _close(_weights(s), caffe["straight"][10], "iteration 10")
    s.step(10)
    _close(_weights(s), caffe["straight"][20], "ours straight, iteration 20")
    _close(caffe["from_ours"][20], caffe["straight"][20], "caffe resumed from ours, iteration 20")
    # ours resumed from CAFFE's iteration-10 solverstate (no side files there: a warning)
    r = _ours(ours_sp, _tiny.initial(3)[0], data, target)  # other weights: restore must overwrite them
    with pytest.warns(UserWarning, match="no caffekt side files"):
        r.restore(os.path.join(d, "caffe", "snap_iter_10.solverstate"))
    assert (r.iter, r.current_step) == (10, 2)
    r.step(10)
    assert r.current_step == 3
    _close(_weights(r), caffe["straight"][20], "ours resumed from caffe, iteration 20")


def test_restore_refuses_wrong_history_count(tmp_path):
    require_oracle()
    _need_layers()
    d = str(tmp_path)
    w, data, target = _tiny.initial()
    sgd = _tiny.write_case(d, "sgd", type="SGD", base_lr=0.01, lr_policy="fixed", max_iter=1, snapshot=1)
    adam = _tiny.write_case(d, "adam", type="Adam", base_lr=0.01, lr_policy="fixed", max_iter=1)
    s = _ours(sgd, w, data, target)
    s.step(1)
    a = _ours(adam, w, data, target)
    with pytest.raises(Exception, match=r"incorrect length of history blobs: the file has 5, this solver "
                                        r"needs 10 \(5 learnable params\)"):
        a.restore(os.path.join(d, "sgd", "snap_iter_1.solverstate"))
