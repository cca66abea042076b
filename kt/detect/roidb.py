"""The training ROI database: ground truth + proposals per image, flips, overlaps, regression targets.

Order and rules of the fork: ``merge_roidbs`` puts the ground-truth boxes
before the proposals (lib/datasets/imdb.py:180-189; pascal_voc.py:123-126);
a proposal's overlap is its best IoU with any ground-truth box, credited to
that box's class (imdb.py:153-178; stored float32 as the fork's
``gt_overlaps`` are); flipped copies mirror x (imdb.py:94-110);
``max_overlaps``/``max_classes`` (roi_data_layer/roidb.py:14-38); regression
targets for every box with overlap >= BBOX_THRESH towards the ground-truth
box (overlap == 1) it overlaps most (roidb.py:84-125), then normalised per
class by the dataset's means and stds (roidb.py:40-82; counts start at EPS).
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import numpy as np

from . import boxes as B

Entry = Dict[str, object]


def build(records, proposals: Sequence[np.ndarray]) -> List[Entry]:
    """One entry per record: ground truth first, then its proposals, with per-box overlaps."""
    out = []
    for rec, props in zip(records, proposals):
        gt = np.asarray(rec.boxes, np.float32).reshape(-1, 4)
        props = np.asarray(props, np.float32).reshape(-1, 4)
        ov = np.zeros(props.shape[0], np.float32)
        cls = np.zeros(props.shape[0], np.int64)
        if gt.shape[0] and props.shape[0]:
            iou = B.overlaps(props, gt)
            best = iou.argmax(axis=1)
            m = iou.max(axis=1)
            pos = m > 0
            ov[pos] = m[pos].astype(np.float32)
            cls[pos] = rec.classes[best[pos]]
        out.append({
            "index": rec.index, "image": rec.image, "width": rec.width, "height": rec.height,
            "flipped": False,
            "boxes": np.vstack([gt, props]).astype(np.float32),
            "gt_classes": np.concatenate([rec.classes.astype(np.int64), np.zeros(props.shape[0], np.int64)]),
            "max_overlaps": np.concatenate([np.ones(gt.shape[0], np.float32), ov]),
            "max_classes": np.concatenate([rec.classes.astype(np.int64), cls]),
        })
    return out


def flipped(entries: List[Entry]) -> List[Entry]:
    """imdb.py:94-110: each entry mirrored, x1' = W - x2 - 1, x2' = W - x1 - 1; appended after the originals."""
    extra = []
    for e in entries:
        b = e["boxes"].copy()
        w = e["width"]
        b[:, 0], b[:, 2] = w - e["boxes"][:, 2] - 1, w - e["boxes"][:, 0] - 1
        f = dict(e)
        f["boxes"], f["flipped"] = b, True
        extra.append(f)
    return entries + extra


def targets(boxes: np.ndarray, max_overlaps: np.ndarray, max_classes: np.ndarray,
            bbox_thresh: float) -> np.ndarray:
    """(R, 5) float32: class, dx, dy, dw, dh for boxes with overlap >= ``bbox_thresh`` (roidb.py:84-125)."""
    boxes = boxes.astype(np.float64)
    out = np.zeros((boxes.shape[0], 5), np.float32)
    gt_inds = np.where(max_overlaps == 1)[0]
    ex_inds = np.where(max_overlaps >= bbox_thresh)[0]
    if gt_inds.size == 0 or ex_inds.size == 0:
        return out
    assign = B.overlaps(boxes[ex_inds], boxes[gt_inds]).argmax(axis=1)
    out[ex_inds, 0] = max_classes[ex_inds]
    out[ex_inds, 1:] = B.deltas(boxes[ex_inds], boxes[gt_inds[assign]])
    return out


def add_regression_targets(entries: List[Entry], num_classes: int, bbox_thresh: float,
                           eps: float = B.EPS) -> Tuple[np.ndarray, np.ndarray]:
    """Targets per entry, normalised in place; returns (means, stds) raveled to 4 * num_classes (roidb.py:40-82)."""
    for e in entries:
        e["bbox_targets"] = targets(e["boxes"], e["max_overlaps"], e["max_classes"], bbox_thresh)
    counts = np.zeros((num_classes, 1)) + eps
    sums = np.zeros((num_classes, 4))
    squares = np.zeros((num_classes, 4))
    for e in entries:
        t = e["bbox_targets"]
        for c in range(1, num_classes):
            sel = t[:, 0] == c
            if sel.any():
                counts[c] += sel.sum()
                sums[c] += t[sel, 1:].sum(axis=0)
                squares[c] += (t[sel, 1:] ** 2).sum(axis=0)
    means = sums / counts
    stds = np.sqrt(np.maximum(squares / counts - means ** 2, 0.0))
    # a class whose targets are all equal (e.g. ground truth only) has std 0: the fork divides 0 by 0
    # (NaN targets); here it keeps std 1, used alike when normalising and when un-normalising bbox_pred
    same = (stds == 0) & (counts >= 1)
    if same.any():
        import warnings
        warnings.warn(f"bbox targets of class(es) {sorted(set(np.where(same)[0].tolist()))} have zero "
                      f"spread; their std is taken as 1 (the fork would divide by 0)")
        stds = np.where(same, 1.0, stds)
    for e in entries:
        t = e["bbox_targets"]
        for c in range(1, num_classes):
            sel = np.where(t[:, 0] == c)[0]
            t[sel, 1:] -= means[c]
            t[sel, 1:] /= stds[c]
    return means.ravel(), stds.ravel()


def training_roidb(records, proposals, num_classes: int, cfg) -> Tuple[List[Entry], np.ndarray, np.ndarray]:
    """lib/fast_rcnn/train.py:103-114 then SolverWrapper's target step (:31-34): (entries, means, stds)."""
    entries = build(records, proposals)
    if cfg["TRAIN"]["USE_FLIPPED"]:
        entries = flipped(entries)
    means, stds = add_regression_targets(entries, num_classes, cfg["TRAIN"]["BBOX_THRESH"], cfg["EPS"])
    return entries, means, stds
