"""Accuracy: mirrors src/caffe/layers/accuracy_layer.cpp (BVLC/caffe 9b89154).

A (non-ignored) label is correct when #{k : x[k] >= x[label]} <= top_k (the true class counts
itself); top[0] = correct / counted (0 if none counted), a scalar.  Optional top[1] (C,) holds
per-class accuracy (0 for absent classes).  Params (accuracy_param): top_k (1), axis (1),
ignore_label.  Bottoms: scores (outer x C x inner), labels (outer*inner values).  No backward.
"""
from __future__ import annotations

import torch

from ._params import canonical_axis, count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("Accuracy", bottoms=2, tops=(1, 2))
class Accuracy(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        ap = lp.accuracy_param
        s, ls = self.bottom_shapes
        self.top_k = int(ap.top_k)
        self.ignore = int(ap.ignore_label) if ap.HasField("ignore_label") else None
        if self.top_k > count(s) // max(1, count(ls)):
            raise fail(self, f"accuracy_param.top_k {self.top_k} must not exceed the number of "
                             f"classes ({count(s) // max(1, count(ls))})")
        self.axis = canonical_axis(self, int(ap.axis), len(s), "accuracy_param.axis")
        self.outer, self.classes, self.inner = count(s, 0, self.axis), s[self.axis], count(s, self.axis + 1)
        if self.outer * self.inner != count(ls):
            raise shape_fail(self, f"number of labels ({count(ls)}, shape {ls}) must match the number "
                                   f"of predictions ({self.outer * self.inner} for scores {s}, axis {self.axis})")
        self.top_shapes = [(), (self.classes,)][: max(1, min(2, len(lp.top) or 1))]

    def forward(self, x, label):
        # -1, not self.outer: the batch may differ from the one at setup (an exported graph's
        # batch axis is dynamic); with axis 0 the classes are the batch and outer is 1
        outer = -1 if self.axis > 0 else self.outer
        x = x.detach().reshape(outer, self.classes, self.inner)
        lab = label.detach().reshape(outer, self.inner).long()
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore is None else lab != self.ignore
        safe = torch.where(valid, lab, torch.zeros_like(lab))
        true = torch.gather(x, 1, safe.unsqueeze(1))
        correct = ((x >= true).sum(1) <= self.top_k) & valid
        n = valid.sum()
        acc = torch.where(n > 0, correct.sum().to(x.dtype) / n.clamp(min=1).to(x.dtype),
                          torch.zeros((), dtype=x.dtype, device=x.device))
        if len(self.top_shapes) == 1:
            return acc
        onehot = torch.nn.functional.one_hot(safe.reshape(-1), self.classes).to(x.dtype)
        nums = (onehot * valid.reshape(-1, 1)).sum(0)
        hits = (onehot * correct.reshape(-1, 1)).sum(0)
        per_class = torch.where(nums > 0, hits / nums.clamp(min=1), torch.zeros_like(nums))
        return acc, per_class
