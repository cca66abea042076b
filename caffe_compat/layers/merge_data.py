"""MergeData (Jigsaw++ fork): mirrors caffe-master-jps++/src/caffe/layers/merge_data_layer.cpp of
MehdiNoroozi/JigsawPuzzleSolver (8c7ec09).

Bottoms: T puzzle tiles then T tiles of a second image (2T blobs of one shape); tops: T tiles
and sub_num (N x 1).  Per item n: k = rand() % max_substitute + min_substitute; k distinct
positions i each receive the item's tile from a distinct random source j of the second image:
top_i[n] = bottom[T + j][n]; every other top_i[n] = bottom_i[n]; sub_num[n] = k.
Params (merge_data_param): min_substitute (0), max_substitute (1, > 0; k may not exceed T).
"rand()" is a seeded torch generator (default seed: CRC32 of the layer name; ``reseed``), drawn in
the fork's loop order, so a run is repeatable but not bit-equal to the fork's libc stream.
No blobs; no backward in the fork (here gradients follow the copies).
"""
from __future__ import annotations

import zlib

import torch

from ._params import fail, shape_fail
from ._registry import register
from .base import CaffeLayer


@register("MergeData", bottoms=(2, None), tops=(2, None))
class MergeData(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        b = self.bottom_shapes
        if len(b) % 2:
            raise fail(self, f"needs an even number of bottoms (T tiles + T substitutes), got {len(b)}")
        self.tiles = len(b) // 2
        if len(lp.top) and len(lp.top) != self.tiles + 1:
            raise fail(self, f"needs T + 1 = {self.tiles + 1} tops (T tiles and sub_num), got {len(lp.top)}")
        for i, s in enumerate(b[1:], 1):
            if s != b[0]:
                raise shape_fail(self, f"all bottoms must have one shape (bottom[0] {b[0]}, bottom[{i}] {s})")
        mp = lp.merge_data_param
        self.min_sub, self.max_sub = int(mp.min_substitute), int(mp.max_substitute)
        if self.max_sub <= 0:
            raise fail(self, f"merge_data_param.max_substitute must be positive (got {self.max_sub})")
        if self.min_sub < 0 or self.min_sub + self.max_sub - 1 > self.tiles:
            raise fail(self, f"merge_data_param: min_substitute {self.min_sub} + max_substitute "
                             f"{self.max_sub} - 1 substitutions must lie in [0, {self.tiles}] tiles")
        self._seed = zlib.crc32(self.layer_name.encode("utf-8"))
        self._gen = None
        self.top_shapes = [b[0]] * self.tiles + [(b[0][0], 1)]

    def reseed(self, seed: int) -> None:
        self._seed, self._gen = int(seed), None

    def _rand(self) -> int:
        """One draw in [0, 2^31), the role of libc rand() in the fork."""
        if self._gen is None:
            self._gen = torch.Generator().manual_seed(self._seed)
        return int(torch.randint(0, 2 ** 31, (1,), generator=self._gen))

    def plan(self, num: int):
        """(sources, k): sources[n][i] = index of the bottom copied into top i of item n."""
        t, rand = self.tiles, self._rand
        sources, ks = [], []
        for _n in range(num):
            k = rand() % self.max_sub + self.min_sub
            taken, src = [False] * t, [-1] * t
            for _ in range(k):
                while True:  # a free position
                    pos = rand() % t
                    if not taken[pos]:
                        taken[pos] = True
                        break
                while True:  # a source tile not used yet for this item
                    j = rand() % t
                    if j not in src:
                        break
                src[pos] = j
            sources.append([t + src[i] if taken[i] else i for i in range(t)])
            ks.append(k)
        return sources, ks

    def forward(self, *xs):
        n = xs[0].shape[0]
        sources, ks = self.plan(n)
        self.last_plan = (sources, ks)
        stacked = torch.stack(xs, 1)  # N x 2T x ...
        idx = torch.tensor(sources, dtype=torch.long, device=stacked.device)
        idx = idx.reshape(n, self.tiles, *([1] * (stacked.dim() - 2))).expand(n, self.tiles, *stacked.shape[2:])
        picked = torch.gather(stacked, 1, idx)
        sub = torch.tensor(ks, dtype=xs[0].dtype, device=stacked.device).reshape(n, 1)
        return tuple(picked[:, i] for i in range(self.tiles)) + (sub,)
