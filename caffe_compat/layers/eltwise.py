"""Eltwise: mirrors src/caffe/layers/eltwise_layer.cpp (BVLC/caffe 9b89154).

PROD: y = prod_i x_i; SUM (default): y = sum_i coeff_i * x_i; MAX: y = max_i x_i, and only the
winning bottom receives the gradient: a tie of bottoms 0 and 1 goes to bottom 1 (Caffe tests
a > b), a tie with any later bottom to the earlier one (strict >).
PROD backward: stable_prod_grad (true) multiplies the other bottoms; false uses dy * y / x_i.
Params (eltwise_param): operation, coeff (none, or one per bottom; SUM only), stable_prod_grad.
n >= 2 bottoms of one shape (no broadcast), one top, no blobs.
"""
from __future__ import annotations

import torch

from ..proto import caffe_pb2
from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer

_OP = caffe_pb2.EltwiseParameter


@register("Eltwise", bottoms=(2, None), tops=1)
class Eltwise(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        ep = lp.eltwise_param
        self.op = int(ep.operation)
        if self.op not in (_OP.PROD, _OP.SUM, _OP.MAX):
            raise fail(self, f"unknown eltwise_param.operation {self.op}")
        coeff = [float(c) for c in ep.coeff]
        if coeff and len(coeff) != len(bottom_shapes):
            raise fail(self, f"eltwise_param.coeff needs one entry per bottom "
                             f"({len(bottom_shapes)} bottoms, {len(coeff)} coeffs)")
        if coeff and self.op != _OP.SUM:
            raise fail(self, f"eltwise_param.coeff is only allowed with operation SUM "
                             f"(got {_OP.EltwiseOp.Name(self.op)})")
        self.coeff = coeff or [1.0] * len(bottom_shapes)
        self.stable_prod_grad = bool(ep.stable_prod_grad)
        for i, s in enumerate(self.bottom_shapes[1:], 1):
            if s != self.bottom_shapes[0]:
                raise shape_fail(self, f"bottoms must have one shape (bottom[0] {self.bottom_shapes[0]}, "
                                       f"bottom[{i}] {s})")
        self.top_shapes = [self.bottom_shapes[0]]

    def forward(self, *xs):
        if self.op == _OP.SUM:
            y = xs[0] * self.coeff[0] if self.coeff[0] != 1 else xs[0]
            for c, x in zip(self.coeff[1:], xs[1:]):
                y = y + (x * c if c != 1 else x)
            return y
        if self.op == _OP.MAX:
            # Order (x1, x0, x2, ...) makes "first maximum" reproduce Caffe's tie rule; argmax
            # returns the first maximal index and gather routes the gradient to it only.
            stacked = torch.stack((xs[1], xs[0]) + tuple(xs[2:]), 0)
            idx = torch.argmax(stacked, dim=0, keepdim=True)
            return torch.gather(stacked, 0, idx).squeeze(0)
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        if self.stable_prod_grad:
            return y
        if torch.is_grad_enabled() and any(x.requires_grad for x in xs):
            return _UnstableProd.apply(*xs)
        return y


class _UnstableProd(torch.autograd.Function):
    """Product whose backward is Caffe's stable_prod_grad: false form, dx_i = dy * y / x_i."""

    @staticmethod
    def forward(ctx, *xs):
        y = xs[0]
        for x in xs[1:]:
            y = y * x
        ctx.save_for_backward(y, *xs)
        return y

    @staticmethod
    def backward(ctx, gy):
        y, *xs = ctx.saved_tensors
        return tuple(gy * y / x for x in xs)
