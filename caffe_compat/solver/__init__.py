"""Caffe's solver semantics in PyTorch: lr policies, update rules, the Step loop, snapshots.

Modules: ``settings`` (SolverParameter fields with Caffe's defaults),
``lr_policy`` (GetLearningRate), ``updates`` (ApplyUpdate for the six solver
types), ``solver`` (the Solver class and its Step loop), ``snapshot``
(.caffemodel/.solverstate names, atomic writes, restore).
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "SolverSettings": "settings", "from_proto": "settings", "SOLVER_TYPES": "settings",
    "learning_rate": "lr_policy", "check_lr_policy": "lr_policy", "POLICIES": "lr_policy",
    "apply_update": "updates", "init_history": "updates", "history_size": "updates",
    "check_settings": "updates",
    "Solver": "solver",
    "snapshot_filename": "snapshot",
}

__all__ = sorted(_API)


__getattr__ = lazy_getattr(__name__, _API, globals())
