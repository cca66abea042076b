"""Greedy non-maximum suppression, lib/utils/nms.py:10-37 of the fork (the Cython nms.pyx is the same rule).

Highest score first (``argsort()[::-1]``: among equal scores the later
index goes first, as NumPy's default sort makes the fork do); every
remaining box whose inclusive-pixel IoU with it is above ``thresh`` is
dropped (a box at exactly ``thresh`` is kept).
"""
from __future__ import annotations

from typing import List

import numpy as np


def nms(dets: np.ndarray, thresh: float) -> List[int]:
    """Indices of ``dets`` (N x 5: x1, y1, x2, y2, score) kept, in the order they were picked."""
    dets = np.asarray(dets, np.float64)
    if dets.size == 0:
        return []
    x1, y1, x2, y2, score = (dets[:, i] for i in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = score.argsort(kind="quicksort")[::-1]
    keep: List[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= thresh]
    return keep
