"""PReLU: mirrors src/caffe/layers/prelu_layer.cpp (BVLC/caffe 9b89154).

y = max(x,0) + a_c*min(x,0); dy/dx = (x>0) + a_c*(x<=0); dy/da_c = sum x*(x<=0)*dy over n and space.
Params (prelu_param): channel_shared (false), filler (default constant 0.25).  The bottom has
at least 2 axes, channels = axis 1.  One bottom, one top.  Blob: slopes (C,), or a 0-axis
blob (shape ()) if channel_shared, as Caffe stores it.
"""
from __future__ import annotations

import torch.nn.functional as F

from ..proto import caffe_pb2
from ._params import shape_fail
from ._registry import register
from .neuron import _Neuron


@register("PReLU")
class PReLU(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        pp = lp.prelu_param
        shape = self.bottom_shapes[0]
        if len(shape) < 2:
            raise shape_fail(self, f"the bottom needs at least 2 axes (N, C, ...), got shape {shape}")
        self.channel_shared = bool(pp.channel_shared)
        if pp.HasField("filler"):
            filler = pp.filler
        else:
            filler = caffe_pb2.FillerParameter(type="constant", value=0.25)
        self.add_blob(() if self.channel_shared else (shape[1],), filler)

    def forward(self, x):
        # F.prelu's backward takes the slope branch at x == 0, like Caffe's (x <= 0).
        return F.prelu(x, self.blobs[0].reshape(-1))
