"""LRN: mirrors src/caffe/layers/lrn_layer.cpp (BVLC/caffe 9b89154).

ACROSS_CHANNELS: y = x * (k + alpha/n * sum_{c' in [c - (n-1)/2, c + (n-1)/2]} x_{c'}^2)^(-beta)
(zero beyond the channel range).  WITHIN_CHANNEL, which Caffe assembles from
Split/Power/Pooling(AVE, n x n, pad (n-1)/2, stride 1)/Power/Eltwise sublayers:
y = x * (1 + alpha * avgpool_{n x n}(x^2))^(-beta), the average counting the zero padding
(always n*n here) and k ignored.

Params (lrn_param): local_size n (odd, default 5), alpha (1), beta (0.75), norm_region
(ACROSS_CHANNELS), k (1).  Arity: 1 bottom (N, C, H, W) -> 1 top of the same shape.
No blobs.  Backward: autograd, which is the exact derivative Caffe's code computes.
"""
from __future__ import annotations

import torch.nn.functional as F

from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer

ACROSS_CHANNELS, WITHIN_CHANNEL = 0, 1


@register("LRN")
class LRN(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.lrn_param
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise fail(self, f"local_size must be odd (got {self.size})")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.region = int(p.norm_region)
        if self.region not in (ACROSS_CHANNELS, WITHIN_CHANNEL):
            raise fail(self, f"unknown norm_region {p.norm_region}")
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise shape_fail(self, f"the bottom must have 4 axes (num, channels, height, width); "
                                   f"got {list(shape)}")
        self.pre_pad = (self.size - 1) // 2
        self.top_shapes = [shape]

    def forward(self, x):
        if self.region == ACROSS_CHANNELS:
            # Sum of squares over a channel window: average-pool (N, 1, C, H, W) along C.
            sq = (x * x).unsqueeze(1)
            if x.shape[1] < self.size:   # torch refuses a window wider than the unpadded axis
                sq = F.pad(sq, (0, 0, 0, 0, self.pre_pad, self.pre_pad))
                mean = F.avg_pool3d(sq, (self.size, 1, 1), stride=1).squeeze(1)
            else:
                mean = F.avg_pool3d(sq, (self.size, 1, 1), stride=1, padding=(self.pre_pad, 0, 0),
                                    count_include_pad=True).squeeze(1)
            scale = self.k + self.alpha * mean
        else:
            sq = x * x
            if min(x.shape[2:]) < self.size or self.pre_pad > self.size // 2:
                p = self.pre_pad
                mean = F.avg_pool2d(F.pad(sq, (p, p, p, p)), self.size, stride=1)
            else:
                mean = F.avg_pool2d(sq, self.size, stride=1, padding=self.pre_pad,
                                    count_include_pad=True)
            scale = 1.0 + self.alpha * mean
        return x * scale.pow(-self.beta)
