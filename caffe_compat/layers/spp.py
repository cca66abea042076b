"""SPP: mirrors src/caffe/layers/spp_layer.cpp (BVLC/caffe 9b89154).

Spatial pyramid pooling: for level l < pyramid_height, bins = 2^l, kernel = ceil(H / bins),
pad = (kernel*bins - H + 1) / 2 (integer), stride = kernel (same for W); each level is a
Pooling layer, flattened to (N, C*out_h*out_w); the levels are concatenated along axis 1.
With pyramid_height 1 the single (level 0) Pooling top (N, C, 1, 1) is the output, unflattened.

Params (spp_param): pyramid_height, pool (MAX/AVE/STOCHASTIC).  Arity: 1 bottom
(N, C, H, W) -> 1 top.  No blobs.  The sublayers are built as Caffe builds them (phase TRAIN,
the default of a fresh LayerParameter), so their own CHECKs apply (pad < kernel).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer
from .pooling import Pooling


@register("SPP")
class SPP(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.spp_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4 or shape[2] <= 0 or shape[3] <= 0:
            raise shape_fail(self, f"the bottom must be (N, C, H, W) with H, W > 0; got {list(shape)}")
        self.height = int(p.pyramid_height)
        if self.height <= 0:
            raise fail(self, f"pyramid_height must be > 0 (got {self.height})")
        N, C, H, W = shape
        self.levels = nn.ModuleList()
        for level in range(self.height):
            sub = type(lp)()
            sub.name = f"{lp.name}/level{level}"
            sub.type = "Pooling"
            pp = sub.pooling_param
            bins = 2 ** level
            kh, kw = math.ceil(H / bins), math.ceil(W / bins)
            pp.pad_h, pp.pad_w = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
            pp.kernel_h, pp.kernel_w = kh, kw
            pp.stride_h, pp.stride_w = kh, kw
            pp.pool = p.pool
            self.levels.append(Pooling(sub, [shape], "TRAIN"))
        if self.height == 1:
            self.top_shapes = list(self.levels[0].top_shapes)
        else:
            total = sum(l.top_shapes[0][1] * l.top_shapes[0][2] * l.top_shapes[0][3] for l in self.levels)
            self.top_shapes = [(N, total)]

    def forward(self, x):
        if self.height == 1:
            return self.levels[0](x)
        return torch.cat([lvl(x).flatten(1) for lvl in self.levels], dim=1)
