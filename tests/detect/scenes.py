"""A small VOC-format scene set built from real images, for the detection tests.

Backgrounds: crops of scikit-image's bundled photos.  Objects: Fashion-MNIST
test items (trousers, sneakers, bags; /usr/share/datasets/fashion-mnist)
tinted (a hue per class, varied per item) and alpha-pasted at known boxes.  Proposals: jittered copies of each
ground-truth box (IoUs from ~0.1 to 1) plus uniformly random boxes, as .npy
per image, standing in for selective search so the tests run without OpenCV contrib.
"""
from __future__ import annotations

import gzip
import os
from typing import Dict, List, Sequence

import numpy as np

FASHION = "/usr/share/datasets/fashion-mnist"
FASHION_LABELS = {"trouser": 1, "sneaker": 7, "bag": 8}
CLASS_TINTS = np.array([[60, 60, 230], [60, 220, 60], [230, 120, 40]], np.float32)
PHOTOS = ("astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
          "moon", "rocket", "immunohistochemistry", "cat", "colorwheel", "page")


def have_fashion() -> bool:
    return os.path.isfile(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz"))


def _fashion(classes: Sequence[str]) -> Dict[str, np.ndarray]:
    with gzip.open(os.path.join(FASHION, "t10k-images-idx3-ubyte.gz")) as f:
        ims = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(os.path.join(FASHION, "t10k-labels-idx1-ubyte.gz")) as f:
        lab = np.frombuffer(f.read(), np.uint8, offset=8)
    return {c: ims[lab == FASHION_LABELS[c]] for c in classes}


def _photos() -> List[np.ndarray]:
    import skimage.data as d
    out = []
    for n in PHOTOS:
        a = getattr(d, n)()
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        out.append(np.ascontiguousarray(a[..., :3][..., ::-1]).astype(np.uint8))   # RGB -> BGR
    return out


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    ua = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - iw * ih
    return iw * ih / ua


def _scene(rng, photos, items, classes, size_range):
    import cv2
    ph = photos[rng.integers(len(photos))]
    h, w = int(rng.integers(*size_range)), int(rng.integers(*size_range))
    y0 = int(rng.integers(0, max(1, ph.shape[0] - 2 * h)))
    x0 = int(rng.integers(0, max(1, ph.shape[1] - 2 * w)))
    crop = ph[y0:y0 + min(2 * h, ph.shape[0] - y0), x0:x0 + min(2 * w, ph.shape[1] - x0)]
    im = cv2.resize(crop, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    objs = []
    for _ in range(int(rng.integers(1, 4))):
        c = int(rng.integers(len(classes)))
        pool = items[classes[c]]
        item = pool[rng.integers(len(pool))].astype(np.float32) / 255.0
        s = int(rng.integers(34, min(h, w) // 2 + 20))
        alpha = cv2.resize(item, (s, s), interpolation=cv2.INTER_LINEAR)
        ys, xs = np.where(alpha > 0.15)
        if ys.size == 0:
            continue
        alpha = alpha[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
        ah, aw = alpha.shape
        if ah >= h or aw >= w:
            continue
        py, px = int(rng.integers(0, h - ah)), int(rng.integers(0, w - aw))
        box = (px, py, px + aw - 1, py + ah - 1)
        if any(_iou(box, o[1]) > 0.2 for o in objs):
            continue
        # each class has its own hue (BGR), varied per item: learnable in a few hundred iterations from scratch
        tint = np.clip(CLASS_TINTS[c % len(CLASS_TINTS)] + rng.uniform(-40, 40, size=3), 0, 255).astype(np.float32)
        a = np.clip(alpha * 2.0, 0, 1)[..., None]
        im[py:py + ah, px:px + aw] = im[py:py + ah, px:px + aw] * (1 - a) + tint * alpha[..., None] * a
        objs.append((c + 1, box))
    return np.clip(im, 0, 255).astype(np.uint8), objs


def _xml(index, w, h, objs, names, difficult):
    parts = [f"<annotation><filename>{index}.jpg</filename><size><width>{w}</width><height>{h}</height>"
             f"<depth>3</depth></size>"]
    for (c, (x1, y1, x2, y2)), d in zip(objs, difficult):
        parts.append(f"<object><name>{names[c - 1]}</name><difficult>{int(d)}</difficult><bndbox>"
                     f"<xmin>{x1 + 1}</xmin><ymin>{y1 + 1}</ymin><xmax>{x2 + 1}</xmax><ymax>{y2 + 1}</ymax>"
                     f"</bndbox></object>")
    parts.append("</annotation>\n")
    return "".join(parts)


def proposals_for(objs, w, h, rng, n_jitter=24, n_random=60) -> np.ndarray:
    out = []
    for _c, (x1, y1, x2, y2) in objs:
        bw, bh = x2 - x1 + 1, y2 - y1 + 1
        for _ in range(n_jitter):
            cx = (x1 + x2) / 2 + rng.uniform(-0.45, 0.45) * bw
            cy = (y1 + y2) / 2 + rng.uniform(-0.45, 0.45) * bh
            sw, sh = bw * np.exp(rng.uniform(-0.5, 0.5)), bh * np.exp(rng.uniform(-0.5, 0.5))
            out.append((cx - sw / 2, cy - sh / 2, cx + sw / 2, cy + sh / 2))
    for _ in range(n_random):
        a, b = sorted(rng.uniform(0, w - 1, 2))
        c, d = sorted(rng.uniform(0, h - 1, 2))
        out.append((a, c, max(b, a + 8), max(d, c + 8)))
    p = np.asarray(out, np.float32).reshape(-1, 4)
    p[:, 0::2] = np.clip(np.round(p[:, 0::2]), 0, w - 1)
    p[:, 1::2] = np.clip(np.round(p[:, 1::2]), 0, h - 1)
    return p[(p[:, 2] > p[:, 0]) & (p[:, 3] > p[:, 1])]


def make_scene_set(root: str, n_train: int = 40, n_test: int = 24, seed: int = 0,
                   classes: Sequence[str] = ("trouser", "sneaker", "bag"), size_range=(150, 210),
                   difficult_fraction: float = 0.1) -> dict:
    """Write ``root`` (JPEGImages, Annotations, ImageSets/Main/{train,test}.txt) and ``root/proposals/*.npy``."""
    import cv2
    rng = np.random.default_rng(seed)
    items, photos = _fashion(classes), _photos()
    for sub in ("JPEGImages", "Annotations", "ImageSets/Main", "proposals"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    splits = {"train": [], "test": []}
    for split, n in (("train", n_train), ("test", n_test)):
        k = 0
        while k < n:
            im, objs = _scene(rng, photos, items, list(classes), size_range)
            if not objs:
                continue
            index = f"{split}{k:04d}"
            diff = [split == "test" and rng.random() < difficult_fraction for _ in objs]
            cv2.imwrite(os.path.join(root, "JPEGImages", index + ".jpg"), im, [cv2.IMWRITE_JPEG_QUALITY, 95])
            with open(os.path.join(root, "Annotations", index + ".xml"), "w") as f:
                f.write(_xml(index, im.shape[1], im.shape[0], objs, list(classes), diff))
            np.save(os.path.join(root, "proposals", index + ".npy"),
                    proposals_for(objs, im.shape[1], im.shape[0], rng))
            splits[split].append((index, objs, diff, im.shape))
            k += 1
        with open(os.path.join(root, "ImageSets", "Main", split + ".txt"), "w") as f:
            f.write("".join(i[0] + "\n" for i in splits[split]))
    return splits
