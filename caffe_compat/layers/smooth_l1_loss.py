"""SmoothL1Loss (Fast/Faster R-CNN fork): mirrors src/caffe/layers/smooth_L1_loss_layer.cu of
rbgirshick/caffe-fast-rcnn (branches fast-rcnn and faster-rcnn; the fork's CPU path is NOT_IMPLEMENTED).

d = w_in * (b0 - b1); f(d) = 0.5*(sigma*d)^2 if |d| < 1/sigma^2 else |d| - 0.5/sigma^2;
loss = sum(w_out * f(d)) / N (N = b0.shape[0]).  Backward: db0 = -db1 = f'(d) * dy / N with
f'(d) = sigma^2*d or sign(d), times w_in*w_out with 4 bottoms (faster-rcnn) but NOT with 3
(fast-rcnn branch, where bottom[2] is the inside weight and the backward ignores it).
Params (smooth_l1_loss_param): sigma (1).  2, 3 or 4 bottoms of one C x H x W; scalar top.
"""
from __future__ import annotations

import numpy as np
import torch

from ._grad import straight_through
from ._loss import LossBase
from ._params import count, fail, shape_fail
from ._registry import register


@register("SmoothL1Loss", bottoms=(2, 4), tops=1)
class SmoothL1Loss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        b = self.bottom_shapes
        for i, s in enumerate(b[1:], 1):
            if count(s, 1) != count(b[0], 1) or s[1:] != b[0][1:]:
                raise shape_fail(self, f"bottom[{i}] {s} must match bottom[0] {b[0]} in C x H x W")
        sigma = np.float32(lp.smooth_l1_loss_param.sigma) if "smooth_l1_loss_param" in \
            lp.DESCRIPTOR.fields_by_name else np.float32(1)
        if sigma == 0:
            raise fail(self, "smooth_l1_loss_param.sigma must be non-zero")
        self.sigma2 = float(sigma * sigma)
        self.num = b[0][0]

    def reshape(self, bottom_shapes) -> None:
        """SmoothL1LossLayer::Reshape: N (the divisor) follows a changed ROI count."""
        self.bottom_shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        self.num = self.bottom_shapes[0][0]

    def forward(self, b0, b1, w_in=None, w_out=None):
        s2 = self.sigma2
        d = b0 - b1
        if w_in is not None:
            d = w_in.detach() * d
        absd = torch.abs(d)
        inside = absd < 1.0 / s2
        err = torch.where(inside, 0.5 * d * d * s2, absd - 0.5 / s2)
        if w_out is not None:
            err = w_out.detach() * err
        value = err.sum() / float(self.num)
        grad = torch.where(inside, s2 * d, torch.sign(d)).detach()
        if w_out is not None:  # faster-rcnn: chain through both weights
            grad = grad * w_in.detach() * w_out.detach()
        surrogate = ((b0 - b1) * grad).sum() / float(self.num)
        return straight_through(value, surrogate)
