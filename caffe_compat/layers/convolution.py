"""Convolution: mirrors src/caffe/layers/conv_layer.cpp + base_conv_layer.cpp (BVLC/caffe 9b89154).

top[n, o, y] = b[o] + sum_{c in group(o), j} W[o, c, j] * x[n, c, y*s + j*d - p]   (cross-correlation);
out = (in + 2p - (d(k-1)+1)) / s + 1 (integer division), per spatial axis.

Params (convolution_param): num_output (> 0), bias_term (true), kernel_size / stride /
pad / dilation (repeated: once or once per spatial axis; 2-D also kernel_h/_w, stride_h/_w,
pad_h/_w), group (divides channels and num_output), axis (1: the channel axis; every axis
before it is batch), weight_filler, bias_filler.  1 to 3 spatial axes (Caffe's N-d im2col
allows more; refused here).  Arity: n bottoms -> n tops, all bottoms of one shape, one
shared set of weights.  Blobs: weight (num_output, C/group, *kernel), bias (num_output,).
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F

from ._params import canonical_axis, conv_geometry, count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


class _BaseConv(CaffeLayer):
    """Shared set-up of Convolution and Deconvolution (base_conv_layer.cpp LayerSetUp/Reshape)."""

    transposed = False

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        cp = lp.convolution_param
        if len(lp.top) and len(lp.top) != len(bottom_shapes):
            raise fail(self, f"needs as many tops as bottoms (got {len(bottom_shapes)} bottoms, "
                             f"{len(lp.top)} tops)")
        shape0 = self.bottom_shapes[0]
        for i, s in enumerate(self.bottom_shapes[1:], 1):
            if s != shape0:
                raise shape_fail(self, f"all bottoms must have the same shape: bottom[0] "
                                       f"{list(shape0)} vs bottom[{i}] {list(s)}")
        self.axis = canonical_axis(self, int(cp.axis), len(shape0))
        n_spatial = len(shape0) - self.axis - 1
        if n_spatial not in _CONV:
            raise fail(self, f"{n_spatial} spatial axes (bottom {list(shape0)}, axis {self.axis}); "
                             f"caffekt supports 1 to 3")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, n_spatial)
        self.channels = shape0[self.axis]
        self.num_output = int(cp.num_output)
        if self.num_output <= 0:
            raise fail(self, f"num_output must be > 0 (got {self.num_output})")
        self.group = int(cp.group)
        if self.group <= 0 or self.channels % self.group:
            raise fail(self, f"group {self.group} must divide the {self.channels} input channels")
        if self.num_output % self.group:
            raise fail(self, f"num_output {self.num_output} must be a multiple of group {self.group}")
        out_c, in_c = ((self.channels, self.num_output) if self.transposed
                       else (self.num_output, self.channels))
        self.add_blob([out_c, in_c // self.group] + self.kernel, cp.weight_filler)
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.add_blob([self.num_output], cp.bias_filler)
        spatial = self._output_spatial(list(shape0[self.axis + 1:]))
        top = tuple(shape0[:self.axis]) + (self.num_output,) + tuple(spatial)
        self.top_shapes = [top for _ in self.bottom_shapes]

    def _output_spatial(self, spatial: List[int]) -> List[int]:
        out = []
        for i, size in enumerate(spatial):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            if size + 2 * self.pad[i] < ext:
                raise shape_fail(self, f"spatial axis {i}: input {size} + 2*pad {self.pad[i]} is "
                                       f"smaller than the dilated kernel {ext}")
            out.append((size + 2 * self.pad[i] - ext) // self.stride[i] + 1)
        return out

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:self.axis]
        x = x.reshape((count(x.shape, 0, self.axis),) + tuple(x.shape[self.axis:]))
        fn = (_CONV_T if self.transposed else _CONV)[len(self.kernel)]
        bias = self.blobs[1] if self.bias_term else None
        y = fn(x, self.blobs[0], bias, stride=self.stride, padding=self.pad,
               dilation=self.dilation, groups=self.group)
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))

    def forward(self, *bottoms):
        tops = tuple(self._conv(b) for b in bottoms)
        return tops[0] if len(tops) == 1 else tops


@register("Convolution", bottoms=(1, None), tops=(1, None))
class Convolution(_BaseConv):
    transposed = False
