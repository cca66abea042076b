"""Dropout: mirrors src/caffe/layers/dropout_layer.cpp (BVLC/caffe 9b89154).

TRAIN: y = x * m * scale with m ~ Bernoulli(1 - ratio), scale = 1/(1 - ratio); TEST: y = x.
Fast R-CNN fork field scale_train (true): when false, TRAIN gives y = x*m and TEST y = x*(1-ratio).
Params (dropout_param): dropout_ratio (0.5, in [0, 1)).  One bottom, one top, no blobs.
The mask comes from a seeded torch generator (default seed: CRC32 of the layer name; see
``reseed``), so runs are repeatable but not bit-equal to Caffe's own RNG stream.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from ._params import fail
from ._registry import register
from .neuron import _Neuron


@register("Dropout")
class Dropout(_Neuron):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        dp = lp.dropout_param
        ratio = np.float32(dp.dropout_ratio)
        if not 0.0 <= ratio < 1.0:
            raise fail(self, f"dropout_param.dropout_ratio must be in [0, 1) (got {float(ratio)})")
        self.ratio = float(ratio)
        # Caffe computes 1/(1-ratio) in double from the float ratio, then stores it as float.
        self.scale = float(np.float32(1.0 / (1.0 - float(ratio))))
        self.scale_train = bool(dp.scale_train) if "scale_train" in dp.DESCRIPTOR.fields_by_name else True
        self._seed = zlib.crc32(self.layer_name.encode("utf-8"))
        self._generators: dict = {}

    def reseed(self, seed: int) -> None:
        """Restart the mask stream from ``seed`` (on every device)."""
        self._seed = int(seed)
        self._generators.clear()

    def _generator(self, device: torch.device) -> torch.Generator:
        g = self._generators.get(str(device))
        if g is None:
            g = torch.Generator(device=device)
            g.manual_seed(self._seed)
            self._generators[str(device)] = g
        return g

    def forward(self, x):
        if self.phase == "TRAIN" and self.training:
            u = torch.rand(x.shape, generator=self._generator(x.device), device=x.device)
            mask = (u >= self.ratio).to(x.dtype)
            return x * mask * self.scale if self.scale_train else x * mask
        if not self.scale_train:
            return x * float(np.float32(1.0 / self.scale))
        return x
