"""Caffe's learning-rate policies (``SGDSolver::GetLearningRate``, sgd_solver.cpp).

Every policy is a function ``(s, it, current_step) -> (rate, current_step)``
where ``it`` is the solver's iteration *before* the update is applied and
``current_step`` is the solver's step counter (only ``step`` and
``multistep`` change it; it is saved in the .solverstate).  Rates come back
as float32-representable Python floats, rounded where Caffe's float
arithmetic rounds them, so they equal what the C++ solver uses.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import numpy as np

from ..errors import UnsupportedParameter
from .settings import SolverSettings

Rate = Tuple[float, int]
_F = np.float32


def _r(x) -> float:
    return float(_F(x))


def fixed(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr (sgd_solver.cpp, "fixed")."""
    return s.base_lr, current_step


def step(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr * gamma ^ floor(it / stepsize); current_step = floor(it / stepsize)."""
    k = it // s.stepsize
    # std::pow(float, int) is evaluated in double, then stored in a float rate
    return _r(s.base_lr * math.pow(s.gamma, k)), k


def exp(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr * gamma ^ it (sgd_solver.cpp, "exp")."""
    return _r(s.base_lr * math.pow(s.gamma, it)), current_step


def inv(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr * (1 + gamma * it) ^ (-power) (sgd_solver.cpp, "inv")."""
    base = _F(1) + _F(s.gamma) * _F(it)   # float arithmetic in Caffe
    return _r(_F(s.base_lr) * _F(math.pow(float(base), -s.power))), current_step


def multistep(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr * gamma ^ current_step, where one call advances current_step
    by at most one when it >= stepvalue[current_step] (sgd_solver.cpp, "multistep")."""
    if current_step < len(s.stepvalue) and it >= s.stepvalue[current_step]:
        current_step += 1
    return _r(s.base_lr * math.pow(s.gamma, current_step)), current_step


def poly(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr * (1 - it / max_iter) ^ power (sgd_solver.cpp, "poly")."""
    frac = _F(1) - _F(it) / _F(s.max_iter)
    return _r(_F(s.base_lr) * _F(math.pow(float(frac), s.power))), current_step


def sigmoid(s: SolverSettings, it: int, current_step: int) -> Rate:
    """lr = base_lr / (1 + exp(-gamma * (it - stepsize))) (sgd_solver.cpp, "sigmoid")."""
    z = -_F(s.gamma) * (_F(it) - _F(s.stepsize))
    e = _F(math.exp(float(z))) if float(z) < 88.0 else _F(np.inf)
    return _r(_F(s.base_lr) * (_F(1) / (_F(1) + e))), current_step


POLICIES: Dict[str, Callable[[SolverSettings, int, int], Rate]] = {
    "fixed": fixed, "step": step, "exp": exp, "inv": inv,
    "multistep": multistep, "poly": poly, "sigmoid": sigmoid,
}


def check_lr_policy(s: SolverSettings, where: str | None = None) -> None:
    """Refuse, before training starts, what GetLearningRate would CHECK-fail on."""
    pre = f"{where}: " if where else ""
    if s.lr_policy not in POLICIES:
        raise UnsupportedParameter(
            f"{pre}unknown lr_policy {s.lr_policy!r}; expected one of {', '.join(POLICIES)}")
    if s.lr_policy in ("step", "sigmoid") and s.stepsize <= 0:
        raise UnsupportedParameter(f"{pre}lr_policy {s.lr_policy!r} needs stepsize > 0, got {s.stepsize}")
    if s.lr_policy in ("step", "exp", "inv", "multistep", "sigmoid") and s.gamma < 0:
        raise UnsupportedParameter(f"{pre}lr_policy {s.lr_policy!r} needs gamma >= 0, got {s.gamma}")
    if s.lr_policy == "poly" and s.max_iter <= 0:
        raise UnsupportedParameter(f"{pre}lr_policy 'poly' needs max_iter > 0, got {s.max_iter}")


def learning_rate(s: SolverSettings, it: int, current_step: int = 0) -> Rate:
    """Dispatch on ``s.lr_policy``; returns ``(rate, new_current_step)``."""
    fn = POLICIES.get(s.lr_policy)
    if fn is None:
        check_lr_policy(s)
    return fn(s, it, current_step)
