"""Shared pieces of the loss layers (src/caffe/layers/loss_layer.cpp, BVLC/caffe 9b89154).

A loss layer's first top is a 0-axis blob (shape ()), weighted by loss_weight (1) in the net.
Normalization (LossParameter): FULL = outer*inner, VALID = non-ignored count, BATCH_SIZE =
outer, NONE = 1; the divisor is max(1, that).  Layers pick their default mode themselves.
"""
from __future__ import annotations

import numpy as np
import torch

from ._params import fail, shape_fail
from .base import CaffeLayer

FULL, VALID, BATCH_SIZE, NONE = 0, 1, 2, 3
FLT_MIN = float(np.finfo(np.float32).tiny)  # softmax_loss_layer.cpp clamps prob at FLT_MIN
LOG_THRESHOLD = float(np.float32(1e-20))     # loss_layer.hpp kLOG_THRESHOLD


class LossBase(CaffeLayer):
    """Sets ``is_loss``, the scalar top, and LossLayer::Reshape's batch-size check."""

    is_loss = True

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        b = self.bottom_shapes
        if b[0][:1] != b[1][:1]:
            raise shape_fail(self, f"the data and label should have the same first dimension "
                                   f"(bottom[0] {b[0]}, bottom[1] {b[1]})")
        self.top_shapes = [()]

    def normalization_mode(self, default: int, legacy_ok: bool = True) -> int:
        """loss_param.normalization, else the legacy ``normalize`` (true VALID / false BATCH_SIZE), else ``default``."""
        lo = self.lp.loss_param
        if lo.HasField("normalization"):
            mode = int(lo.normalization)
        elif lo.HasField("normalize"):
            if not legacy_ok:
                raise fail(self, 'loss_param.normalize is deprecated; use "normalization"')
            mode = VALID if lo.normalize else BATCH_SIZE
        else:
            mode = default
        if mode not in (FULL, VALID, BATCH_SIZE, NONE):
            raise fail(self, f"unknown loss_param.normalization {mode}")
        return mode

    def ignore_label(self):
        lo = self.lp.loss_param
        return int(lo.ignore_label) if lo.HasField("ignore_label") else None


def normalizer(mode: int, outer: int, inner: int, valid_count):
    """get_normalizer: a Python float, or a 0-d tensor for VALID (data-dependent)."""
    if mode == FULL:
        return float(max(1, outer * inner))
    if mode == BATCH_SIZE:
        return float(max(1, outer))
    if mode == NONE:
        return 1.0
    if valid_count is None:
        return float(max(1, outer * inner))
    return torch.clamp(valid_count.to(torch.float32), min=1.0)
