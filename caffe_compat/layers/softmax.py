"""Softmax: mirrors src/caffe/layers/softmax_layer.cpp (BVLC/caffe 9b89154).

y[o, c, i] = exp(x[o, c, i] - max_c x[o, :, i]) / sum_c' exp(x[o, c', i] - max_c x[o, :, i]),
over the single axis softmax_param.axis (1; negative counts from the end).
Backward: dx = (dy - sum_c dy*y) * y.  One bottom, one top of its shape, no blobs.
"""
from __future__ import annotations

import torch

from ._params import canonical_axis
from ._registry import register
from .neuron import _Neuron


@register("Softmax")
class Softmax(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.axis = canonical_axis(self, int(lp.softmax_param.axis), len(self.bottom_shapes[0]),
                                   "softmax_param.axis")

    def forward(self, x):
        return torch.softmax(x, dim=self.axis)
