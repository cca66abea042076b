"""Endless, resumable, shardable batches of puzzle keys and samples."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from caffe_compat.data.loader import start_workers
from caffe_compat.errors import UnsupportedParameter

from .source import PuzzleDataset, PuzzlePartsDataset, _collate_parts, _collate_tiles


class StreamSampler:
    """Endless batches of ``(epoch, i)`` keys: global sample ``p`` is image ``order_{p // n}[p % n]``.

    Like Caffe's data layers the stream wraps across epochs (a batch may be
    larger than the image set).  Batch ``b`` of rank ``r`` (of ``world``)
    takes global samples ``[(b*world + r)*B, ... + B)``.
    """

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool = True,
                 rank: int = 0, world: int = 1, start_batch: int = 0):
        self.n, self.b, self.seed, self.shuffle = int(n), int(batch_size), int(seed), bool(shuffle)
        self.rank, self.world, self.start_batch = int(rank), int(world), int(start_batch)
        self._orders: Dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        from caffe_compat.data.loader import epoch_order
        if epoch not in self._orders:
            if len(self._orders) > 4:
                self._orders.clear()
            self._orders[epoch] = epoch_order(self.n, self.seed, epoch, self.shuffle)
        return self._orders[epoch]

    def batch_keys(self, b: int) -> List[Tuple[int, int]]:
        start = (b * self.world + self.rank) * self.b
        return [(p // self.n, int(self._order(p // self.n)[p % self.n])) for p in range(start, start + self.b)]

    def __iter__(self):
        b = self.start_batch
        while True:
            yield self.batch_keys(b)
            b += 1


class PuzzleLoader:
    """Endless batches of a puzzle dataset with a resumable position (``state_dict`` = batches handed out)."""

    def __init__(self, dataset: PuzzleDataset, batch_size: int, *, seed: int = 0, shuffle: bool = True,
                 workers: int = 0, rank: int = 0, world: int = 1):
        if batch_size <= 0:
            raise UnsupportedParameter(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, int(batch_size), int(seed)
        self.shuffle, self.workers, self.rank, self.world = shuffle, int(workers), int(rank), int(world)
        self.batch = 0
        self._it = None
        self._collate = _collate_parts if isinstance(dataset, PuzzlePartsDataset) else _collate_tiles

    def _start(self):
        sampler = StreamSampler(len(self.dataset), self.batch_size, self.seed, self.shuffle,
                                self.rank, self.world, self.batch)
        kw = dict(prefetch_factor=2, persistent_workers=False) if self.workers > 0 else {}
        self._it = start_workers(self.dataset, seed=self.seed, num_workers=self.workers,
                                 batch_sampler=sampler, collate_fn=self._collate, **kw)

    def next(self):
        if self._it is None:
            self._start()
        out = next(self._it)
        self.batch += 1
        return out

    def state_dict(self) -> dict:
        return {"batch": self.batch, "batch_size": self.batch_size, "seed": self.seed,
                "size": len(self.dataset), "world": self.world}

    def load_state_dict(self, state: dict) -> None:
        mine = {"batch_size": self.batch_size, "seed": self.seed, "size": len(self.dataset), "world": self.world}
        for k, v in mine.items():
            if k in state and int(state[k]) != v:
                raise UnsupportedParameter(f"the saved data position has {k} {state[k]}, this run has {v}")
        if int(state["batch"]) < 0:
            raise UnsupportedParameter(f"bad saved data position: batch {state['batch']}")
        self.batch = int(state["batch"])
        self._it = None
