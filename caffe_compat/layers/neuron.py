"""Elementwise neuron layers: mirror src/caffe/layers/{relu,elu,sigmoid,tanh,absval,bnll,threshold,clip,swish}_layer.cpp (BVLC/caffe 9b89154).

ReLU: y = max(x,0) + slope*min(x,0); dy/dx = (x>0) + slope*(x<=0)  (relu_param.negative_slope, 0).
ELU: y = max(x,0) + alpha*(exp(min(x,0))-1); dy/dx = (x>0) + (alpha+y)*(x<=0)  (elu_param.alpha, 1).
Sigmoid: y = 1/(1+exp(-x)).  TanH: y = tanh(x).  AbsVal: y = |x|, dy/dx = sign(x) (0 at 0).
BNLL: y = x + log(1+exp(-x)) if x>0 else log(1+exp(x)); dy/dx = sigmoid(x).
Threshold: y = (x > threshold) (threshold_param.threshold, 0); no backward.
Clip (Caffe >= 1.0): y = max(min, min(x, max)); dy/dx = (min <= x <= max)  (clip_param.min/max).
Swish: y = x*sigmoid(beta*x)  (swish_param.beta, 1).
All: one bottom, one top of the bottom's shape (in place allowed), no blobs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._params import fail
from ._registry import register
from .base import CaffeLayer


class _Neuron(CaffeLayer):
    """A one-bottom, one-top elementwise layer: top shape = bottom shape."""

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.top_shapes = [self.bottom_shapes[0]]


@register("ReLU")
class ReLU(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.negative_slope = float(lp.relu_param.negative_slope)

    def forward(self, x):
        # torch's backward at x == 0 also takes the negative branch, as Caffe's (x <= 0) does.
        if self.negative_slope == 0.0:
            return F.relu(x)
        return F.leaky_relu(x, self.negative_slope)


@register("ELU")
class ELU(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.alpha = float(lp.elu_param.alpha)

    def forward(self, x):
        return F.elu(x, self.alpha)


@register("Sigmoid")
class Sigmoid(_Neuron):
    def forward(self, x):
        return torch.sigmoid(x)


@register("TanH")
class TanH(_Neuron):
    def forward(self, x):
        return torch.tanh(x)


@register("AbsVal")
class AbsVal(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        if len(lp.top) and len(lp.bottom) and lp.top[0] == lp.bottom[0]:
            # absval_layer.cpp: CHECK_NE(top, bottom) -- the backward needs the input.
            raise fail(self, f"cannot run in place (top {lp.top[0]!r} == bottom)")

    def forward(self, x):
        return torch.abs(x)


@register("BNLL")
class BNLL(_Neuron):
    def forward(self, x):
        # softplus is the stable log(1+exp(x)); its gradient is sigmoid(x) as in Caffe.
        return F.softplus(x)


@register("Threshold")
class Threshold(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.threshold = float(lp.threshold_param.threshold)

    def forward(self, x):
        return (x > self.threshold).to(x.dtype)


@register("Clip")
class Clip(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        cp = lp.clip_param
        if not (cp.HasField("min") and cp.HasField("max")):
            raise fail(self, "clip_param.min and clip_param.max are both required")
        self.min, self.max = float(cp.min), float(cp.max)

    def forward(self, x):
        # Two one-sided clamps, in Caffe's order, so min > max gives min everywhere as Caffe
        # does; each passes the gradient at its bound, as (x >= min && x <= max).
        return torch.clamp(torch.clamp(x, max=self.max), min=self.min)


@register("Swish")
class Swish(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.beta = float(lp.swish_param.beta)

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)
