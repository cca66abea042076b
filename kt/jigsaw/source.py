"""The puzzle source: sample i of epoch e from stored images, and its datasets."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from caffe_compat.data.jps import JpsTransformer, authors_param, check_table
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter

from ..permutations import read_permutations
from ..puzzle import TILE, PuzzleConfig, mvn_tiles
from .merge import NTILES, _Recorder, merge_plan

_SAMPLE_TAG = 0x4A494753        # keeps puzzle streams apart from other seeded streams
OCCLUDERS = ("another", "faithful", "none")


@dataclass
class PuzzleParts:
    """One sample before MergeData: what the fork's two Data layers emit, plus the merge draws."""

    tiles: np.ndarray    # (9, 3, 64, 64) float32: tile j = cell perm[label][j], jittered, coloured
    other: np.ndarray    # (9, 3, 64, 64) float32: the occluder's tiles in natural order
    label: int
    occluder_index: int  # stored image the occluding tiles come from
    draws: List[int]     # the rand() values merge_plan consumed
    sources: List[int]   # merge_plan's result: index into concat(tiles, other)
    k: int               # substituted tiles


def load_perms(perms) -> np.ndarray:
    """A path (``.bin``/``.npy``) or an array -> checked 0-based ``(n, 9)`` int64 set."""
    if isinstance(perms, (str, os.PathLike)):
        p = read_permutations(os.fspath(perms))
    else:
        p = check_table(np.asarray(perms), None)
    if p.shape[1] != NTILES:
        raise CaffeFormatError(f"puzzles have {NTILES} tiles; the permutation set has {p.shape[1]}",
                               perms if isinstance(perms, str) else None)
    return p


class PuzzleSource:
    """Builds sample ``i`` of epoch ``e`` from stored images (anything with ``len`` and ``[i]``).

    Three independent streams per sample (all seeded by ``(seed, e, i)``):
    the puzzle (label, jitter, colour), the occluder (image index, jitter,
    colour) and MergeData's rand().  ``cfg.occluder``: ``another`` (a
    different image, uniformly), ``faithful`` (the same image re-tiled, what
    the released fork does) or ``none`` (MergeData's rand() returns 0, so
    k = min_substitute, which must be 0).
    """

    def __init__(self, images, perms, cfg: PuzzleConfig = PuzzleConfig(), seed: int = 0):
        if cfg.occluder not in OCCLUDERS:
            raise UnsupportedParameter(f"occluder must be one of {OCCLUDERS}, got {cfg.occluder!r}")
        if cfg.max_substitute <= 0 or cfg.min_substitute < 0 \
                or cfg.min_substitute + cfg.max_substitute - 1 > NTILES:
            raise UnsupportedParameter(f"substitutions rand() % {cfg.max_substitute} + {cfg.min_substitute} "
                                       f"must lie in 0..{NTILES} (max_substitute > 0)")
        if cfg.occluder == "none" and cfg.min_substitute:
            raise UnsupportedParameter("occluder 'none' needs min_substitute 0")
        if cfg.occluder == "another" and len(images) < 2:
            raise UnsupportedParameter(f"occluder 'another' needs at least 2 images, got {len(images)}")
        if len(images) == 0:
            raise UnsupportedParameter("no images to make puzzles from")
        if int(seed) < 0:
            raise UnsupportedParameter(f"seed must be >= 0, got {seed}")
        self.images, self.perms, self.cfg, self.seed = images, load_perms(perms), cfg, int(seed)
        # the fork's DataTransformer cuts both layers' tiles: data_0 (hash table) and data_r (plain)
        self._cut_puzzle = JpsTransformer(authors_param("<table>"), "TRAIN", where="puzzle source",
                                          table=self.perms, colour=cfg.colour)
        self._cut_plain = JpsTransformer(authors_param(), "TRAIN", where="occluder source", colour=cfg.colour)

    def __len__(self) -> int:
        return len(self.images)

    def streams(self, i: int, epoch: int = 0) -> List[np.random.Generator]:
        ss = np.random.SeedSequence([_SAMPLE_TAG, self.seed, int(epoch), int(i)])
        return [np.random.default_rng(s) for s in ss.spawn(3)]

    def parts(self, i: int, epoch: int = 0) -> PuzzleParts:
        cfg, n = self.cfg, len(self.images)
        g_puzzle, g_occ, g_merge = self.streams(i, epoch)
        img = self.images[i]
        tiles, label = self._cut_puzzle.transform_labelled(img, layout="HWC", rng=g_puzzle)
        j = i
        if cfg.occluder == "another":
            j = (i + 1 + int(g_occ.integers(n - 1))) % n
        other, _ = self._cut_plain.transform_labelled(self.images[j] if j != i else img, layout="HWC",
                                                      rng=g_occ)
        tiles, other = tiles.reshape(NTILES, 3, TILE, TILE), other.reshape(NTILES, 3, TILE, TILE)
        rec = _Recorder(None if cfg.occluder == "none" else g_merge)
        sources, k = merge_plan(rec, NTILES, cfg.min_substitute, cfg.max_substitute)
        return PuzzleParts(np.ascontiguousarray(tiles), other, label, j, rec.draws, sources, k)

    def merged(self, parts: PuzzleParts) -> np.ndarray:
        """MergeData then (when ``cfg.normalize``) per-tile MVN x 50: what enters the towers."""
        out = np.concatenate([parts.tiles, parts.other])[parts.sources]
        return mvn_tiles(out) if self.cfg.normalize else out

    def puzzle(self, i: int, epoch: int = 0) -> Tuple[np.ndarray, int]:
        p = self.parts(i, epoch)
        return self.merged(p), p.label


def _key(key, epoch: int) -> Tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (epoch, int(key))


class PuzzleDataset(Dataset):
    """``[i]`` or ``[(epoch, i)]`` -> ``(tiles float32 tensor (9,3,64,64), label)``; tiles normalised per ``cfg``."""

    def __init__(self, stored, perms, cfg: PuzzleConfig = PuzzleConfig(), seed: int = 0):
        self.source = stored if isinstance(stored, PuzzleSource) else PuzzleSource(stored, perms, cfg, seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        e, i = _key(key, self.epoch)
        tiles, label = self.source.puzzle(i, e)
        return torch.from_numpy(tiles), label


class PuzzlePartsDataset(PuzzleDataset):
    """``[(epoch, i)]`` -> ``(data_0 (27,64,64), data_r (27,64,64), label, draws)``: the fork's Data layer tops."""

    def __getitem__(self, key):
        e, i = _key(key, self.epoch)
        p = self.source.parts(i, e)
        return (torch.from_numpy(p.tiles.reshape(3 * NTILES, TILE, TILE)),
                torch.from_numpy(p.other.reshape(3 * NTILES, TILE, TILE)), p.label, p.draws)


def _collate_tiles(items):
    return (torch.stack([t.reshape(3 * NTILES, TILE, TILE) for t, _ in items]),
            torch.tensor([lab for _, lab in items], dtype=torch.int64))


def _collate_parts(items):
    return (torch.stack([a for a, _, _, _ in items]), torch.stack([b for _, b, _, _ in items]),
            torch.tensor([lab for _, _, lab, _ in items], dtype=torch.int64), [d for *_, d in items])
