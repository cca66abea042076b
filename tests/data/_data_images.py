"""Small image files on disk for the data tests (PNG is lossless, so the pixels are known)."""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np


def write_png(path: str, img: np.ndarray) -> np.ndarray:
    import cv2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(path, img)
    return img


def image_set(root: str, n: int = 6, size: Tuple[int, int] = (10, 12), seed: int = 0,
              names=None) -> List[Tuple[str, int, np.ndarray]]:
    """n BGR PNGs under ``root``: (relative name, label, pixels)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        name = names[i] if names else f"img {i}.png"   # a space in every name on purpose
        img = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
        write_png(os.path.join(root, name), img)
        out.append((name, i % 3, img))
    return out


def write_list(path: str, rows) -> str:
    with open(path, "w") as f:
        for name, label, *_ in rows:
            f.write(f"{name} {label}\n")
    return path
