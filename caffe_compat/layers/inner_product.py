"""InnerProduct: mirrors src/caffe/layers/inner_product_layer.cpp (BVLC/caffe 9b89154).

y = x_flat . W^T + b (transpose: false, W is N x K) or y = x_flat . W (transpose: true, W
is K x N), where x_flat is bottom viewed as M x K, M = count(0, axis), K = count(axis, end).

Params (inner_product_param): num_output N, bias_term (true), weight_filler, bias_filler,
axis (1, may be negative), transpose (false).  Arity: 1 bottom -> 1 top of shape
bottom.shape[:axis] + (N,).  Blobs: weight (N, K) or (K, N), bias (N,).  Legacy V1 weights
(1, 1, N, K) are reshaped by the weight loader, not here.
"""
from __future__ import annotations


from ._params import canonical_axis, count, fail
from ._registry import register
from .base import CaffeLayer


@register("InnerProduct")
class InnerProduct(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.inner_product_param
        shape = self.bottom_shapes[0]
        self.N = int(p.num_output)
        if self.N <= 0:
            raise fail(self, f"num_output must be > 0 (got {self.N})")
        self.axis = canonical_axis(self, int(p.axis), len(shape))
        self.K = count(shape, self.axis)
        self.transpose = bool(p.transpose)
        self.bias_term = bool(p.bias_term)
        self.add_blob((self.K, self.N) if self.transpose else (self.N, self.K), p.weight_filler)
        if self.bias_term:
            self.add_blob((self.N,), p.bias_filler)
        self.top_shapes = [tuple(shape[:self.axis]) + (self.N,)]

    def forward(self, x):
        lead = x.shape[:self.axis]
        xf = x.reshape(-1, self.K)
        w = self.blobs[0]
        y = xf.matmul(w) if self.transpose else xf.matmul(w.t())
        if self.bias_term:
            y = y + self.blobs[1]
        return y.reshape(tuple(lead) + (self.N,))
