"""Reduction and ArgMax: mirror src/caffe/layers/{reduction,argmax}_layer.cpp (BVLC/caffe 9b89154).

Reduction: y[o] = coeff * op(x[o, ...]) over every axis from `axis` (0) on, op = SUM | ASUM (sum |x|)
  | SUMSQ (sum x^2) | MEAN (coeff/dim * sum); top shape = shape[:axis] (axis 0 gives a scalar).
ArgMax: the top_k (1) largest entries, ordered by (value, index) descending, so equal values
  list the larger index first.  With `axis`: indices (or, out_max_val, the values) replace that
  axis; without: per item over the flattened rest, top (N, 1 or 2, top_k, 1...) of >= 3 axes,
  holding indices then (out_max_val) values.  No backward.  One bottom, one top, no blobs.
"""
from __future__ import annotations

import numpy as np
import torch

from ..proto import caffe_pb2
from ._params import canonical_axis, count, fail
from ._registry import register
from .base import CaffeLayer

_R = caffe_pb2.ReductionParameter


@register("Reduction")
class Reduction(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        rp = lp.reduction_param
        s = self.bottom_shapes[0]
        self.op = int(rp.operation)
        if self.op not in (_R.SUM, _R.ASUM, _R.SUMSQ, _R.MEAN):
            raise fail(self, f"unknown reduction_param.operation {self.op}")
        self.axis = canonical_axis(self, int(rp.axis), len(s), "reduction_param.axis")
        coeff = np.float32(rp.coeff)
        if self.op == _R.MEAN:
            coeff = np.float32(coeff / np.float32(count(s, self.axis)))
        self.coeff = float(coeff)
        self.top_shapes = [s[:self.axis]]

    def forward(self, x):
        z = x.reshape(tuple(x.shape[:self.axis]) + (-1,))
        if self.op == _R.ASUM:
            z = torch.abs(z)
        elif self.op == _R.SUMSQ:
            z = z * z
        y = z.sum(dim=-1)
        return y * self.coeff if self.coeff != 1 else y


def _topk_caffe(x: torch.Tensor, k: int):
    """(values, indices) of the k largest along the last axis, ties to the larger index."""
    d = x.shape[-1]
    # Reverse, then a stable descending sort keeps equal values in reversed (larger-index-first) order.
    vals, idx = torch.sort(torch.flip(x, dims=[-1]), dim=-1, descending=True, stable=True)
    return vals[..., :k], (d - 1) - idx[..., :k]


@register("ArgMax")
class ArgMax(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        ap = lp.argmax_param
        s = self.bottom_shapes[0]
        self.out_max_val = bool(ap.out_max_val)
        self.top_k = int(ap.top_k)
        if self.top_k < 1:
            raise fail(self, f"argmax_param.top_k must be at least 1 (got {self.top_k})")
        self.axis = None
        if ap.HasField("axis"):
            self.axis = canonical_axis(self, int(ap.axis), len(s), "argmax_param.axis")
            if self.top_k > s[self.axis]:
                raise fail(self, f"argmax_param.top_k {self.top_k} exceeds axis {self.axis} "
                                 f"of size {s[self.axis]}")
            top = list(s)
            top[self.axis] = self.top_k
        else:
            if self.top_k > count(s, 1):
                raise fail(self, f"argmax_param.top_k {self.top_k} exceeds the {count(s, 1)} "
                                 "entries per item")
            top = [1] * max(len(s), 3)
            top[0], top[2] = s[0], self.top_k
            if self.out_max_val:
                top[1] = 2
        self.top_shapes = [tuple(top)]

    def forward(self, x):
        x = x.detach()
        if self.axis is not None:
            v, i = _topk_caffe(torch.movedim(x, self.axis, -1), self.top_k)
            out = v if self.out_max_val else i.to(x.dtype)
            return torch.movedim(out, -1, self.axis).contiguous()
        v, i = _topk_caffe(x.reshape(x.shape[0], -1), self.top_k)
        out = torch.stack([i.to(x.dtype), v], 1) if self.out_max_val else i.to(x.dtype)
        return out.reshape(self.top_shapes[0])
