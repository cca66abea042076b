"""Jigsaw++ puzzle constants, stored images, per-tile normalisation and the puzzle settings.

The tiles themselves are cut by ``caffe_compat.data.jps.JpsTransformer``, the
fork's DataTransformer (caffe-master-jps++/src/caffe/data_transformer.cpp of
MehdiNoroozi/JigsawPuzzleSolver @ 8c7ec09): a 3x3 grid of 85x85 cells over
the 255x255 stored image, a 64x64 tile per cell at ``(rand()%19, rand()%19)``
plus a per-channel shift ``rand()%3``, then gray (p 1/2) or the fork's colour
projection (p 1/4).  The occluding tiles (``layers/merge_data_layer.cpp``) are
``kt.jigsaw.merge_plan``; then the prototxt's per-tile ``MVN`` (across
channels, eps 1e-9 after the square root) and ``Power`` (scale 50) are
``mvn_tiles`` here.  The occluder is another image of the data set (the
paper's Jigsaw++, our default) or, in ``faithful`` mode, the same image with
its own jitter and colour draw (what the released fork does, since its
``rand_jump`` option is never read and both Data layers read in lock step).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from caffe_compat.errors import UnsupportedParameter

STORED = 255            # stored image side
GRID = 3
CELL = STORED // GRID   # 85
TILE = 64
JITTER = 18             # tile origin in 0..JITTER inside its cell
CHANNEL_SHIFT = 2       # extra per-channel origin in 0..CHANNEL_SHIFT
MVN_EPS = 1e-9
TILE_SCALE = 50.0


def stored_image(img: np.ndarray, interpolation: Optional[int] = None) -> np.ndarray:
    """The fork's stored image: resize the shorter side to 256, keep the centre 255x255.

    ``img`` is HxWx3 uint8 (BGR, as cv2 reads it); returns 255x255x3 uint8.
    Mirrors ``generate_jps_dataset.cpp`` (cv::resize, bilinear).
    """
    import cv2

    if img.ndim != 3 or img.shape[2] != 3:
        raise UnsupportedParameter(f"expected an HxWx3 colour image, got shape {img.shape}")
    h, w = img.shape[:2]
    s = 256.0 / min(h, w)
    nh, nw = max(256, int(round(h * s))), max(256, int(round(w * s)))
    out = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR if interpolation is None else interpolation)
    y0, x0 = (nh - STORED) // 2, (nw - STORED) // 2
    return np.ascontiguousarray(out[y0:y0 + STORED, x0:x0 + STORED])


@dataclass
class PuzzleConfig:
    min_substitute: int = 0
    max_substitute: int = 3     # rand() % max_substitute + min_substitute -> 0, 1, 2
    colour: bool = True         # the fork's gray / projection draw (False: raw tiles, for tests)
    normalize: bool = True      # per-tile MVN * TILE_SCALE (the prototxt's MVN + Power)
    occluder: str = "another"   # "another" image (paper), "faithful" (fork: same image), "none"


def mvn_tiles(tiles: np.ndarray) -> np.ndarray:
    """Caffe MVN (across channels, normalize_variance) per tile, then x50 (mvn_layer.cpp + power_layer.cpp)."""
    flat = tiles.reshape(len(tiles), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True, dtype=np.float32)
    centred = flat - mean
    var = (centred * centred).mean(axis=1, keepdims=True, dtype=np.float32)
    out = centred / (np.sqrt(var) + np.float32(MVN_EPS))
    return (out * np.float32(TILE_SCALE)).reshape(tiles.shape)
