"""Caffe's parameter update (``SGDSolver::ApplyUpdate`` and the five subclasses).

Everything works on lists of float32 tensors in ``learnable_params`` order and
is vectorised with ``torch._foreach_*`` (one kernel per op over all tensors),
so the cost is a handful of passes over the parameters.  The order of float
operations follows the C++ code (scale the history first, then add the scaled
gradient, ...), so results agree with Caffe to rounding.

Per-parameter scalars (``lr_mult``/``decay_mult``) are applied by grouping
tensors that share a value, so ``alpha=`` can be used instead of a temporary.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Callable, Dict, List, Sequence

import math

import torch

from ..errors import UnsupportedParameter
from .settings import SOLVER_TYPES, SolverSettings, f32

Tensors = List[torch.Tensor]


def history_size(solver_type: str, n_params: int) -> int:
    """Blobs in ``history_``: AdaDelta and Adam keep a second set after the first N."""
    return 2 * n_params if solver_type in ("AdaDelta", "Adam") else n_params


def init_history(params: Sequence[torch.Tensor], solver_type: str) -> Tensors:
    """Zero histories shaped like the params (``SGDSolver::PreSolve`` + the extra set)."""
    first = [torch.zeros_like(p) for p in params]
    if history_size(solver_type, len(params)) == len(params):
        return first
    return first + [torch.zeros_like(p) for p in params]


def check_settings(s: SolverSettings, where: str | None = None) -> None:
    """The constructor sanity checks of the solver classes, as typed errors."""
    pre = f"{where}: " if where else ""
    if s.type not in SOLVER_TYPES:
        raise UnsupportedParameter(f"{pre}unknown solver type {s.type!r}; expected one of "
                                   f"{', '.join(SOLVER_TYPES)}")
    if s.type in ("AdaGrad", "RMSProp") and s.momentum != 0:
        raise UnsupportedParameter(f"{pre}momentum cannot be used with {s.type} (got {s.momentum})")
    if s.type == "RMSProp" and not (0 <= s.rms_decay < 1):
        raise UnsupportedParameter(f"{pre}rms_decay should lie in [0, 1), got {s.rms_decay}")
    if s.weight_decay != 0 and s.regularization_type not in ("L1", "L2"):
        raise UnsupportedParameter(f"{pre}unknown regularization_type {s.regularization_type!r}; "
                                   "expected 'L2' or 'L1'")
    if s.iter_size < 1:
        raise UnsupportedParameter(f"{pre}iter_size must be >= 1, got {s.iter_size}")


def _groups(values: Sequence[float]) -> Dict[float, List[int]]:
    out: Dict[float, List[int]] = defaultdict(list)
    for i, v in enumerate(values):
        out[v].append(i)
    return out


def _pick(ts: Sequence[torch.Tensor], idx: List[int]) -> Tensors:
    return [ts[i] for i in idx]


def clip_gradients(grads: Tensors, clip: float) -> float | None:
    """If ||all diffs||_2 > clip, scale every diff by clip/||g|| (SGDSolver::ClipGradients).

    Returns the norm (None when clipping is off, i.e. clip < 0)."""
    if clip < 0 or not grads:
        return None
    norms = torch._foreach_norm(grads)
    total = float(torch.linalg.vector_norm(torch.stack(norms)))
    if total > clip:
        torch._foreach_mul_(grads, f32(clip / total))
    return total


def normalize(grads: Tensors, iter_size: int) -> None:
    """diff *= 1/iter_size when iter_size > 1 (SGDSolver::Normalize)."""
    if iter_size > 1:
        torch._foreach_mul_(grads, f32(1.0 / iter_size))


def regularize(params: Tensors, grads: Tensors, s: SolverSettings, decay_mults: Sequence[float]) -> None:
    """L2: diff += wd*decay_mult*w ; L1: diff += wd*decay_mult*sign(w) (SGDSolver::Regularize)."""
    decays = [f32(s.weight_decay * m) for m in decay_mults]
    for decay, idx in _groups(decays).items():
        if decay == 0:
            continue
        p, g = _pick(params, idx), _pick(grads, idx)
        if s.regularization_type == "L2":
            torch._foreach_add_(g, p, alpha=decay)
        elif s.regularization_type == "L1":
            torch._foreach_add_(g, torch._foreach_sign(p), alpha=decay)
        else:
            raise UnsupportedParameter(f"unknown regularization_type {s.regularization_type!r}")


def _sgd(s, grads, hist, rates, it) -> Tensors:
    """h = momentum*h + local_rate*diff; update = h (sgd_solver.cpp)."""
    torch._foreach_mul_(hist, s.momentum)
    for rate, idx in _groups(rates).items():
        torch._foreach_add_(_pick(hist, idx), _pick(grads, idx), alpha=rate)
    return hist


def _nesterov(s, grads, hist, rates, it) -> Tensors:
    """h' = momentum*h + local_rate*diff; update = (1+momentum)*h' - momentum*h (nesterov_solver.cpp)."""
    upd = torch._foreach_mul(hist, -s.momentum)
    torch._foreach_mul_(hist, s.momentum)
    for rate, idx in _groups(rates).items():
        torch._foreach_add_(_pick(hist, idx), _pick(grads, idx), alpha=rate)
    torch._foreach_add_(upd, hist, alpha=f32(1 + s.momentum))
    return upd


def _adagrad(s, grads, hist, rates, it) -> Tensors:
    """h += diff^2; update = local_rate * diff / (sqrt(h) + delta) (adagrad_solver.cpp)."""
    torch._foreach_add_(hist, torch._foreach_mul(grads, grads))
    den = torch._foreach_sqrt(hist)
    torch._foreach_add_(den, s.delta)
    torch._foreach_div_(grads, den)
    torch._foreach_mul_(grads, list(rates))
    return grads


def _rmsprop(s, grads, hist, rates, it) -> Tensors:
    """h = rms_decay*h + (1-rms_decay)*diff^2; update = local_rate * diff / (sqrt(h) + delta)
    (rmsprop_solver.cpp)."""
    sq = torch._foreach_mul(grads, grads)
    torch._foreach_mul_(hist, s.rms_decay)
    torch._foreach_add_(hist, sq, alpha=f32(1 - s.rms_decay))
    den = torch._foreach_sqrt(hist)
    torch._foreach_add_(den, s.delta)
    torch._foreach_div_(grads, den)
    torch._foreach_mul_(grads, list(rates))
    return grads


def _adadelta(s, grads, hist, rates, it) -> Tensors:
    """h1 = m*h1 + (1-m)*g^2; u = g*sqrt((h2+delta)/(h1+delta)); h2 = m*h2 + (1-m)*u^2;
    update = local_rate*u, lr applied after h2 (adadelta_solver.cpp)."""
    n = len(grads)
    h1, h2 = hist[:n], hist[n:]
    mom, one_minus = s.momentum, f32(1 - s.momentum)
    torch._foreach_mul_(h1, mom)
    torch._foreach_add_(h1, torch._foreach_mul(grads, grads), alpha=one_minus)
    num = torch._foreach_add(h2, s.delta)
    torch._foreach_div_(num, torch._foreach_add(h1, s.delta))
    torch._foreach_sqrt_(num)
    torch._foreach_mul_(grads, num)
    torch._foreach_mul_(h2, mom)
    torch._foreach_add_(h2, torch._foreach_mul(grads, grads), alpha=one_minus)
    torch._foreach_mul_(grads, list(rates))
    return grads


def adam_correction(s: SolverSettings, it: int) -> float:
    """sqrt(1 - momentum2^t) / (1 - momentum^t) with t = it + 1 (adam_solver.cpp), in double then float."""
    t = it + 1
    return f32(math.sqrt(1.0 - math.pow(s.momentum2, t)) / (1.0 - math.pow(s.momentum, t)))


def _adam(s, grads, hist, rates, it) -> Tensors:
    """m = b1*m + (1-b1)*g; v = b2*v + (1-b2)*g^2;
    update = local_rate*correction * m/(sqrt(v)+delta), delta on the uncorrected sqrt(v),
    history = all m then all v (adam_solver.cpp)."""
    n = len(grads)
    m, v = hist[:n], hist[n:]
    b1, b2 = s.momentum, s.momentum2
    torch._foreach_mul_(m, b1)
    torch._foreach_add_(m, grads, alpha=f32(1 - b1))
    torch._foreach_mul_(v, b2)
    torch._foreach_add_(v, torch._foreach_mul(grads, grads), alpha=f32(1 - b2))
    den = torch._foreach_sqrt(v)
    torch._foreach_add_(den, s.delta)
    upd = torch._foreach_div(m, den)
    corr = adam_correction(s, it)
    torch._foreach_mul_(upd, [f32(r * corr) for r in rates])
    return upd


RULES: Dict[str, Callable[..., Tensors]] = {
    "SGD": _sgd, "Nesterov": _nesterov, "AdaGrad": _adagrad,
    "RMSProp": _rmsprop, "AdaDelta": _adadelta, "Adam": _adam,
}


def local_rates(rate: float, lr_mults: Sequence[float]) -> List[float]:
    """local_rate = rate * lr_mult, a float product in Caffe."""
    return [f32(f32(rate) * f32(m)) for m in lr_mults]


@torch.no_grad()
def apply_update(params: Tensors, grads: Tensors, history: Tensors, s: SolverSettings,
                 rate: float, lr_mults: Sequence[float], decay_mults: Sequence[float],
                 it: int) -> float | None:
    """One ``SGDSolver::ApplyUpdate`` minus the lr lookup and ``iter_++``:
    clip (all params) -> /iter_size -> regularize -> ComputeUpdateValue -> w -= update.

    ``grads`` are the summed diffs and are overwritten; ``history`` is updated
    in place.  Returns the gradient norm seen by clipping (None if off).
    """
    n = len(params)
    if not (len(grads) == len(lr_mults) == len(decay_mults) == n):
        raise ValueError(f"{n} params but {len(grads)} grads, {len(lr_mults)} lr_mults, "
                         f"{len(decay_mults)} decay_mults")
    if len(history) != history_size(s.type, n):
        raise ValueError(f"{s.type} needs {history_size(s.type, n)} history blobs for {n} params, "
                         f"got {len(history)}")
    if n == 0:
        return None
    norm = clip_gradients(grads, s.clip_gradients)
    normalize(grads, s.iter_size)
    regularize(params, grads, s, decay_mults)
    upd = RULES[s.type](s, grads, history, local_rates(rate, lr_mults), it)
    torch._foreach_sub_(params, upd)
    return norm
