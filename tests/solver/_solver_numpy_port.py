"""A float64 NumPy port of Caffe's SGDSolver::ApplyUpdate and its subclasses.

Written param-by-param straight from sgd_solver.cpp / *_solver.cpp, without
sharing code with caffe_compat.solver, to serve as an independent reference.
"""
from __future__ import annotations

import math

import numpy as np


def caffe_rate(policy, it, cur, base_lr, gamma=0.0, power=0.0, stepsize=0, stepvalue=(), max_iter=0):
    if policy == "fixed":
        return base_lr, cur
    if policy == "step":
        cur = it // stepsize
        return base_lr * gamma ** cur, cur
    if policy == "exp":
        return base_lr * gamma ** it, cur
    if policy == "inv":
        return base_lr * (1 + gamma * it) ** (-power), cur
    if policy == "multistep":
        if cur < len(stepvalue) and it >= stepvalue[cur]:
            cur += 1
        return base_lr * gamma ** cur, cur
    if policy == "poly":
        return base_lr * (1 - it / max_iter) ** power, cur
    if policy == "sigmoid":
        return base_lr / (1 + math.exp(-gamma * (it - stepsize))), cur
    raise KeyError(policy)


def apply_update(kind, W, G, H, cfg, rate, lr_mults, decay_mults, it):
    """Mutates W (weights), G (diffs) and H (history, 2N for AdaDelta/Adam)."""
    n = len(W)
    mom = cfg.get("momentum", 0.0)
    delta = cfg.get("delta", 1e-8)
    clip = cfg.get("clip_gradients", -1.0)
    if clip >= 0:
        norm = math.sqrt(sum(float(np.sum(g * g)) for g in G))
        if norm > clip:
            for g in G:
                g *= clip / norm
    for i in range(n):
        w, g = W[i], G[i]
        if cfg.get("iter_size", 1) > 1:
            g *= 1.0 / cfg["iter_size"]
        decay = cfg.get("weight_decay", 0.0) * decay_mults[i]
        if decay:
            if cfg.get("regularization_type", "L2") == "L2":
                g += decay * w
            else:
                g += decay * np.sign(w)
        lr = rate * lr_mults[i]
        if kind == "SGD":
            H[i] = mom * H[i] + lr * g
            u = H[i].copy()
        elif kind == "Nesterov":
            old = H[i].copy()
            H[i] = mom * H[i] + lr * g
            u = (1 + mom) * H[i] - mom * old
        elif kind == "AdaGrad":
            H[i] = H[i] + g * g
            u = lr * g / (np.sqrt(H[i]) + delta)
        elif kind == "RMSProp":
            d = cfg.get("rms_decay", 0.99)
            H[i] = d * H[i] + (1 - d) * g * g
            u = lr * g / (np.sqrt(H[i]) + delta)
        elif kind == "AdaDelta":
            H[i] = mom * H[i] + (1 - mom) * g * g
            step = g * np.sqrt((H[n + i] + delta) / (H[i] + delta))
            H[n + i] = mom * H[n + i] + (1 - mom) * step * step
            u = lr * step
        elif kind == "Adam":
            b1, b2 = mom, cfg.get("momentum2", 0.999)
            t = it + 1
            H[i] = b1 * H[i] + (1 - b1) * g
            H[n + i] = b2 * H[n + i] + (1 - b2) * g * g
            corr = math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
            u = lr * corr * H[i] / (np.sqrt(H[n + i]) + delta)
        else:
            raise KeyError(kind)
        w -= u
