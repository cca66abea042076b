"""MergeData's substitution loop as a plan, and the rand() streams that drive it (merge_data_layer.cpp)."""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import UnsupportedParameter

NTILES = 9
RAND_MAX = 2 ** 31              # the fork's rand() range (glibc RAND_MAX + 1)


def merge_plan(rand: Callable[[], int], tiles: int = NTILES, min_sub: int = 0,
               max_sub: int = 3) -> Tuple[List[int], int]:
    """One item of merge_data_layer.cpp's loop: ``(sources, k)``.

    k = rand() % max_sub + min_sub; k times: a free position (redrawn while
    taken), then a source tile not used yet for this item (redrawn while used).
    ``sources[i]`` indexes the 2T stacked tiles: ``i`` (kept) or ``T + j``
    (tile ``j`` of the occluder).
    """
    k = rand() % max_sub + min_sub
    if k > tiles:
        raise UnsupportedParameter(f"MergeData would substitute {k} of {tiles} tiles")
    taken, src = [False] * tiles, [-1] * tiles
    for _ in range(k):
        while True:
            pos = rand() % tiles
            if not taken[pos]:
                taken[pos] = True
                break
        while True:
            j = rand() % tiles
            if j not in src:
                break
        src[pos] = j
    return [tiles + src[i] if taken[i] else i for i in range(tiles)], k


class _Recorder:
    """A rand() over a numpy generator that remembers what it handed out."""

    def __init__(self, rng: Optional[np.random.Generator]):
        self.rng, self.draws = rng, []

    def __call__(self) -> int:
        v = 0 if self.rng is None else int(self.rng.integers(RAND_MAX))
        self.draws.append(v)
        return v


class DrawStream:
    """Replays recorded rand() values to the net's MergeData layer (its ``_rand``)."""

    def __init__(self, draws: Sequence[int]):
        self.draws, self.pos = list(draws), 0

    def __call__(self) -> int:
        if self.pos >= len(self.draws):
            raise RuntimeError(f"MergeData asked for more than the {len(self.draws)} rand() values "
                               "the puzzle source drew: its loop differs from kt.jigsaw.merge_plan")
        self.pos += 1
        return self.draws[self.pos - 1]

    def check_consumed(self) -> None:
        if self.pos != len(self.draws):
            raise RuntimeError(f"MergeData used {self.pos} of {len(self.draws)} rand() values the puzzle "
                               "source drew: its loop differs from kt.jigsaw.merge_plan")
