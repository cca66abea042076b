"""``caffekt detect test``: lib/fast_rcnn/test.py (im_detect, test_net, apply_nms) on caffekt's Net.

im_detect (test.py:154-208): the image at every TEST.SCALES (short side,
MAX_SIZE cap; :22-56) in one zero-padded blob; with several scales each ROI
goes to the level whose scaled area is closest to 224^2 (:72-98); ROIs whose
``round(roi * DEDUP_BOXES)`` coincide are run once (:173-179); scores are
``cls_prob``; boxes are ``bbox_pred`` deltas applied to the proposal and
clipped to the image (:194-198).  test_net (:248-327): per class, detections
above a running threshold that keeps the best ``40 x images`` scores of the
set, at most 100 per image, then the threshold applied again, then NMS at
TEST.NMS (0.3).  Results are written in the VOC devkit's format
(pascal_voc.py:231-256: ``<id> <score %.3f> <x1+1> <y1+1> <x2+1> <y2+1>``,
one file ``comp4_det_<split>_<class>.txt`` per class), which ``eval`` reads.
"""
from __future__ import annotations

import heapq
import os
from typing import List, Optional, Sequence

import numpy as np
import torch

from caffe_compat.errors import UnsupportedParameter

from . import boxes as B
from . import config as C
from .minibatch import images_to_blob, read_image
from .nms import nms
from .proposals import proposals_for
from .voc import VOCDataset


def image_pyramid(im: np.ndarray, cfg):
    """test.py:22-56: (blob, scale factors)."""
    import cv2
    base = im.astype(np.float32, copy=True)
    base -= np.asarray(cfg["PIXEL_MEANS"], np.float64).reshape(1, 1, 3)
    short, long_ = min(base.shape[:2]), max(base.shape[:2])
    ims, scales = [], []
    for target in cfg["TEST"]["SCALES"]:
        s = float(target) / float(short)
        if np.round(s * long_) > cfg["TEST"]["MAX_SIZE"]:
            s = float(cfg["TEST"]["MAX_SIZE"]) / float(long_)
        ims.append(cv2.resize(base, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR))
        scales.append(s)
    return images_to_blob(ims), np.asarray(scales)


def rois_blob(rois: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """test.py:58-98: [level, x1, y1, x2, y2] per ROI, the level closest to 224 x 224 pixels."""
    rois = rois.astype(np.float64)
    if len(scales) > 1:
        area = (rois[:, 2] - rois[:, 0] + 1) * (rois[:, 3] - rois[:, 1] + 1)
        levels = np.abs(area[:, None] * scales[None, :] ** 2 - 224 * 224).argmin(axis=1)[:, None]
    else:
        levels = np.zeros((rois.shape[0], 1), np.int64)
    return np.hstack([levels, rois * scales[levels]]).astype(np.float32)


@torch.no_grad()
def im_detect(net, im: np.ndarray, boxes: np.ndarray, cfg):
    """Scores (R, K) and class-specific boxes (R, 4K) for proposals ``boxes`` of image ``im`` (BGR)."""
    data, scales = image_pyramid(im, cfg)
    rois = rois_blob(boxes, scales)
    inv = None
    if cfg["DEDUP_BOXES"] > 0 and rois.shape[0]:
        v = np.array([1, 1e3, 1e6, 1e9, 1e12])
        hashes = np.round(rois * cfg["DEDUP_BOXES"]).dot(v)
        _, index, inv = np.unique(hashes, return_index=True, return_inverse=True)
        rois, boxes = rois[index], boxes[index]
    out = net(data=torch.from_numpy(data), rois=torch.from_numpy(rois))
    if "cls_prob" not in out:
        raise UnsupportedParameter(f"the test net has no 'cls_prob' output (outputs: {sorted(out)})")
    scores = out["cls_prob"].reshape(rois.shape[0], -1).numpy().astype(np.float64)
    if cfg["TEST"]["BBOX_REG"] and "bbox_pred" in out:
        pred = B.apply_deltas(boxes, out["bbox_pred"].reshape(rois.shape[0], -1).numpy().astype(np.float64))
        pred = B.clip(pred, im.shape[0], im.shape[1])
    else:
        pred = np.tile(boxes, (1, scores.shape[1]))
    if inv is not None:
        inv = np.asarray(inv).reshape(-1)
        scores, pred = scores[inv], pred[inv]
    return scores, pred


def detect_all(net, records, proposals: Sequence[np.ndarray], num_classes: int, cfg, progress: bool = True):
    """test.py:248-317: all_boxes[class][image] = N x 5 (x1, y1, x2, y2, score) float32, before NMS."""
    from tqdm import tqdm
    n = len(records)
    max_per_set = cfg["TEST"]["MAX_PER_SET_FACTOR"] * n
    max_per_image = cfg["TEST"]["MAX_PER_IMAGE"]
    thresh = -np.inf * np.ones(num_classes)
    top: List[list] = [[] for _ in range(num_classes)]
    empty = np.zeros((0, 5), np.float32)
    all_boxes = [[empty for _ in range(n)] for _ in range(num_classes)]
    for i, (rec, props) in enumerate(tqdm(list(zip(records, proposals)), desc="detect", disable=not progress,
                                          unit="img")):
        if props.shape[0] == 0:
            continue
        scores, boxes = im_detect(net, read_image(rec.image), props, cfg)
        if scores.shape[1] != num_classes:
            raise UnsupportedParameter(f"the net scores {scores.shape[1]} classes, the dataset's class list has "
                                       f"{num_classes} (background included)")
        for j in range(1, num_classes):
            inds = np.where(scores[:, j] > thresh[j])[0]
            s = scores[inds, j]
            b = boxes[inds, j * 4:(j + 1) * 4]
            order = np.argsort(-s)[:max_per_image]
            s, b = s[order], b[order]
            for val in s:
                heapq.heappush(top[j], val)
            if len(top[j]) > max_per_set:
                while len(top[j]) > max_per_set:
                    heapq.heappop(top[j])
                thresh[j] = top[j][0]
            all_boxes[j][i] = np.hstack([b, s[:, None]]).astype(np.float32)
    for j in range(1, num_classes):
        for i in range(n):
            all_boxes[j][i] = all_boxes[j][i][all_boxes[j][i][:, -1] > thresh[j]]
    return all_boxes


def apply_nms(all_boxes, thresh: float):
    """test.py:229-246."""
    return [[d[nms(d, thresh)] if d.shape[0] else d for d in per_class] for per_class in all_boxes]


def write_results(all_boxes, records, classes, split: str, out: str) -> List[str]:
    """pascal_voc.py:231-256 (comp4, no salt): one VOC results file per class, written atomically."""
    from caffe_compat.files import atomic_output
    os.makedirs(out, exist_ok=True)
    paths = []
    for j, cls in enumerate(classes):
        if j == 0:
            continue
        lines = []
        for i, rec in enumerate(records):
            for d in all_boxes[j][i]:
                lines.append(f"{rec.index} {d[-1]:.3f} {d[0] + 1:.1f} {d[1] + 1:.1f} {d[2] + 1:.1f} {d[3] + 1:.1f}\n")
        p = os.path.join(out, f"comp4_det_{split}_{cls}.txt")
        with atomic_output(p) as f:
            f.write("".join(lines).encode("utf-8"))
        paths.append(p)
    return paths


def test_detector(net_path: str, weights: str, dataset: str, split: str = "test", *,
                  classes: Optional[Sequence[str]] = None, cfg_path: Optional[str] = None, cfg_overrides=None,
                  proposals: Optional[str] = None, cache: Optional[str] = None, ss_mode: str = "fast",
                  out: str = "frcnn_test", progress: bool = True) -> List[str]:
    """Detections of ``net_path`` + ``weights`` on a split, NMS'd, as VOC results files under ``out``."""
    from caffe_compat.net import load_net
    cfg = C.load(cfg_path, cfg_overrides)
    ds = VOCDataset(dataset, split, classes) if classes else VOCDataset(dataset, split)
    records = ds.records()
    props = proposals_for(records, proposals, cache or os.path.join(out, "proposals", split), ss_mode, progress)
    net = load_net(net_path, weights, phase="TEST")
    net.eval()
    all_boxes = detect_all(net, records, props, ds.num_classes, cfg, progress)
    return write_results(apply_nms(all_boxes, cfg["TEST"]["NMS"]), records, ds.classes, split, out)
