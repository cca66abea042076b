"""One Fast R-CNN training minibatch from roidb entries: lib/roi_data_layer/minibatch.py + lib/utils/blob.py.

Per minibatch (get_minibatch, minibatch.py:16-65): one scale index per image
drawn with ``rng.randint(0, len(SCALES))``; ``rois_per_image = BATCH_SIZE //
IMS_PER_BATCH`` (Python 2's integer ``/``), ``fg_per_image =
round(FG_FRACTION * rois_per_image)``.  Per image (_sample_rois, :67-112):
foreground = overlap >= FG_THRESH, up to fg_per_image drawn without
replacement (``rng.choice``); background = overlap in [BG_THRESH_LO,
BG_THRESH_HI), filling up to rois_per_image; background labels set to 0;
targets expanded to 4 of 4K columns with loss weights 1 there
(:141-163).  Images (blob.py:13-45, minibatch.py:114-134): BGR as read,
mirrored if flipped, PIXEL_MEANS subtracted, scaled so the short side is the
scale unless the long side would exceed MAX_SIZE (rounded), bilinear
``cv2.resize``, zero-padded to the batch's largest image; ROIs scaled by the
same factor with the image's batch index in column 0.

``rng`` is a ``np.random.RandomState``, whose ``randint``/``choice``/
``permutation`` are the ones the fork calls through ``numpy.random``.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple

import numpy as np

from .voc import DatasetError


def read_image(path: str) -> np.ndarray:
    import cv2
    im = cv2.imread(path, cv2.IMREAD_COLOR)
    if im is None:
        raise DatasetError("cannot read the image", path)
    return im


def prep_image(im: np.ndarray, pixel_means, target_size: int, max_size: int) -> Tuple[np.ndarray, float]:
    """blob.py:31-45: mean-subtracted float32 image resized by the scale factor, and that factor."""
    import cv2
    im = im.astype(np.float32, copy=True)
    im -= np.asarray(pixel_means, np.float64).reshape(1, 1, 3)
    short, long_ = min(im.shape[:2]), max(im.shape[:2])
    scale = float(target_size) / float(short)
    if np.round(scale * long_) > max_size:
        scale = float(max_size) / float(long_)
    im = cv2.resize(im, None, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    return im, scale


def images_to_blob(ims: Sequence[np.ndarray]) -> np.ndarray:
    """blob.py:13-29: N x 3 x maxH x maxW float32, each image at the top left, zeros elsewhere."""
    h = max(im.shape[0] for im in ims)
    w = max(im.shape[1] for im in ims)
    blob = np.zeros((len(ims), h, w, 3), np.float32)
    for i, im in enumerate(ims):
        blob[i, :im.shape[0], :im.shape[1], :] = im
    return blob.transpose(0, 3, 1, 2)


def expand_targets(compact: np.ndarray, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """minibatch.py:141-163: (class, d4) rows -> N x 4K targets and loss weights (only the class's 4)."""
    cls = compact[:, 0].astype(np.int64)
    t = np.zeros((cls.size, 4 * num_classes), np.float32)
    w = np.zeros_like(t)
    for i in np.where(cls > 0)[0]:
        t[i, 4 * cls[i]:4 * cls[i] + 4] = compact[i, 1:]
        w[i, 4 * cls[i]:4 * cls[i] + 4] = 1.0
    return t, w


def sample_rois(entry, fg_per_image: int, rois_per_image: int, num_classes: int, train_cfg,
                rng: np.random.RandomState):
    """minibatch.py:67-112: (labels, overlaps, rois, targets, loss weights) of one image's sample."""
    overlaps = entry["max_overlaps"]
    fg = np.where(overlaps >= train_cfg["FG_THRESH"])[0]
    n_fg = int(min(fg_per_image, fg.size))
    if fg.size > 0:
        fg = rng.choice(fg, size=n_fg, replace=False)
    bg = np.where((overlaps < train_cfg["BG_THRESH_HI"]) & (overlaps >= train_cfg["BG_THRESH_LO"]))[0]
    n_bg = int(min(rois_per_image - n_fg, bg.size))
    if bg.size > 0:
        bg = rng.choice(bg, size=n_bg, replace=False)
    keep = np.append(fg, bg).astype(np.int64)
    labels = entry["max_classes"][keep].astype(np.float32)
    labels[n_fg:] = 0
    t, w = expand_targets(entry["bbox_targets"][keep, :], num_classes)
    return labels, overlaps[keep], entry["boxes"][keep], t, w


def get_minibatch(entries: Sequence[dict], num_classes: int, cfg, rng: np.random.RandomState,
                  read=read_image) -> Dict[str, np.ndarray]:
    """minibatch.py:16-65: blobs data, rois, labels, bbox_targets, bbox_loss_weights (float32)."""
    tc = cfg["TRAIN"]
    n = len(entries)
    scale_inds = rng.randint(0, high=len(tc["SCALES"]), size=n)
    rois_per_image = tc["BATCH_SIZE"] // n
    fg_per_image = int(np.round(tc["FG_FRACTION"] * rois_per_image))
    ims, scales = [], []
    for e, si in zip(entries, scale_inds):
        im = read(e["image"])
        if e["flipped"]:
            im = im[:, ::-1, :]
        im, s = prep_image(im, cfg["PIXEL_MEANS"], tc["SCALES"][si], tc["MAX_SIZE"])
        ims.append(im)
        scales.append(s)
    rois, labels, targets, weights = [], [], [], []
    for i, e in enumerate(entries):
        lab, _ov, boxes, t, w = sample_rois(e, fg_per_image, rois_per_image, num_classes, tc, rng)
        scaled = boxes.astype(np.float64) * scales[i]
        rois.append(np.hstack([np.full((scaled.shape[0], 1), float(i)), scaled]))
        labels.append(lab)
        targets.append(t)
        weights.append(w)
    blobs = {"data": images_to_blob(ims),
             "rois": np.vstack(rois).astype(np.float32).reshape(-1, 5),
             "labels": np.concatenate(labels).astype(np.float32)}
    if tc["BBOX_REG"]:
        blobs["bbox_targets"] = np.vstack(targets).reshape(-1, 4 * num_classes)
        blobs["bbox_loss_weights"] = np.vstack(weights).reshape(-1, 4 * num_classes)
    return blobs


def next_indices(perm: np.ndarray, cur: int, n: int, ims: int, rng: np.random.RandomState):
    """layer.py:23-35: (indices, perm, cur); a fresh permutation when ``cur + ims >= n`` (note: >=)."""
    if perm is None or cur + ims >= n:
        perm, cur = rng.permutation(np.arange(n)), 0
    return perm[cur:cur + ims], perm, cur + ims


__all__ = ["get_minibatch", "sample_rois", "expand_targets", "prep_image", "images_to_blob", "next_indices",
           "read_image"]


