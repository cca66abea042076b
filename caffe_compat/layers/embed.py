"""Embed: mirrors src/caffe/layers/embed_layer.cpp (BVLC/caffe 9b89154).

top[..., :] = W[int(x[...]), :] (+ b): a one-hot inner product; the bottom holds indices
as floats, each CHECKed to be an integer in [0, input_dim).

Params (embed_param): num_output, input_dim, bias_term (true), weight_filler, bias_filler.
Arity: 1 bottom of any shape -> 1 top of shape bottom.shape + (num_output,).  Blobs:
weight (input_dim, num_output), bias (num_output,).  No gradient reaches the bottom (Caffe
refuses to backpropagate to the indices); the weight gradient scatter-adds top rows.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._params import fail
from ._registry import register
from .base import CaffeLayer


def _eager() -> bool:
    # Value checks only run eagerly: tracing/export must not branch on tensor values.
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


@register("Embed")
class Embed(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.embed_param
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        if self.num_output <= 0:
            raise fail(self, f"num_output must be > 0 (got {self.num_output})")
        if self.input_dim <= 0:
            raise fail(self, f"input_dim must be > 0 (got {self.input_dim})")
        self.bias_term = bool(p.bias_term)
        self.add_blob((self.input_dim, self.num_output), p.weight_filler)
        if self.bias_term:
            self.add_blob((self.num_output,), p.bias_filler)
        self.top_shapes = [self.bottom_shapes[0] + (self.num_output,)]

    def _check(self, x):
        bad = (x != torch.floor(x)) | (x < 0) | (x >= self.input_dim)
        if bool(bad.any()):
            i = tuple(int(v) for v in bad.nonzero()[0])
            v = float(x[i])
            why = ("is not an integer" if v != float(int(v)) else
                   f"is outside [0, input_dim = {self.input_dim})")
            raise fail(self, f"bottom value {v!r} at index {i} {why}")

    def forward(self, x):
        if _eager():
            self._check(x.detach())
        y = F.embedding(x.detach().long(), self.blobs[0])
        if self.bias_term:
            y = y + self.blobs[1]
        return y
