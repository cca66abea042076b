"""Crop: mirrors src/caffe/layers/crop_layer.cpp (BVLC/caffe 9b89154).

top = bottom[0][..., o_a : o_a + S_a, ...] for every axis a >= axis, where S = bottom[1].shape
(the reference) and o the offsets; axes before ``axis`` are kept whole.

Params (crop_param): axis (2, may be negative), offset (none: all 0; one: used for every
cropped axis; else one per cropped axis).  Arity: 2 bottoms (data, reference) -> 1 top.
No blobs.  Gradient flows to bottom[0] only (zeros outside the crop), never to bottom[1].
"""
from __future__ import annotations

from ._params import canonical_axis, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("Crop", bottoms=2, tops=1)
class Crop(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.crop_param
        a, ref = self.bottom_shapes
        if len(a) != len(ref):
            raise shape_fail(self, f"bottom[0] {list(a)} and bottom[1] {list(ref)} must have the "
                                   f"same number of axes")
        start = canonical_axis(self, int(p.axis), len(a))
        n_off = len(p.offset)
        if n_off > 1 and n_off != len(a) - start:
            raise fail(self, f"offset must be given once or once per cropped axis "
                             f"(given {n_off} times; {len(a) - start} axes from axis {start})")
        self.offsets, top = [], []
        for i in range(len(a)):
            if i < start:
                self.offsets.append(0)
                top.append(a[i])
                continue
            off = int(p.offset[0] if n_off == 1 else p.offset[i - start] if n_off else 0)
            if a[i] - off < ref[i]:
                raise shape_fail(self, f"invalid crop in axis {i}: bottom[0] size {a[i]} minus "
                                       f"offset {off} is smaller than the reference size {ref[i]}")
            self.offsets.append(off)
            top.append(ref[i])
        self.top_shapes = [tuple(top)]

    def forward(self, x, ref=None):
        idx = tuple(slice(o, o + n) for o, n in zip(self.offsets, self.top_shapes[0]))
        return x[idx]
