"""Filter, BatchReindex, Parameter: mirror src/caffe/layers/{filter,batch_reindex,parameter}_layer.cpp (BVLC/caffe 9b89154).

Filter: top_t = bottom_t[n for n if selector[n] != 0]; bottoms: K data blobs then the selector
  (N, or N x 1 x ...), K tops; unselected items get a zero gradient.  The top's first axis
  depends on the selector's values: top_shapes report N (Caffe's first Reshape does the same).
BatchReindex: top = bottom[0][bottom[1]] along axis 0 (bottom[1]: 1-D float indices);
  the gradient accumulates over repeated indices.  2 bottoms, one top.
Parameter: top = a learnable blob of parameter_param.shape (zeros).  No bottoms, one top.
"""
from __future__ import annotations

import torch

from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("Filter", bottoms=(2, None), tops=(1, None))
class Filter(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        *data, sel = self.bottom_shapes
        if len(lp.top) and len(lp.top) != len(data):
            raise fail(self, f"needs #bottoms - 1 = {len(data)} tops, got {len(lp.top)}")
        if any(d != 1 for d in sel[1:]):
            raise shape_fail(self, f"the selector (last bottom) must be N x 1 x ... (got {sel})")
        for i, s in enumerate(data):
            if s[0] != sel[0]:
                raise shape_fail(self, f"bottom[{i}] {s} and the selector {sel} disagree on axis 0")
        self.top_shapes = list(data)

    def forward(self, *xs):
        *data, sel = xs
        idx = torch.nonzero(sel.detach().reshape(-1) != 0).reshape(-1)
        out = tuple(torch.index_select(x, 0, idx) for x in data)
        return out[0] if len(out) == 1 else out


@register("BatchReindex", bottoms=2, tops=1)
class BatchReindex(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        data, idx = self.bottom_shapes
        if len(idx) != 1:
            raise shape_fail(self, f"bottom[1] (the indices) must be 1-D (got shape {idx})")
        self.top_shapes = [(idx[0],) + data[1:]]

    def forward(self, x, idx):
        # Caffe casts the float indices with static_cast<int> (truncation), as .long() does.
        return torch.index_select(x, 0, idx.detach().reshape(-1).long())


@register("Parameter", bottoms=0, tops=1)
class Parameter(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        shape = tuple(int(d) for d in lp.parameter_param.shape.dim)
        if any(d < 0 for d in shape):
            raise fail(self, f"parameter_param.shape {list(shape)} has a negative dimension")
        self.add_blob(shape)
        self.top_shapes = [shape]

    def forward(self):
        return self.blobs[0]
