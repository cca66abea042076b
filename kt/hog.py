"""HOG, the handcrafted teacher of the paper's "HOG -> CC" row, computed by a library.

Each image is read as Caffe reads it (BGR), converted to gray, resized to
``size`` x ``size`` and described by OpenCV's ``cv2.HOGDescriptor`` (one
window covering the image: blocks of 2x2 cells, block stride one cell, 9
unsigned orientation bins, L2-Hys) or by ``skimage.feature.hog`` with the
matching parameters.  Rows go through ``kt.features.write_rows``, so HOG
files are resumable, carry the same manifest, and feed ``kt cluster`` as
any net's features do.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from caffe_compat.errors import CaffeCompatError

from .features import l2_normalize
from .featurefile import Request, env_shard, write_features

BACKENDS = ("opencv", "skimage")


def _gray(path: str, size: int) -> np.ndarray:
    import cv2

    from caffe_compat.data.sources import read_image
    img = read_image(path)
    g = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.shape[2] == 3 else img[:, :, 0]
    return cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)


# the one place of the HOG settings' defaults (the CLI and the pipeline stage take them from here)
HOG_DEFAULTS = {"size": 64, "cell": 8, "bins": 9, "backend": "opencv", "l2": False}


def descriptor(size: int = HOG_DEFAULTS["size"], cell: int = HOG_DEFAULTS["cell"],
               bins: int = HOG_DEFAULTS["bins"]):
    """The ``cv2.HOGDescriptor`` used: window = the image, 2x2-cell blocks, stride one cell."""
    import cv2
    if size % cell or size < 2 * cell:
        raise CaffeCompatError(f"HOG size {size} must be a multiple of the cell size {cell} and >= 2 cells")
    return cv2.HOGDescriptor((size, size), (2 * cell, 2 * cell), (cell, cell), (cell, cell), bins)


def hog_one(gray: np.ndarray, backend: str = HOG_DEFAULTS["backend"], cell: int = HOG_DEFAULTS["cell"],
            bins: int = HOG_DEFAULTS["bins"]) -> np.ndarray:
    """The HOG vector of one square uint8 gray image."""
    if backend == "opencv":
        return descriptor(gray.shape[0], cell, bins).compute(gray).reshape(-1)
    if backend == "skimage":
        from skimage.feature import hog
        return hog(gray, orientations=bins, pixels_per_cell=(cell, cell), cells_per_block=(2, 2),
                   block_norm="L2-Hys", feature_vector=True).astype(np.float32)
    raise CaffeCompatError(f"HOG backend must be one of {BACKENDS}, got {backend!r}")


def extract_hog(images: Sequence[str], out: str, *, size: int = HOG_DEFAULTS["size"],
                cell: int = HOG_DEFAULTS["cell"], bins: int = HOG_DEFAULTS["bins"],
                backend: str = HOG_DEFAULTS["backend"], l2: bool = HOG_DEFAULTS["l2"], batch_size: int = 256,
                progress: bool = True, on_batch=None, shard=None):
    """HOG rows of every image into the feature file ``out`` (resumable, shardable; see ``kt.features``)."""
    images = [str(p) for p in images]
    if backend not in BACKENDS:
        raise CaffeCompatError(f"HOG backend must be one of {BACKENDS}, got {backend!r}")
    descriptor(size, cell, bins)   # parameter check before any work
    source = {"model": f"hog:{backend}", "weights": None, "blob": "hog"}
    opts = {"size": size, "cell": cell, "bins": bins, "l2": bool(l2)}

    def rows(idx: np.ndarray) -> np.ndarray:
        y = np.stack([hog_one(_gray(images[i], size), backend, cell, bins) for i in idx]).astype(np.float32)
        return l2_normalize(y) if l2 else y

    return write_features(out, Request(images, source, opts), rows, shard if shard is not None else env_shard(),
                  batch_size=batch_size, progress=progress, on_batch=on_batch, desc=f"HOG {backend}")


__all__ = ["extract_hog", "hog_one", "descriptor", "BACKENDS"]
