"""Bias: mirrors src/caffe/layers/bias_layer.cpp (BVLC/caffe 9b89154).

y = x + b, with b broadcast over bottom[0] starting at ``axis``:
b has shape bottom[0].shape[axis : axis + b.ndim] (a 0-axis b is a scalar added everywhere).

Params (bias_param): axis (1, may be negative), num_axes (1; -1 = every axis from
``axis``; only for the learned blob), filler (default constant 0).  Arity: 1 bottom with a
learned blob b (blobs[0]), or 2 bottoms with b = bottom[1] (no blobs) -> 1 top.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from ._params import canonical_axis, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


def operand_shape(layer, bottom: Sequence[int], axis: int, num_axes: int, what: str) -> Tuple[int, ...]:
    """The learned blob's shape: bottom[axis : axis + num_axes] (-1: to the end)."""
    if num_axes < -1:
        raise fail(layer, f"num_axes must be non-negative, or -1 to extend to the end of "
                          f"bottom[0] (got {num_axes})")
    ax = canonical_axis(layer, axis, len(bottom))
    if num_axes == -1:
        return tuple(bottom[ax:])
    if len(bottom) < ax + num_axes:
        raise fail(layer, f"{what} blob's shape extends past bottom[0]'s shape "
                          f"{list(bottom)} when applied starting with axis {ax} (num_axes {num_axes})")
    return tuple(bottom[ax:ax + num_axes])


def broadcast_view(layer, bottom: Sequence[int], operand: Sequence[int], axis: int,
                   what: str) -> Tuple[int, ...]:
    """Reshape target that lines ``operand`` up with bottom[0] from ``axis`` (Reshape CHECKs)."""
    ax = 0 if len(operand) == 0 else canonical_axis(layer, axis, len(bottom))
    if len(bottom) < ax + len(operand):
        raise shape_fail(layer, f"{what} shape {list(operand)} does not fit bottom[0] "
                                f"{list(bottom)} from axis {ax}")
    for i, d in enumerate(operand):
        if bottom[ax + i] != d:
            raise shape_fail(layer, f"dimension mismatch between bottom[0] shape {list(bottom)} "
                                    f"(axis {ax + i}: {bottom[ax + i]}) and {what} shape "
                                    f"{list(operand)} (axis {i}: {d})")
    return (1,) * ax + tuple(operand) + (1,) * (len(bottom) - ax - len(operand))


def default_filler(fp, value: float):
    """A FillerParameter: ``fp`` if it was given, else constant ``value`` (Caffe's default)."""
    if fp is not None and fp.ByteSize():
        return fp
    out = type(fp)()
    out.type = "constant"
    out.value = value
    return out


@register("Bias", bottoms=(1, 2), tops=1)
class Bias(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.bias_param
        b0 = self.bottom_shapes[0]
        if len(self.bottom_shapes) == 1:
            shape = operand_shape(self, b0, int(p.axis), int(p.num_axes), "bias")
            self.add_blob(shape, default_filler(p.filler, 0.0))
        else:
            shape = self.bottom_shapes[1]
        self.view = broadcast_view(self, b0, shape, int(p.axis), "bias")
        self.top_shapes = [b0]

    def forward(self, x, b=None):
        b = self.blobs[0] if b is None else b
        return x + b.reshape(self.view)
