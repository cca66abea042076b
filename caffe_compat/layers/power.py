"""Power, Exp, Log: mirror src/caffe/layers/{power,exp,log}_layer.cpp (BVLC/caffe 9b89154).

Power: y = (shift + scale*x)^power; backward as Caffe special-cases it: 0 if scale*power == 0,
  scale*power if power == 1, 2*scale*(shift + scale*x) if power == 2, power*y/x if shift == 0,
  else scale*power*y/(shift + scale*x)  (so 0/0 points give NaN exactly where Caffe does).
Exp: y = base^(shift + scale*x) = outer*exp(inner*x), inner = ln(base)*scale, outer = base^shift.
Log: y = log_base(shift + scale*x) = ln(shift + scale*x)/ln(base).
base -1 means e.  One bottom, one top of its shape, no blobs.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ._params import fail
from ._registry import register
from .neuron import _Neuron


class _PowerGrad(torch.autograd.Function):
    """y = (shift + scale*x)^power with Caffe's backward formulas (power_layer.cpp Backward_cpu)."""

    @staticmethod
    def forward(ctx, x, power, scale, shift):
        y = torch.pow(x * scale + shift, power)
        ctx.save_for_backward(x, y)
        ctx.consts = (power, scale, shift)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, y = ctx.saved_tensors
        power, scale, shift = ctx.consts
        diff_scale = power * scale
        if power == 2:
            d = x * (diff_scale * scale) + diff_scale * shift
        elif shift == 0:
            d = y / x * power
        else:
            d = y / (x * scale + shift) * diff_scale
        return gy * d, None, None, None


@register("Power")
class Power(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        pp = lp.power_param
        self.power, self.scale, self.shift = float(pp.power), float(pp.scale), float(pp.shift)

    def forward(self, x):
        p, a, b = self.power, self.scale, self.shift
        if p * a == 0:
            # Caffe ignores the input: a constant top and a zero gradient.
            value = 1.0 if p == 0 else float(np.power(np.float32(b), np.float32(p)))
            return torch.full_like(x, value)
        if p == 1:
            return x * a + b  # gradient scale*power == scale, as Caffe
        if torch.is_grad_enabled() and x.requires_grad:
            return _PowerGrad.apply(x, p, a, b)
        return torch.pow(x * a + b, p)


def _log_base(layer, base: float, field: str) -> float:
    if base != -1 and not base > 0:
        raise fail(layer, f"{field}.base must be strictly positive or -1 for e (got {base})")
    return 1.0 if base == -1 else float(np.float32(math.log(base)))


@register("Exp")
class Exp(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        ep = lp.exp_param
        base, scale, shift = float(ep.base), float(ep.scale), float(ep.shift)
        log_base = _log_base(self, base, "exp_param")
        self.inner = float(np.float32(log_base) * np.float32(scale))
        if shift == 0:
            self.outer = 1.0
        else:
            self.outer = float(np.float32(math.exp(shift) if base == -1 else base ** shift))

    def forward(self, x):
        y = torch.exp(x * self.inner if self.inner != 1 else x)
        return y * self.outer if self.outer != 1 else y


@register("Log")
class Log(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        lg = lp.log_param
        base = float(lg.base)
        log_base = _log_base(self, base, "log_param")
        if log_base == 0:
            raise fail(self, f"log_param.base {base} gives 1/log(base) = inf")
        self.base_scale = float(np.float32(1.0) / np.float32(log_base))
        self.scale, self.shift = float(lg.scale), float(lg.shift)

    def forward(self, x):
        z = x * self.scale if self.scale != 1 else x
        z = z + self.shift if self.shift != 0 else z
        y = torch.log(z)
        return y * self.base_scale if self.base_scale != 1 else y
