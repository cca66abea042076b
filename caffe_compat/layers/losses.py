"""SigmoidCrossEntropyLoss, EuclideanLoss, HingeLoss, ContrastiveLoss: mirror src/caffe/layers/
{sigmoid_cross_entropy,euclidean,hinge,contrastive}_loss_layer.cpp (BVLC/caffe 9b89154).

SigmoidCrossEntropyLoss: loss = -sum_valid [x(t - [x>=0]) - log(1 + exp(x - 2x[x>=0]))] / norm;
  dx = (sigmoid(x) - t) * valid / norm; normalization BATCH_SIZE by default (legacy normalize
  true -> VALID); loss_param.ignore_label compares static_cast<int>(t).
EuclideanLoss: loss = sum (a - b)^2 / N / 2.
HingeLoss: d_k = max(0, 1 + s_k x_k), s = -1 at the label, +1 elsewhere; L1: sum d / N,
  L2: sum d^2 / N (hinge_loss_param.norm, L1); the gradient is 0 where d == 0.
ContrastiveLoss: d2 = |a - b|^2 per pair; similar (y != 0): d2; dissimilar: max(margin - d, 0)^2,
  legacy_version: max(margin - d2, 0); loss = sum / N / 2.  Backward as Caffe: dissimilar pairs
  use -(margin - d)/(d + 1e-4) * (a - b) (contrastive_loss_param.margin 1).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..proto import caffe_pb2
from ._grad import straight_through
from ._loss import BATCH_SIZE, VALID, LossBase, normalizer
from ._params import count, fail, shape_fail
from ._registry import register


@register("SigmoidCrossEntropyLoss", bottoms=2, tops=1)
class SigmoidCrossEntropyLoss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        s, t = self.bottom_shapes
        if count(s) != count(t):
            raise shape_fail(self, f"inputs must have the same count (bottom[0] {s}, bottom[1] {t})")
        self.mode = self.normalization_mode(BATCH_SIZE)
        self.ignore = self.ignore_label()
        self.outer, self.inner = s[0], count(s, 1)

    def forward(self, x, target):
        t = target.detach().reshape(x.shape)
        pos = (x >= 0).to(x.dtype)
        value = -(x * (t - pos) - torch.log(1 + torch.exp(x - 2 * x * pos)))
        surrogate = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        per = straight_through(value, surrogate)
        valid = None
        if self.ignore is not None:
            valid = t.long() != self.ignore
            per = torch.where(valid, per, torch.zeros_like(per))
        return per.sum() / normalizer(self.mode, self.outer, self.inner,
                                      valid.sum() if valid is not None and self.mode == VALID else None)


@register("EuclideanLoss", bottoms=2, tops=1)
class EuclideanLoss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        a, b = self.bottom_shapes
        if count(a, 1) != count(b, 1):
            raise shape_fail(self, f"inputs must have the same dimension (bottom[0] {a}, bottom[1] {b})")
        self.num = a[0]

    def forward(self, a, b):
        d = a - b.reshape(a.shape)
        return (d * d).sum() / float(self.num) / 2.0


@register("HingeLoss", bottoms=2, tops=1)
class HingeLoss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.norm = int(lp.hinge_loss_param.norm)
        if self.norm not in (caffe_pb2.HingeLossParameter.L1, caffe_pb2.HingeLossParameter.L2):
            raise fail(self, f"unknown hinge_loss_param.norm {self.norm}")
        self.num = self.bottom_shapes[0][0]

    def forward(self, x, label):
        z = x.reshape(self.num, -1)
        lab = label.detach().reshape(self.num).long()
        sign = 1 - 2 * F.one_hot(lab, z.shape[1]).to(z.dtype)
        d = F.relu(1 + sign * z)  # relu's gradient is 0 at 0, as caffe_cpu_sign(0)
        if self.norm == caffe_pb2.HingeLossParameter.L1:
            return d.sum() / float(self.num)
        return (d * d).sum() / float(self.num)


@register("ContrastiveLoss", bottoms=3, tops=1)
class ContrastiveLoss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        a, b, y = self.bottom_shapes
        if a != b or len(a) != 4 or a[2:] != (1, 1):
            raise shape_fail(self, f"bottom[0] and bottom[1] must both be N x C x 1 x 1 (got {a}, {b})")
        if len(y) != 4 or y[1:] != (1, 1, 1) or y[0] != a[0]:
            raise shape_fail(self, f"bottom[2] (similarity) must be N x 1 x 1 x 1 (got {y})")
        cp = lp.contrastive_loss_param
        self.margin, self.legacy = float(cp.margin), bool(cp.legacy_version)
        self.num = a[0]

    def forward(self, a, b, y):
        diff = (a - b).reshape(self.num, -1)
        d2 = (diff * diff).sum(1)
        similar = y.detach().reshape(self.num).long() != 0  # static_cast<int> of the label
        if self.legacy:
            m = self.margin - d2
            dis = torch.clamp(m, min=0)
            dis_grad = -(m > 0).to(diff.dtype)  # d loss_i / d diff = -diff  (x 2 from d2, / 2)
        else:
            d = torch.sqrt(d2)
            m = self.margin - d
            dis = torch.clamp(m, min=0) ** 2
            dis_grad = -(m / (d + 1e-4)) * (m > 0).to(diff.dtype)
        value = torch.where(similar, d2, dis).sum() / float(self.num) / 2.0
        # Per pair, Caffe's gradient wrt a is alpha * coef * (a - b): coef 1 (similar) or dis_grad.
        coef = torch.where(similar, torch.ones_like(d2), dis_grad).detach()
        surrogate = (coef.unsqueeze(1) * diff * diff.detach()).sum() / float(self.num)
        return straight_through(value, surrogate)
