"""Jigsaw permutation sets: the authors' ``.bin`` files, ``.npy`` sets, greedy generation.

File format of the authors' ``permutations_*.bin`` (JigsawPuzzleSolver): int32
little-endian header ``[n, 9]`` followed by ``n*9`` int32 cell indices,
1-based.  In memory a set is an ``(n, 9)`` int64 array of 0-based indices;
row ``i`` says that output tile ``j`` is taken from grid cell ``perm[i, j]``.

Generation follows Algorithm 1 of Noroozi & Favaro (ECCV 2016): start from
one random permutation and greedily add the permutation of all 9! that
maximises its Hamming distance to the chosen set -- the *average* distance
(``max_avg``, the published sets) or the *minimum* distance (``max_min``).
Ties are broken by a seeded random choice, so a seed fixes the set.
"""
from __future__ import annotations

import itertools
import os
from typing import Dict

import numpy as np

from caffe_compat.data.jps import check_table, read_hash_file
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter



def read_permutations(path: str) -> np.ndarray:
    """Read a ``.bin`` (authors' layout, 1-based) or ``.npy`` (0- or 1-based) set as 0-based ``(n, k)``."""
    if path.endswith(".npy"):
        try:
            arr = np.load(path, allow_pickle=False)
        except ValueError as e:  # object arrays would need pickle: refused
            raise CaffeFormatError(f"not a plain numeric .npy array ({e})", path) from None
        if arr.ndim == 2 and arr.size and arr.min() == 1 and arr.max() == arr.shape[1]:
            arr = arr - 1
        return check_table(arr, path)
    return read_hash_file(path)   # the fork's hash_file reader: one place knows the layout


def write_permutations(path: str, perms: np.ndarray) -> None:
    """Write a set as ``.bin`` (authors' layout) or ``.npy`` (0-based), atomically."""
    perms = check_table(perms, path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        if path.endswith(".npy"):
            with open(tmp, "wb") as f:
                np.save(f, perms.astype(np.int64))
        else:
            n, k = perms.shape
            out = np.concatenate([[n, k], (perms + 1).ravel()]).astype("<i4")
            out.tofile(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def hamming_stats(perms: np.ndarray) -> Dict[str, float]:
    """``n``, minimum and mean pairwise Hamming distance over all pairs ``i < j``."""
    perms = np.asarray(perms)
    n = len(perms)
    if n < 2:
        return {"n": n, "min": 0, "mean": 0.0}
    # One row at a time keeps memory at O(n*k) for any n.
    lo, total = perms.shape[1], 0
    for i in range(n - 1):
        d = (perms[i + 1:] != perms[i]).sum(axis=1)
        lo = min(lo, int(d.min()))
        total += int(d.sum())
    return {"n": n, "min": lo, "mean": total / (n * (n - 1) / 2)}


def generate_permutations(n: int, variant: str = "max_avg", seed: int = 0, tiles: int = 9) -> np.ndarray:
    """Greedy maximal-Hamming set of ``n`` permutations of ``tiles`` (ECCV'16 Algorithm 1)."""
    if variant not in ("max_avg", "max_min"):
        raise UnsupportedParameter(f"variant must be 'max_avg' or 'max_min', got {variant!r}")
    if tiles > 10:
        raise UnsupportedParameter("greedy search enumerates all tiles! permutations; tiles must be <= 10")
    pool = np.array(list(itertools.permutations(range(tiles))), dtype=np.uint8)
    if not 1 <= n <= len(pool):
        raise UnsupportedParameter(f"n must be in 1..{len(pool)}, got {n}")
    rng = np.random.default_rng(seed)
    chosen = [int(rng.integers(len(pool)))]
    # score[j]: sum (max_avg) or min (max_min) of distances from pool[j] to the chosen set
    score = (pool != pool[chosen[0]]).sum(axis=1).astype(np.int64)
    taken = np.zeros(len(pool), dtype=bool)
    taken[chosen[0]] = True
    for _ in range(n - 1):
        s = np.where(taken, -1, score)
        best = np.flatnonzero(s == s.max())
        j = int(best[rng.integers(len(best))])
        chosen.append(j)
        taken[j] = True
        d = (pool != pool[j]).sum(axis=1)
        score = score + d if variant == "max_avg" else np.minimum(score, d)
    return pool[chosen].astype(np.int64)
