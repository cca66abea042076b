"""Jigsaw++ puzzles exactly as the authors' Caffe fork builds them.

Mirrors ``caffe-master-jps++/src/caffe/data_transformer.cpp`` (tiles, jitter,
colour) and ``layers/merge_data_layer.cpp`` (occluding tiles) of
MehdiNoroozi/JigsawPuzzleSolver @ 8c7ec09, followed by the prototxt's per-tile
``MVN`` (across channels, eps 1e-9 after the square root) and ``Power``
(scale 50).  For one stored 255x255 image:

* the image is cut into a 3x3 grid of 85x85 cells; in each cell a 64x64 tile
  starts at ``(rand()%19, rand()%19)`` and every colour channel is read with a
  further shift ``(rand()%3, rand()%3)`` of its own;
* per puzzle: grayscale ``(B+G+R)/3`` in all channels with probability 1/2,
  else with probability 1/2 the projection ``I - v v^T / 6``, ``v = (1, -2, 1)``;
* output tile ``i`` is cell ``perm[label][i]``, ``label`` uniform over the set;
* ``k`` tiles (``k = rand()%max_substitute + min_substitute``: 0, 1 or 2 with
  the fork's 0/3) at distinct random positions are replaced by distinct tiles,
  in natural order, of an occluder image -- another image of the data set
  (the paper's Jigsaw++, our default) or, in ``faithful`` mode, the same image
  with its own jitter and colour draw (what the released fork does, since its
  ``rand_jump`` option is never read and both Data layers read in lock step);
* each tile is normalised to zero mean / unit variance over its 3*64*64 values
  and multiplied by 50.

All randomness comes from one ``numpy.random.Generator`` per call site, so a
seed fixes every puzzle.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

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

# Projection that removes the green-magenta axis v = (1, -2, 1) (symmetric in
# the first and last channel, so the same matrix serves RGB and BGR order).
_V = np.array([1.0, -2.0, 1.0])
PROJECTION = np.eye(3) - np.outer(_V, _V) / 6.0
GRAY = np.full((3, 3), 1.0 / 3.0)


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
    gray_p: float = 0.5
    project_p: float = 0.5      # probability of the projection among colour puzzles
    normalize: bool = True      # per-tile MVN * TILE_SCALE (the prototxt's MVN + Power)
    occluder: str = "another"   # "another" image (paper), "faithful" (fork: same image), "none"


def cut_tiles(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Nine jittered tiles in natural (cell) order: ``(9, 3, 64, 64)`` float32, channel-first."""
    if img.shape != (STORED, STORED, 3):
        raise UnsupportedParameter(f"puzzles are cut from {STORED}x{STORED}x3 stored images, got {img.shape}")
    origin = rng.integers(0, JITTER + 1, size=(GRID * GRID, 2))           # (y, x) per tile
    shift = rng.integers(0, CHANNEL_SHIFT + 1, size=(GRID * GRID, 3, 2))  # (y, x) per channel
    tiles = np.empty((GRID * GRID, 3, TILE, TILE), dtype=np.float32)
    for t in range(GRID * GRID):
        cy, cx = divmod(t, GRID)
        for c in range(3):
            y = cy * CELL + origin[t, 0] + shift[t, c, 0]
            x = cx * CELL + origin[t, 1] + shift[t, c, 1]
            tiles[t, c] = img[y:y + TILE, x:x + TILE, c]
    return tiles


def colour_mode(rng: np.random.Generator, cfg: PuzzleConfig) -> str:
    if rng.random() < cfg.gray_p:
        return "gray"
    return "project" if rng.random() < cfg.project_p else "raw"


def apply_colour(tiles: np.ndarray, mode: str) -> np.ndarray:
    if mode == "raw":
        return tiles
    m = (GRAY if mode == "gray" else PROJECTION).astype(np.float32)
    return np.einsum("ij,tjhw->tihw", m, tiles, dtype=np.float32)


def mvn_tiles(tiles: np.ndarray) -> np.ndarray:
    """Caffe MVN (across channels, normalize_variance) per tile, then x50 (mvn_layer.cpp + power_layer.cpp)."""
    flat = tiles.reshape(len(tiles), -1).astype(np.float32)
    mean = flat.mean(axis=1, keepdims=True, dtype=np.float32)
    centred = flat - mean
    var = (centred * centred).mean(axis=1, keepdims=True, dtype=np.float32)
    out = centred / (np.sqrt(var) + np.float32(MVN_EPS))
    return (out * np.float32(TILE_SCALE)).reshape(tiles.shape)


def colour_tiles(img: np.ndarray, rng: np.random.Generator, cfg: PuzzleConfig) -> np.ndarray:
    """Tiles of one image with the fork's jitter and one colour draw, natural order."""
    tiles = cut_tiles(img, rng)
    return apply_colour(tiles, colour_mode(rng, cfg))


def make_puzzle(img: np.ndarray, perms: np.ndarray, rng: np.random.Generator,
                cfg: PuzzleConfig = PuzzleConfig(),
                occluder_img: Optional[np.ndarray] = None) -> Tuple[np.ndarray, int, int]:
    """One Jigsaw++ sample: ``(tiles (9,3,64,64) float32, label, number of substituted tiles)``.

    ``occluder_img`` is the other stored image for ``cfg.occluder == "another"``;
    in ``faithful`` mode the image itself is re-tiled as the occluder.
    """
    label = int(rng.integers(len(perms)))
    tiles = colour_tiles(img, rng, cfg)[perms[label]]
    k = 0
    if cfg.occluder != "none" and cfg.max_substitute > 0:
        k = int(rng.integers(cfg.max_substitute)) + cfg.min_substitute
        k = min(k, GRID * GRID)
        if k:
            source = img if cfg.occluder == "faithful" else occluder_img
            if source is None:
                raise UnsupportedParameter("occluder 'another' needs occluder_img (a different stored image)")
            occ = colour_tiles(source, rng, cfg)
            pos = rng.choice(GRID * GRID, size=k, replace=False)
            src = rng.choice(GRID * GRID, size=k, replace=False)
            tiles[pos] = occ[src]
    if cfg.normalize:
        tiles = mvn_tiles(tiles)
    return tiles, label, k
