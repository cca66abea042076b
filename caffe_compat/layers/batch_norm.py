"""BatchNorm: mirrors src/caffe/layers/batch_norm_layer.cpp (BVLC/caffe 9b89154).

y = (x - mean) / sqrt(var + eps), per channel (axis 1), no affine part (a following Scale
layer holds gamma/beta).  With global stats: s = blobs[2][0], f = 0 if s == 0 else 1/s,
mean = f*blobs[0], var = f*blobs[1].  Otherwise the batch mean and the biased batch
variance over (N, H, W, ...) normalise, and the running sums are updated in place:
blobs[2] = maf*blobs[2] + 1; blobs[0] = mean + maf*blobs[0];
blobs[1] = (m/(m-1))*var + maf*blobs[1] with m = count/channels (factor 1 when m == 1).

Params (batch_norm_param): use_global_stats (default: phase == TEST),
moving_average_fraction maf (.999), eps (1e-5).  Arity: 1 bottom (channels = shape(1), or 1
for a 1-D bottom) -> 1 top, same shape.  Blobs: mean sum (C,), variance sum (C,), scale
factor (1,), all zero-initialised; they are statistics, never learned: a ``param`` with
lr_mult != 0 is refused as in Caffe, and they receive no gradient.
"""
from __future__ import annotations

import torch

from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("BatchNorm")
class BatchNorm(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.batch_norm_param
        self.maf = float(p.moving_average_fraction)
        self.use_global_stats = (bool(p.use_global_stats) if p.HasField("use_global_stats")
                                 else phase == "TEST")
        self.eps = float(p.eps)
        shape = self.bottom_shapes[0]
        if len(shape) < 1:
            raise shape_fail(self, "the bottom must have at least 1 axis")
        self.channels = 1 if len(shape) == 1 else shape[1]
        for i, ps in enumerate(lp.param[:3]):
            if ps.lr_mult != 0:
                raise fail(self, f"param[{i}].lr_mult is {ps.lr_mult}: batch normalization "
                                 f"statistics cannot be configured as learned parameters "
                                 f"(lr_mult must be 0)")
        for shp in ([self.channels], [self.channels], [1]):
            self.add_blob(shp)  # zeros, as Caffe's caffe_set(0)
        self.top_shapes = [shape]

    def forward(self, x):
        shape = x.shape
        # (N, C, rest): the channel axis is 1; a 1-D bottom is N x 1.
        x3 = x.reshape(shape[0], self.channels, -1)
        b0, b1, b2 = (b.detach() for b in self.blobs)
        if self.use_global_stats:
            s = b2[0]
            f = torch.where(s == 0, torch.zeros_like(s), 1.0 / torch.where(s == 0, torch.ones_like(s), s))
            mean, var = f * b0, f * b1
        else:
            mean = x3.mean(dim=(0, 2))
            xc0 = x3 - mean.view(1, -1, 1)
            var = (xc0 * xc0).mean(dim=(0, 2))
            self._update_running(mean.detach(), var.detach(), x.numel() // self.channels)
        y = (x3 - mean.view(1, -1, 1)) / (var + self.eps).sqrt().view(1, -1, 1)
        return y.reshape(shape)

    @torch.no_grad()
    def _update_running(self, mean, var, m: int):
        b0, b1, b2 = self.blobs
        b2.mul_(self.maf).add_(1.0)
        b0.mul_(self.maf).add_(mean)
        corr = float(m) / (m - 1) if m > 1 else 1.0
        b1.mul_(self.maf).add_(corr * var)
