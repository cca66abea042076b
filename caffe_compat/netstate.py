"""Which layers a net keeps for a NetState: Net::FilterNet and Net::StateMeetsRule (net.cpp)."""
from __future__ import annotations

from typing import Optional, Sequence

from .errors import CaffeFormatError
from .proto import caffe_pb2

PHASES = {"TRAIN": caffe_pb2.TRAIN, "TEST": caffe_pb2.TEST}
PHASE_NAMES = {v: k for k, v in PHASES.items()}


def state_meets_rule(rule, phase: int, level: int, stages: Sequence[str]) -> bool:
    """Net::StateMeetsRule: phase, min_level, max_level, all ``stage``s present, no ``not_stage``."""
    if rule.HasField("phase") and rule.phase != phase:
        return False
    if rule.HasField("min_level") and level < rule.min_level:
        return False
    if rule.HasField("max_level") and level > rule.max_level:
        return False
    if any(s not in stages for s in rule.stage):
        return False
    if any(s in stages for s in rule.not_stage):
        return False
    return True


def filter_layers(param, phase: int, level: int, stages: Sequence[str], path: Optional[str] = None) -> list:
    """Net::FilterNet: the LayerParameters of ``param`` that the state keeps, in order."""
    kept = []
    for lp in param.layer:
        if len(lp.include) and len(lp.exclude):
            raise CaffeFormatError("specify either include rules or exclude rules; not both",
                                   path, f"layer {lp.name!r}")
        if len(lp.include):
            keep = any(state_meets_rule(r, phase, level, stages) for r in lp.include)
        else:
            keep = not any(state_meets_rule(r, phase, level, stages) for r in lp.exclude)
        if keep:
            kept.append(lp)
    return kept


__all__ = ["PHASES", "PHASE_NAMES", "state_meets_rule", "filter_layers"]
