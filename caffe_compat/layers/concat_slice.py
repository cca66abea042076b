"""Concat and Slice: mirror src/caffe/layers/{concat,slice}_layer.cpp (BVLC/caffe 9b89154).

Concat: top = cat(bottoms, axis); every other axis must agree.  concat_param.axis (1) or the
  legacy concat_dim (never both).  n >= 1 bottoms, one top.
Slice: tops = split(bottom, axis) at slice_point (#tops - 1 increasing points), or into #tops
  equal parts (the axis must divide).  slice_param.axis (1) or legacy slice_dim.  No blobs.
"""
from __future__ import annotations

import torch

from ._params import canonical_axis, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


def _legacy_axis(layer, param, name: str, legacy: str, num_axes: int) -> int:
    """axis, or the uint32 legacy field (``concat_dim``/``slice_dim``); both is an error."""
    if param.HasField("axis") and param.HasField(legacy):
        raise fail(layer, f"either {name}.axis or {name}.{legacy} may be given, not both")
    if param.HasField(legacy):
        axis = int(getattr(param, legacy))
        if not 0 <= axis < num_axes:
            raise fail(layer, f"{name}.{legacy} {axis} is out of range for a {num_axes}-axis blob")
        return axis
    return canonical_axis(layer, int(param.axis), num_axes, f"{name}.axis")


@register("Concat", bottoms=(1, None), tops=1)
class Concat(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        cp = lp.concat_param
        if "hash_file" in cp.DESCRIPTOR.fields_by_name and cp.HasField("hash_file"):
            raise fail(self, f"concat_param.hash_file ({cp.hash_file!r}, a Jigsaw++ fork option) "
                             "is not supported")
        first = self.bottom_shapes[0]
        self.axis = _legacy_axis(self, cp, "concat_param", "concat_dim", len(first))
        total = 0
        for i, s in enumerate(self.bottom_shapes):
            if len(s) != len(first):
                raise shape_fail(self, f"all bottoms need the same number of axes "
                                       f"(bottom[0] {first}, bottom[{i}] {s})")
            for a in range(len(first)):
                if a != self.axis and s[a] != first[a]:
                    raise shape_fail(self, f"bottoms must agree on every axis but {self.axis} "
                                           f"(bottom[0] {first}, bottom[{i}] {s})")
            total += s[self.axis]
        top = list(first)
        top[self.axis] = total
        self.top_shapes = [tuple(top)]

    def forward(self, *xs):
        return torch.cat(xs, dim=self.axis)


@register("Slice", bottoms=1, tops=(1, None))
class Slice(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        sp = lp.slice_param
        shape = self.bottom_shapes[0]
        self.axis = _legacy_axis(self, sp, "slice_param", "slice_dim", len(shape))
        n_top = max(len(lp.top), 1)
        dim = shape[self.axis]
        points = [int(p) for p in sp.slice_point]
        if points:
            if len(points) != n_top - 1:
                raise fail(self, f"slice_point needs #tops - 1 = {n_top - 1} entries, got {len(points)}")
            if n_top > dim:
                raise shape_fail(self, f"{n_top} tops cannot slice axis {self.axis} of size {dim}")
            prev, sizes = 0, []
            for p in points:
                if p <= prev:
                    raise fail(self, f"slice_point must be strictly increasing and positive (got {points})")
                sizes.append(p - prev)
                prev = p
            if prev > dim:
                raise shape_fail(self, f"slice_point {prev} is beyond axis {self.axis} of size {dim}")
            sizes.append(dim - prev)
        else:
            if dim % n_top:
                raise shape_fail(self, f"axis {self.axis} of size {dim} does not divide into "
                                       f"{n_top} equal slices")
            sizes = [dim // n_top] * n_top
        self.sizes = sizes
        self.top_shapes = [shape[:self.axis] + (s,) + shape[self.axis + 1:] for s in sizes]

    def forward(self, x):
        parts = torch.split(x, self.sizes, dim=self.axis)
        return parts[0] if len(parts) == 1 else tuple(parts)
