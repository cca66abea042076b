"""PASCAL VOC detection AP: the devkit's VOCevaldet, as py-faster-rcnn's lib/datasets/voc_eval.py writes it.

The fork evaluates with the MATLAB devkit (lib/datasets/pascal_voc.py:258-274);
this is the same computation.  Per class: detections sorted by descending
confidence (a stable sort, as MATLAB's ``sort``: equal scores keep file
order); each one matched to the ground-truth box of that class in its image
with the largest inclusive-pixel IoU (voc_eval.py:161-179); IoU >= 0.5
(VOCevaldet's ``ovmax >= minoverlap``; voc_eval.py:181 writes ``>``) makes
it a true positive if that box is not ``difficult`` and not taken yet, a
false positive if taken; a match to a difficult box counts as neither; below
0.5 it is a false positive.  npos counts non-difficult boxes (:130).
rec = cumTP / npos, prec = cumTP / max(cumTP + cumFP, eps) (:192-197).
AP: VOC07's 11-point mean of max precision at recall >= t, t = 0, 0.1, ..., 1
(voc_eval.py:37-45; the t values as MATLAB's ``0:0.1:1`` makes them, see
``matlab_colon``), or with ``use_07=False`` the area under the monotone
precision envelope (:46-61).  A class without positives has no AP (NaN) and
is left out of the mAP with a warning.
"""
from __future__ import annotations

import os
import warnings
from typing import Dict, List, Mapping, Sequence

import numpy as np

from caffe_compat.errors import CaffeFormatError


def matlab_colon(a: float, d: float, b: float) -> np.ndarray:
    """MATLAB's ``a:d:b`` (what VOCevaldet's ``for t=0:0.1:1`` iterates): the first half counted up from
    ``a``, the second down from ``b``, the middle (a+b)/2.  Its 0.6 and 0.7 are the doubles nearest 0.6
    and 0.7, where ``np.arange(0, 1.1, 0.1)`` (voc_eval.py:40) gives 0.6000000000000001, 0.7000000000000001."""
    n = int(round((b - a) / d))
    c = np.zeros(n + 1)
    for k in range(n // 2 + 1):
        c[k] = a + k * d
        c[n - k] = b - k * d
    if n % 2 == 0:
        c[n // 2] = (a + b) / 2
    return c


VOC07_RECALLS = matlab_colon(0.0, 0.1, 1.0)


def voc_ap(rec: np.ndarray, prec: np.ndarray, use_07: bool = True) -> float:
    rec = np.asarray(rec, np.float64)
    prec = np.asarray(prec, np.float64)
    if use_07:
        ap = 0.0
        for t in VOC07_RECALLS:
            p = prec[rec >= t].max() if (rec >= t).any() else 0.0
            ap += p / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    for i in range(mpre.size - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def match(dets: Sequence[tuple], gt: Mapping[str, tuple], ovthresh: float = 0.5):
    """(tp, fp, npos) for detections ``(image_id, score, x1, y1, x2, y2)`` and ``gt[image_id] = (boxes, difficult)``.

    Coordinates in one convention for both (the results files' and XML's 1-based pixels, or 0-based).
    """
    taken = {k: np.zeros(len(v[1]), bool) for k, v in gt.items()}
    npos = int(sum((~np.asarray(v[1], bool)).sum() for v in gt.values()))
    conf = np.array([d[1] for d in dets], np.float64)
    order = np.argsort(-conf, kind="stable")
    tp = np.zeros(len(dets))
    fp = np.zeros(len(dets))
    for k, di in enumerate(order):
        img, _s, *bb = dets[di]
        bb = np.asarray(bb, np.float64)
        boxes, diff = gt.get(img, (np.zeros((0, 4)), np.zeros(0, bool)))
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ovmax, jmax = -np.inf, -1
        if boxes.shape[0]:
            iw = np.maximum(np.minimum(boxes[:, 2], bb[2]) - np.maximum(boxes[:, 0], bb[0]) + 1.0, 0.0)
            ih = np.maximum(np.minimum(boxes[:, 3], bb[3]) - np.maximum(boxes[:, 1], bb[1]) + 1.0, 0.0)
            inter = iw * ih
            uni = ((bb[2] - bb[0] + 1.0) * (bb[3] - bb[1] + 1.0)
                   + (boxes[:, 2] - boxes[:, 0] + 1.0) * (boxes[:, 3] - boxes[:, 1] + 1.0) - inter)
            ov = inter / uni
            jmax = int(np.argmax(ov))
            ovmax = ov[jmax]
        if ovmax >= ovthresh:
            if not diff[jmax]:
                if not taken[img][jmax]:
                    tp[k] = 1.0
                    taken[img][jmax] = True
                else:
                    fp[k] = 1.0
        else:
            fp[k] = 1.0
    return tp, fp, npos


def class_ap(dets, gt, ovthresh: float = 0.5, use_07: bool = True):
    """(ap, rec, prec, npos) of one class."""
    tp, fp, npos = match(dets, gt, ovthresh)
    tp, fp = np.cumsum(tp), np.cumsum(fp)
    if npos == 0:
        return float("nan"), tp * np.nan, tp * np.nan, 0
    rec = tp / float(npos)
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(rec, prec, use_07), rec, prec, npos


def read_results(path: str, known: set) -> List[tuple]:
    """A VOC results file: ``<id> <score> <x1> <y1> <x2> <y2>`` per line (1-based pixels)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise CaffeFormatError(f"line {ln}: expected 'image_id score x1 y1 x2 y2', got {line.strip()!r}",
                                       path)
            try:
                vals = [float(v) for v in parts[1:]]
            except ValueError:
                raise CaffeFormatError(f"line {ln}: score and coordinates must be numbers", path) from None
            if parts[0] not in known:
                raise CaffeFormatError(f"line {ln}: image {parts[0]!r} is not in the split", path)
            out.append((parts[0], *vals))
    return out


def evaluate(records, classes: Sequence[str], detections: str, split: str, *, use_07: bool = True,
             ovthresh: float = 0.5) -> Dict[str, object]:
    """AP per class and mAP of the results files ``<detections>/comp4_det_<split>_<class>.txt``."""
    known = {r.index for r in records}
    per_class: Dict[str, dict] = {}
    for k, cls in enumerate(classes):
        if k == 0:
            continue
        gt = {}
        for r in records:
            sel = r.classes == k
            gt[r.index] = (r.boxes[sel].astype(np.float64) + 1.0, r.difficult[sel])   # back to XML's 1-based
        path = os.path.join(detections, f"comp4_det_{split}_{cls}.txt")
        if not os.path.isfile(path):
            raise CaffeFormatError(f"no results file for class {cls!r}", path)
        dets = read_results(path, known)
        ap, _rec, _prec, npos = class_ap(dets, gt, ovthresh, use_07)
        if npos == 0:
            warnings.warn(f"class {cls!r} has no non-difficult ground truth in {split}: no AP, left out of the mAP")
        per_class[cls] = {"ap": ap, "npos": npos, "detections": len(dets)}
    valid = [v["ap"] for v in per_class.values() if v["npos"]]
    return {"split": split, "metric": "VOC07 11-point" if use_07 else "area", "ovthresh": ovthresh,
            "per_class": per_class, "mAP": float(np.mean(valid)) if valid else float("nan")}


def table(result) -> str:
    rows = [f"{'class':<16} {'AP':>7} {'npos':>6} {'dets':>7}"]
    for cls, v in result["per_class"].items():
        rows.append(f"{cls:<16} {v['ap'] * 100:7.2f} {v['npos']:6d} {v['detections']:7d}")
    rows.append(f"{'mAP':<16} {result['mAP'] * 100:7.2f}   ({result['metric']}, IoU >= {result['ovthresh']})")
    return "\n".join(rows)


def plot(result, path: str) -> None:
    """Bar chart of per-class AP (PNG)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(result["per_class"])
    aps = [result["per_class"][n]["ap"] * 100 for n in names]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * len(names) + 2), 3.5))
    ax.bar(range(len(names)), aps, color="#4477aa")
    ax.axhline(result["mAP"] * 100, color="#cc6677", ls="--", label=f"mAP {result['mAP'] * 100:.1f}")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"{result['split']}: {result['metric']} AP per class")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
