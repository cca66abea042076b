"""Flatten, Reshape, Tile: mirror src/caffe/layers/{flatten,reshape,tile}_layer.cpp (BVLC/caffe 9b89154).

Flatten: top = shape[:axis] + [prod(shape[axis:end_axis+1])] + shape[end_axis+1:]  (axis 1, end_axis -1).
Reshape: shape[axis:axis+num_axes] is replaced by reshape_param.shape, where 0 copies the bottom
  axis at that position and one -1 is inferred (axis 0, num_axes -1 = through the last axis).
Tile: top = the bottom repeated `tiles` times along `axis` (1), blockwise as np.tile on that axis.
All: one bottom, one top, no blobs; Flatten and Reshape keep the data order (a view).
"""
from __future__ import annotations

from ._params import canonical_axis, count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


def _not_in_place(layer, lp) -> None:
    if len(lp.top) and len(lp.bottom) and lp.top[0] == lp.bottom[0]:
        raise fail(layer, f"cannot run in place (top {lp.top[0]!r} == bottom)")


def _reshape_keeping_batch(x, bottom, top):
    """``x.reshape(top)``; when the layer keeps axis 0 it follows ``x``'s own batch (Caffe reshapes
    on every forward; an exported graph's batch axis is dynamic)."""
    if len(top) and len(bottom) and top[0] == bottom[0] and count(top[1:]) > 0:
        return x.reshape((-1,) + tuple(top[1:]))
    return x.reshape(top)


@register("Flatten")
class Flatten(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        _not_in_place(self, lp)
        s = self.bottom_shapes[0]
        fp = lp.flatten_param
        a = canonical_axis(self, int(fp.axis), len(s), "flatten_param.axis")
        e = canonical_axis(self, int(fp.end_axis), len(s), "flatten_param.end_axis")
        self.top_shapes = [s[:a] + (count(s, a, e + 1),) + s[e + 1:]]

    def forward(self, x):
        return _reshape_keeping_batch(x, self.bottom_shapes[0], self.top_shapes[0])


@register("Reshape")
class Reshape(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        _not_in_place(self, lp)
        s = self.bottom_shapes[0]
        rp = lp.reshape_param
        dims = [int(d) for d in rp.shape.dim]
        if dims.count(-1) > 1:
            raise fail(self, f"reshape_param.shape {dims} contains more than one -1 "
                             "(at most one dimension can be inferred)")
        for d in dims:
            if d < -1:
                raise fail(self, f"reshape_param.shape {dims}: dimension {d} must be >= -1")
        axis, num_axes = int(rp.axis), int(rp.num_axes)
        start = axis if axis >= 0 else len(s) + axis + 1
        if not 0 <= start <= len(s):
            raise fail(self, f"reshape_param.axis {axis} is out of range for a {len(s)}-axis bottom")
        if num_axes < -1:
            raise fail(self, f"reshape_param.num_axes must be >= 0, or -1 for all (got {num_axes})")
        end = len(s) if num_axes == -1 else start + num_axes
        if end > len(s):
            raise fail(self, f"reshape_param.axis + num_axes = {end} is beyond the bottom's "
                             f"{len(s)} axes")
        new = []
        for i, d in enumerate(dims):
            if d == 0:
                if start + i >= len(s):
                    raise fail(self, f"reshape_param.shape {dims} has a 0 at position {i} but the "
                                     f"bottom {s} has no axis {start + i} to copy")
                d = s[start + i]
            new.append(d)
        if -1 in new:
            known = count(s[:start]) * count(s[end:]) * count([d for d in new if d != -1])
            if known == 0 or count(s) % known:
                raise shape_fail(self, f"bottom count {count(s)} ({s}) is not divisible by the "
                                       f"product of the given dimensions ({known})")
            new[new.index(-1)] = count(s) // known
        top = s[:start] + tuple(new) + s[end:]
        if count(top) != count(s):
            raise shape_fail(self, f"output count {count(top)} ({top}) must match the input count "
                                   f"{count(s)} ({s})")
        self.top_shapes = [top]

    def forward(self, x):
        return _reshape_keeping_batch(x, self.bottom_shapes[0], self.top_shapes[0])


@register("Tile")
class Tile(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        s = self.bottom_shapes[0]
        tp = lp.tile_param
        self.axis = canonical_axis(self, int(tp.axis), len(s), "tile_param.axis")
        self.tiles = int(tp.tiles)
        if not tp.HasField("tiles") or self.tiles <= 0:
            raise fail(self, f"tile_param.tiles must be given and positive (got {self.tiles})")
        top = list(s)
        top[self.axis] *= self.tiles
        self.top_shapes = [tuple(top)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.axis] = self.tiles
        return x.repeat(*reps)
