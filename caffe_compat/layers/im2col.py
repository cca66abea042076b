"""Im2col: mirrors src/caffe/layers/im2col_layer.cpp + util/im2col.cpp (BVLC/caffe 9b89154).

top[n, (c*kh + i)*kw + j, y, x] = bottom_padded[n, c, y*s_h + i*d_h, x*s_w + j*d_w]: each
output pixel holds its receptive field, channel-major then kernel row then column (zero
padding); out = (in + 2p - (d(k-1)+1)) / s + 1.  Backward is col2im (sums overlaps).

Params: convolution_param kernel/stride/pad/dilation (repeated or *_h/*_w), axis (1).
2 spatial axes (Caffe's N-d variant is refused).  Arity: 1 bottom -> 1 top
(lead..., C*kh*kw, out_h, out_w).  No blobs.
"""
from __future__ import annotations

import torch.nn.functional as F

from ._params import canonical_axis, conv_geometry, count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("Im2col")
class Im2col(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        cp = lp.convolution_param
        shape = self.bottom_shapes[0]
        self.axis = canonical_axis(self, int(cp.axis), len(shape))
        n_spatial = len(shape) - self.axis - 1
        if n_spatial != 2:
            raise fail(self, f"{n_spatial} spatial axes (bottom {list(shape)}); caffekt's Im2col "
                             f"supports 2")
        self.kernel, self.stride, self.pad, self.dilation = conv_geometry(self, cp, 2)
        out = []
        for i in range(2):
            ext = self.dilation[i] * (self.kernel[i] - 1) + 1
            size = shape[self.axis + 1 + i]
            if size + 2 * self.pad[i] < ext:
                raise shape_fail(self, f"spatial axis {i}: input {size} + 2*pad {self.pad[i]} is "
                                       f"smaller than the dilated kernel {ext}")
            out.append((size + 2 * self.pad[i] - ext) // self.stride[i] + 1)
        self.out = out
        C = shape[self.axis]
        self.top_shapes = [tuple(shape[:self.axis]) + (C * self.kernel[0] * self.kernel[1],) + tuple(out)]

    def forward(self, x):
        lead = x.shape[:self.axis]
        x4 = x.reshape((count(x.shape, 0, self.axis),) + tuple(x.shape[self.axis:]))
        cols = F.unfold(x4, self.kernel, dilation=self.dilation, padding=self.pad, stride=self.stride)
        return cols.reshape(tuple(lead) + (cols.shape[1],) + tuple(self.out))
