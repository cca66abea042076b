"""The six update rules vs a float64 NumPy port of Caffe's C++ (tests/solver/_numpy_port.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_compat.errors import UnsupportedParameter
from caffe_compat.solver import updates
from caffe_compat.solver.lr_policy import learning_rate
from caffe_compat.solver.settings import SolverSettings

from _solver_numpy_port import apply_update as np_apply, caffe_rate
from _solver_tiny import SOLVER_TYPE_SETTINGS

SHAPES = [(6, 5), (6,), (3, 2, 2, 2), (4, 6)]
LR_MULTS = [1.0, 2.0, 1.0, 0.5]
DECAY_MULTS = [1.0, 0.0, 1.0, 2.0]

CFG = SOLVER_TYPE_SETTINGS


def _problem(seed=0):
    rng = np.random.default_rng(seed)
    w0 = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    targets = [rng.standard_normal(s) for s in SHAPES]
    scales = [rng.uniform(0.5, 2.0, s) for s in SHAPES]
    noise = [[rng.standard_normal(s) * 0.1 for s in SHAPES] for _ in range(40)]
    return w0, targets, scales, noise


def run_both(kind, iters=20, iter_size=2, clip=-1.0, reg="L2", policy="step", **extra):
    w0, targets, scales, noise = _problem()
    cfg = dict(CFG[kind], weight_decay=5e-3, iter_size=iter_size, clip_gradients=clip,
               regularization_type=reg, **extra)
    sched = dict(lr_policy=policy, gamma=0.5, stepsize=8, power=1.0, stepvalue=(5, 12), max_iter=40)
    s = SolverSettings(type=kind, **{k: v for k, v in cfg.items()}, **sched)

    def grads_at(w, k, dtype):
        out = []
        for i in range(len(w)):
            g = np.zeros(SHAPES[i], dtype)
            for j in range(iter_size):  # diffs accumulate (sum) over iter_size passes
                g = g + (scales[i].astype(dtype) * (w[i] - targets[i].astype(dtype))
                         + noise[(2 * k + j) % 40][i].astype(dtype)).astype(dtype)
            out.append(g.astype(dtype))
        return out

    # ours, float32 torch
    P = [torch.tensor(w) for w in w0]
    H = updates.init_history(P, kind)
    cur = 0
    for it in range(iters):
        G = [torch.tensor(g) for g in grads_at([p.numpy() for p in P], it, np.float32)]
        rate, cur = learning_rate(s, it, cur)
        updates.apply_update(P, G, H, s, rate, LR_MULTS, DECAY_MULTS, it)
    # reference, float64 numpy
    W = [w.astype(np.float64) for w in w0]
    HR = [np.zeros(sh) for sh in SHAPES] * (2 if kind in ("AdaDelta", "Adam") else 1)
    HR = [h.copy() for h in HR]
    rcur = 0
    fcfg = {k: float(np.float32(v)) if isinstance(v, float) else v for k, v in cfg.items()}
    for it in range(iters):
        G = grads_at(W, it, np.float64)
        rate, rcur = caffe_rate(policy, it, rcur, fcfg["base_lr"], **{k: v for k, v in sched.items()
                                                                     if k != "lr_policy"})
        np_apply(kind, W, G, HR, fcfg, rate, LR_MULTS, DECAY_MULTS, it)
    return P, H, W, HR


def _close(ours, ref, rtol=2e-5):
    for a, b in zip(ours, ref):
        a = a.numpy().astype(np.float64)
        scale = max(1.0, float(np.abs(b).max()))
        np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("kind", list(CFG))
def test_twenty_iterations_match_numpy_port(kind):
    P, H, W, HR = run_both(kind)
    _close(P, W)
    _close(H, HR)
    # and the run really moved the weights (a test that cannot fail is a defect)
    w0 = _problem()[0]
    assert max(float(np.abs(p.numpy() - w).max()) for p, w in zip(P, w0)) > 1e-2


@pytest.mark.parametrize("kind", ["SGD", "Adam", "AdaDelta"])
def test_clipping_l1_iter_size_1(kind):
    P, H, W, HR = run_both(kind, clip=1.5, reg="L1", iter_size=1, policy="multistep")
    _close(P, W)
    _close(H, HR)


def test_clip_scales_all_params_by_global_norm():
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    norm = updates.clip_gradients(g, 1.0)
    assert norm == pytest.approx(5.0)
    assert g[0].tolist() == pytest.approx([0.6, 0.0]) and g[1].item() == pytest.approx(0.8)
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]
    assert updates.clip_gradients(g, 5.0) == pytest.approx(5.0) and g[0][0].item() == 3.0
    assert updates.clip_gradients(g, -1.0) is None


def test_one_sgd_step_by_hand():
    s = SolverSettings(type="SGD", momentum=0.9, weight_decay=0.1, iter_size=2)
    p, g, h = [torch.tensor([1.0, -2.0])], [torch.tensor([4.0, 2.0])], [torch.tensor([0.5, 0.0])]
    updates.apply_update(p, g, h, s, rate=0.1, lr_mults=[2.0], decay_mults=[1.0], it=0)
    # diff = [4,2]/2 + 0.1*w = [2.1, 0.8]; h = 0.9h + 0.2*diff = [0.87, 0.16]; w -= h
    assert h[0].tolist() == pytest.approx([0.87, 0.16], rel=1e-6)
    assert p[0].tolist() == pytest.approx([0.13, -2.16], rel=1e-6)


def test_adam_history_is_all_m_then_all_v():
    s = SolverSettings(type="Adam", momentum=0.9)
    p = [torch.zeros(2), torch.zeros(3)]
    g = [torch.ones(2), torch.full((3,), 2.0)]
    h = updates.init_history(p, "Adam")
    assert len(h) == 4
    updates.apply_update(p, g, h, s, 0.1, [1, 1], [1, 1], it=0)
    assert h[0].tolist() == pytest.approx([0.1, 0.1]) and h[1].tolist() == pytest.approx([0.2] * 3)
    assert h[2].tolist() == pytest.approx([0.001] * 2, rel=1e-4)
    assert h[3].tolist() == pytest.approx([0.004] * 3, rel=1e-4)
    # t = 1: correction sqrt(1-.999)/(1-.9); update = lr*corr*m/(sqrt(v)+eps) = 0.1 * 0.316.. * 1
    assert p[0][0].item() == pytest.approx(-0.1 * np.sqrt(0.001) / 0.1 * 0.1 / np.sqrt(0.001), rel=1e-4)


@pytest.mark.parametrize("kw,msg", [
    (dict(type="AdaGrad", momentum=0.9), "momentum cannot be used with AdaGrad"),
    (dict(type="RMSProp", momentum=0.5), "momentum cannot be used with RMSProp"),
    (dict(type="RMSProp", rms_decay=1.0), r"rms_decay should lie in \[0, 1\), got 1.0"),
    (dict(type="Adagrad"), "unknown solver type 'Adagrad'; expected one of SGD, Nesterov"),
    (dict(weight_decay=1e-4, regularization_type="L3"), "unknown regularization_type 'L3'"),
    (dict(iter_size=0), "iter_size must be >= 1, got 0"),
])
def test_settings_checks(kw, msg):
    with pytest.raises(UnsupportedParameter, match=msg):
        updates.check_settings(SolverSettings(**kw), None)


def test_history_length_checked():
    s = SolverSettings(type="Adam")
    p = [torch.zeros(2)]
    with pytest.raises(ValueError, match="Adam needs 2 history blobs for 1 params, got 1"):
        updates.apply_update(p, [torch.zeros(2)], [torch.zeros(2)], s, 0.1, [1], [1], 0)
