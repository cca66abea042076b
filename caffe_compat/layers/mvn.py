"""MVN: mirrors src/caffe/layers/mvn_layer.cpp (BVLC/caffe 9b89154).

y = x - mean(x), and with normalize_variance y = (x - mean(x)) / (sqrt(mean((x - mean)^2)) + eps):
eps is added AFTER the square root.  The mean/variance run over (H, W) of each (n, c), or
over (C, H, W) of each n with across_channels.

Params (mvn_param): normalize_variance (true), across_channels (false), eps (1e-9).
Arity: 1 bottom (at most 4 axes, read as num/channels/height/width) -> 1 top, same shape.
No blobs.  Backward is Caffe's: (g - mean(g) - y * mean(g * y)) / (sigma + eps), which treats
d(sigma + eps) like d(sigma) scaled by sigma/(sigma + eps) -- finite even for sigma = 0.
"""
from __future__ import annotations


from ._grad import straight_through
from ._params import shape_fail
from ._registry import register
from .base import CaffeLayer


@register("MVN")
class MVN(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.mvn_param
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        shape = self.bottom_shapes[0]
        if not 1 <= len(shape) <= 4:
            raise shape_fail(self, f"the bottom must have 1 to 4 axes (num, channels, height, "
                                   f"width); got {list(shape)}")
        self.top_shapes = [shape]

    def forward(self, x):
        # Caffe's legacy 4-D view: num = shape(0), then channels, height, width (1 if absent).
        shape = x.shape
        x4 = x.reshape(tuple(shape) + (1,) * (4 - x.dim()))
        dims = (1, 2, 3) if self.across_channels else (2, 3)
        xc = x4 - x4.mean(dim=dims, keepdim=True)
        if not self.normalize_variance:
            return xc.reshape(shape)
        var = (xc * xc).mean(dim=dims, keepdim=True)
        sigma = var.sqrt()
        value = xc / (sigma + self.eps)
        # Same value, Caffe's gradient: s = sqrt(var + 2 eps sigma + eps^2) equals sigma + eps
        # with ds = d(var) / (2 (sigma + eps)).
        s = (var + (2.0 * self.eps) * sigma.detach() + self.eps * self.eps).sqrt()
        return straight_through(value, xc / s).reshape(shape)
