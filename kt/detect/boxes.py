"""Box arithmetic of Fast R-CNN: inclusive-pixel IoU, regression deltas and their inverse, clipping.

Boxes are ``[x1, y1, x2, y2]``, 0-based, inclusive (a box of one pixel has
width 1: ``x2 - x1 + 1``), as the fork keeps them after subtracting 1 from
VOC's 1-based XML (lib/datasets/pascal_voc.py:214-217).
"""
from __future__ import annotations

import numpy as np

EPS = 1e-14   # lib/fast_rcnn/config.py:125 (cfg.EPS)


def overlaps(boxes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """IoU matrix (N, K), lib/utils/bbox.pyx:15-55: areas and intersections with ``+ 1``; 0 when disjoint."""
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    q = np.asarray(query, np.float64).reshape(-1, 4)
    iw = np.minimum(b[:, None, 2], q[None, :, 2]) - np.maximum(b[:, None, 0], q[None, :, 0]) + 1
    ih = np.minimum(b[:, None, 3], q[None, :, 3]) - np.maximum(b[:, None, 1], q[None, :, 1]) + 1
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_b = (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    area_q = (q[:, 2] - q[:, 0] + 1) * (q[:, 3] - q[:, 1] + 1)
    union = area_b[:, None] + area_q[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(inter > 0, inter / union, 0.0)
    return out


def deltas(ex: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(dx, dy, dw, dh) taking ``ex`` onto ``gt``, lib/roi_data_layer/roidb.py:104-117 (widths ``x2 - x1 + EPS``)."""
    ex = np.asarray(ex, np.float64)
    gt = np.asarray(gt, np.float64)
    ew = ex[:, 2] - ex[:, 0] + EPS
    eh = ex[:, 3] - ex[:, 1] + EPS
    ex_x = ex[:, 0] + 0.5 * ew
    ex_y = ex[:, 1] + 0.5 * eh
    gw = gt[:, 2] - gt[:, 0] + EPS
    gh = gt[:, 3] - gt[:, 1] + EPS
    gx = gt[:, 0] + 0.5 * gw
    gy = gt[:, 1] + 0.5 * gh
    return np.stack([(gx - ex_x) / ew, (gy - ex_y) / eh, np.log(gw / ew), np.log(gh / eh)], axis=1)


def apply_deltas(boxes: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Class-specific boxes from per-class deltas (R, 4K), lib/fast_rcnn/test.py:107-140."""
    boxes = np.asarray(boxes, np.float64)
    if boxes.shape[0] == 0:
        return np.zeros((0, d.shape[1]))
    w = boxes[:, 2] - boxes[:, 0] + EPS
    h = boxes[:, 3] - boxes[:, 1] + EPS
    cx = boxes[:, 0] + 0.5 * w
    cy = boxes[:, 1] + 0.5 * h
    px = d[:, 0::4] * w[:, None] + cx[:, None]
    py = d[:, 1::4] * h[:, None] + cy[:, None]
    pw = np.exp(d[:, 2::4]) * w[:, None]
    ph = np.exp(d[:, 3::4]) * h[:, None]
    out = np.zeros(d.shape)
    out[:, 0::4] = px - 0.5 * pw
    out[:, 1::4] = py - 0.5 * ph
    out[:, 2::4] = px + 0.5 * pw
    out[:, 3::4] = py + 0.5 * ph
    return out


def clip(boxes: np.ndarray, height: int, width: int) -> np.ndarray:
    """Clip every 4-column group to [0, width-1] x [0, height-1], lib/fast_rcnn/test.py:142-152 (in place)."""
    boxes[:, 0::4] = np.maximum(boxes[:, 0::4], 0)
    boxes[:, 1::4] = np.maximum(boxes[:, 1::4], 0)
    boxes[:, 2::4] = np.minimum(boxes[:, 2::4], width - 1)
    boxes[:, 3::4] = np.minimum(boxes[:, 3::4], height - 1)
    return boxes
