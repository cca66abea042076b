"""Scale: mirrors src/caffe/layers/scale_layer.cpp (BVLC/caffe 9b89154).

y = x * s (+ b with bias_term), s and b broadcast over bottom[0] from ``axis``:
s has shape bottom[0].shape[axis : axis + s.ndim] (a 0-axis s is one scalar factor).

Params (scale_param): axis (1), num_axes (1; -1 = to the end; learned blob only), filler
(default constant 1), bias_term (false), bias_filler (default constant 0).  Arity: 1 bottom
with a learned scale blobs[0] (bias, if any, blobs[1]), or 2 bottoms with s = bottom[1]
(the bias, if any, is then blobs[0]) -> 1 top.
"""
from __future__ import annotations

from ._registry import register
from .base import CaffeLayer
from .bias import broadcast_view, default_filler, operand_shape


@register("Scale", bottoms=(1, 2), tops=1)
class Scale(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.scale_param
        b0 = self.bottom_shapes[0]
        self.learned_scale = len(self.bottom_shapes) == 1
        if self.learned_scale:
            shape = operand_shape(self, b0, int(p.axis), int(p.num_axes), "scale")
            self.add_blob(shape, default_filler(p.filler, 1.0))
        else:
            shape = self.bottom_shapes[1]
        self.view = broadcast_view(self, b0, shape, int(p.axis), "scale")
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            # Caffe's internal Bias layer: same axis/num_axes over bottom[0]; the bias has the
            # scale's shape.
            self.add_blob(shape, default_filler(p.bias_filler, 0.0))
        self.top_shapes = [b0]

    def forward(self, x, s=None):
        s = self.blobs[0] if s is None else s
        y = x * s.reshape(self.view)
        if self.bias_term:
            y = y + self.blobs[-1].reshape(self.view)
        return y
