"""The solver fields the update math reads, with Caffe's defaults.

A plain dataclass so the math runs without protobuf; ``from_proto`` copies
them out of a ``SolverParameter`` (or any object with the same attribute
names).  Float fields are rounded to float32 on the way in because Caffe
stores them as proto ``float`` and computes with them as such.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Tuple

import numpy as np

from ..errors import UnsupportedParameter

# the six ComputeUpdateValue flavours Caffe registers (solver_factory names)
SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
# SolverParameter.solver_type enum (field 30) -> type string, as upgrade_proto maps it
LEGACY_SOLVER_TYPES = {0: "SGD", 1: "Nesterov", 2: "AdaGrad", 3: "RMSProp", 4: "AdaDelta", 5: "Adam"}


def f32(x: float) -> float:
    """Round a Python float to the nearest float32, as a proto ``float`` field holds it."""
    return float(np.float32(x))


@dataclass
class SolverSettings:
    """Fields of caffe.proto ``SolverParameter`` used by lr policies and updates."""
    type: str = "SGD"
    base_lr: float = 0.0
    lr_policy: str = ""
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: Tuple[int, ...] = ()
    max_iter: int = 0
    momentum: float = 0.0
    momentum2: float = f32(0.999)
    delta: float = f32(1e-8)
    rms_decay: float = f32(0.99)
    weight_decay: float = 0.0
    regularization_type: str = "L2"
    clip_gradients: float = -1.0
    iter_size: int = 1
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in ("base_lr", "gamma", "power", "momentum", "momentum2", "delta",
                     "rms_decay", "weight_decay", "clip_gradients"):
            setattr(self, name, f32(getattr(self, name)))
        self.stepvalue = tuple(int(v) for v in self.stepvalue)

    def replace(self, **kw: Any) -> "SolverSettings":
        return dataclasses.replace(self, **kw)


_FIELDS = [f.name for f in dataclasses.fields(SolverSettings) if f.name != "extra"]


def from_proto(msg: Any, where: str | None = None) -> SolverSettings:
    """Copy the update-relevant fields of a SolverParameter message.

    Unset optional fields keep Caffe's defaults.  A legacy ``solver_type`` enum
    is honoured only when ``type`` is unset, which is what upgrade_proto does.
    """
    kw = {}
    has = getattr(msg, "HasField", None)
    for name in _FIELDS:
        if not hasattr(msg, name):
            continue
        value = getattr(msg, name)
        if name == "stepvalue":
            kw[name] = tuple(value)
        elif has is None or has(name):
            kw[name] = value
    if has is not None and not has("type") and hasattr(msg, "solver_type") and has("solver_type"):
        code = int(msg.solver_type)
        if code not in LEGACY_SOLVER_TYPES:
            raise UnsupportedParameter(_at(where, f"solver_type {code} is not one of 0..5"))
        kw["type"] = LEGACY_SOLVER_TYPES[code]
    return SolverSettings(**kw)


def _at(where: str | None, msg: str) -> str:
    return f"{where}: {msg}" if where else msg
