"""Split and Silence: the plumbing layers (split_layer.cpp, silence_layer.cpp).

The net builder never inserts Split layers (a blob read by several layers is
simply the same tensor, and autograd sums the gradients as Split's backward
does); these classes run the ones written explicitly in a prototxt.
"""
from __future__ import annotations

from ._registry import register
from .base import CaffeLayer


@register("Split", bottoms=1, tops=(1, None))
class Split(CaffeLayer):
    """Split (split_layer.cpp): top[i] = bottom for every i; backward sums the top diffs."""

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.top_shapes = [self.bottom_shapes[0]] * len(lp.top)
        self._n = len(lp.top)

    def forward(self, x):
        return x if self._n == 1 else tuple(x for _ in range(self._n))


@register("Silence", bottoms=(1, None), tops=0)
class Silence(CaffeLayer):
    """Silence (silence_layer.cpp): consumes its bottoms, no top; bottom diffs are zero."""

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.top_shapes = []

    def forward(self, *bottoms):
        return ()
