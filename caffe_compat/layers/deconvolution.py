"""Deconvolution: mirrors src/caffe/layers/deconv_layer.cpp + base_conv_layer.cpp (BVLC/caffe 9b89154).

The transpose (gradient) of Convolution: top = conv_transpose(x, W) + b, with
out = s(in - 1) + d(k - 1) + 1 - 2p per spatial axis (no output padding).

Params: convolution_param, read exactly as Convolution reads it.  Arity: n bottoms -> n
tops.  Blobs: weight (C_in, num_output/group, *kernel) -- PyTorch's ConvTranspose
layout -- and bias (num_output,).  A bilinear weight_filler with lr_mult 0 is the FCN
upsampling idiom.
"""
from __future__ import annotations

from typing import List

from .convolution import _BaseConv
from ._params import shape_fail
from ._registry import register


@register("Deconvolution", bottoms=(1, None), tops=(1, None))
class Deconvolution(_BaseConv):
    transposed = True

    def _output_spatial(self, spatial: List[int]) -> List[int]:
        out = []
        for i, size in enumerate(spatial):
            o = self.stride[i] * (size - 1) + self.dilation[i] * (self.kernel[i] - 1) + 1 - 2 * self.pad[i]
            if o <= 0:
                raise shape_fail(self, f"spatial axis {i}: output size {o} is not positive "
                                       f"(input {size}, kernel {self.kernel[i]}, stride "
                                       f"{self.stride[i]}, pad {self.pad[i]})")
            out.append(o)
        return out
