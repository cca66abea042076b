"""DataLoader glue: a source + a DataTransformer -> batches (float32 N x C x H x W, int64 labels).

Determinism: sample i of epoch e is transformed with its own generator,
``numpy.random.default_rng([tag, seed, e, i])``, so its crop and mirror
depend only on (seed, epoch, i) -- never on the worker count, the worker
that happens to load it, or prefetch order.  The epoch reaches the workers
inside the sampler's keys ``(epoch, i)``, so persistent workers stay correct.
The shuffled order of epoch e is ``default_rng([tag, seed, e]).permutation(n)``.

Position: ``CaffeLoader.state_dict()`` is ``{"epoch", "index", ...}`` where
``index`` counts the samples of that epoch's order already handed out; a
loader given that dict continues with exactly the batches the uninterrupted
run would have produced.  Unlike Caffe's data layers (which wrap around
without epochs), batches do not straddle epochs.
"""
from __future__ import annotations

import contextlib

from typing import Iterator, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from ..errors import ShapeError, UnsupportedParameter

_ORDER_TAG, _SAMPLE_TAG = 0x4F524452, 0x534D504C   # keep the two seed streams apart


def _check_seed(seed: int) -> int:
    if int(seed) < 0:
        raise UnsupportedParameter(f"seed must be >= 0, got {seed}")
    return int(seed)


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator that decides sample ``index``'s crop and mirror in ``epoch``."""
    return np.random.default_rng([_SAMPLE_TAG, seed, epoch, index])


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Sample order of one epoch: 0..n-1, or a permutation fixed by (seed, epoch)."""
    if not shuffle:
        return np.arange(n)
    return np.random.default_rng([_ORDER_TAG, seed, epoch]).permutation(n)


class CaffeDataset(Dataset):
    """``source[i]`` through ``transformer``: item = (float32 C x h x w tensor, int label), or None if skipped.

    Keys are ``i`` (epoch 0) or ``(epoch, i)``.
    """

    def __init__(self, source, transformer, seed: int = 0):
        self.source = source
        self.transformer = transformer
        self.seed = _check_seed(seed)

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key):
        epoch, i = key if isinstance(key, tuple) else (0, key)
        s = self.source.get(int(i), self.transformer.imdecode_flag)
        if s is None:
            return None
        rng = sample_rng(self.seed, int(epoch), int(i)) if self.transformer.needs_rand else None
        if getattr(self.transformer, "sets_label", False):   # the fork's puzzle layer draws the label
            x, label = self.transformer.transform_labelled(s.image, layout=s.layout, rng=rng)
            return torch.from_numpy(x), int(label)
        x = self.transformer.transform(s.image, layout=s.layout, rng=rng)
        return torch.from_numpy(x), int(s.label)


class EpochSampler(Sampler):
    """Yields ``(epoch, i)`` for the current epoch's order, from position ``start`` on."""

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed = n, bool(shuffle), _check_seed(seed)
        self.epoch = 0
        self.start = 0

    def __iter__(self):
        order = epoch_order(self.n, self.seed, self.epoch, self.shuffle)
        e = self.epoch
        return iter([(e, int(k)) for k in order[self.start:]])

    def __len__(self) -> int:
        return self.n - self.start


def collate(batch):
    """Stack the readable items; also report how many were skipped and how many keys were used."""
    items = [b for b in batch if b is not None]
    skipped = len(batch) - len(items)
    if not items:
        return torch.empty(0), torch.empty(0, dtype=torch.int64), skipped, len(batch)
    shapes = {tuple(x.shape) for x, _ in items}
    if len(shapes) > 1:
        raise ShapeError(f"one batch holds images of shapes {sorted(shapes)}; set crop_size or "
                         "new_height/new_width so every image comes out the same size")
    # default_collate stacks straight into shared memory inside a worker (no extra copy on the way out)
    data = default_collate([x for x, _ in items])
    labels = torch.tensor([lab for _, lab in items], dtype=torch.int64)
    return data, labels, skipped, len(batch)


class _WorkerInit:
    """Per-worker set-up: global RNGs seeded with seed + worker id.

    No thread-pool calls here: OpenCV's and OpenMP's pools do not survive
    ``fork``, and resizing them in a forked worker can deadlock (seen with
    ``cv2.setNumThreads`` and ``torch.set_num_threads``).  torch's worker loop
    already runs torch single-threaded, and ``_fork_safe`` makes OpenCV
    single-threaded in the parent while the workers fork.
    """

    def __init__(self, seed: int):
        self.seed = seed

    def __call__(self, worker_id: int) -> None:
        import random

        # our own randomness is per sample; this only pins third-party code using the global RNGs
        np.random.seed((self.seed + worker_id) % 2**32)
        random.seed(self.seed + worker_id)


@contextlib.contextmanager
def _fork_safe():
    """While DataLoader workers are forked: OpenCV single-threaded (children inherit it), and the
    parent's garbage collected and the rest frozen, so no child ever runs the destructor of a
    parent object whose threads it does not have (an onnxruntime session's destructor waiting on
    its thread pool deadlocked a worker in the full suite).  Restored afterwards."""
    import gc

    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(1)
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()
        cv2.setNumThreads(before)


def start_workers(dataset, *, seed: int, num_workers: int = 0, **dataloader_kwargs) -> Iterator:
    """``iter(DataLoader(dataset, ...))`` with our worker set-up: seeded RNGs, fork-safe threading.

    The one place that forks DataLoader workers for caffekt (training feeds,
    puzzle sources and ``CaffeLoader`` all come through here).
    """
    if num_workers > 0:
        dataloader_kwargs.setdefault("worker_init_fn", _WorkerInit(_check_seed(seed)))
    with _fork_safe():
        return iter(DataLoader(dataset, num_workers=num_workers, **dataloader_kwargs))


class CaffeLoader:
    """Iterates one epoch per ``iter()`` from the saved position; ``forever()`` runs epoch after epoch.

    ``skipped`` counts unreadable samples left out (``on_error="skip"``
    sources), summed over all workers.
    """

    def __init__(self, dataset: CaffeDataset, batch_size: int, *, shuffle: bool, drop_last: bool,
                 seed: int, **dataloader_kwargs):
        if batch_size <= 0:
            raise UnsupportedParameter(f"batch_size must be positive, got {batch_size}")
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = _check_seed(seed)
        self.sampler = EpochSampler(len(dataset), shuffle, seed)
        self.drop_last = drop_last
        self.epoch = 0
        self.index = 0
        self.skipped = 0
        self.dataloader = DataLoader(dataset, batch_size=batch_size, sampler=self.sampler,
                                     drop_last=drop_last, collate_fn=collate, **dataloader_kwargs)

    def __len__(self) -> int:
        rest = len(self.dataset) - self.index
        return rest // self.batch_size if self.drop_last else -(-rest // self.batch_size)

    def __iter__(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        self.sampler.epoch, self.sampler.start = self.epoch, self.index
        with _fork_safe():
            batches = iter(self.dataloader)  # forks the workers (first time, or every epoch)
        for data, labels, skipped, used in batches:
            # counted before the yield: a snapshot taken after this batch's step resumes after it
            self.index += used
            self.skipped += skipped
            if len(labels):
                yield data, labels
        self.epoch += 1
        self.index = 0

    def forever(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield from self

    def state_dict(self) -> dict:
        """Where the next batch starts: ``{"epoch", "index", "seed", "size", "skipped"}``."""
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
                "size": len(self.dataset), "skipped": self.skipped}

    def load_state_dict(self, state: dict) -> None:
        size = state.get("size", len(self.dataset))
        if size != len(self.dataset):
            raise UnsupportedParameter(f"the saved position is for {size} samples but the source "
                                       f"holds {len(self.dataset)}")
        if "seed" in state and state["seed"] != self.seed:
            raise UnsupportedParameter(f"the saved position was made with seed {state['seed']}, "
                                       f"this loader has seed {self.seed}")
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self.dataset):
            raise UnsupportedParameter(f"bad position epoch {epoch}, index {index}")
        self.epoch, self.index = epoch, index
        self.skipped = int(state.get("skipped", 0))


def make_loader(source, transformer, batch_size: int, num_workers: int = 0, shuffle: bool = False,
                drop_last: bool = False, seed: int = 0, *, position: Optional[dict] = None,
                pin_memory: Optional[bool] = None, persistent_workers: Optional[bool] = None,
                prefetch_factor: Optional[int] = None) -> CaffeLoader:
    """A ``CaffeLoader`` over ``source`` transformed by ``transformer`` -> (float32 N x C x h x w, int64 N).

    Pinned memory when CUDA is present; workers persist across epochs.
    ``position`` is a ``state_dict()`` to resume from.
    """
    kwargs = {"num_workers": num_workers,
              "pin_memory": torch.cuda.is_available() if pin_memory is None else pin_memory}
    if num_workers > 0:
        kwargs["persistent_workers"] = True if persistent_workers is None else persistent_workers
        kwargs["worker_init_fn"] = _WorkerInit(_check_seed(seed))
        if prefetch_factor is not None:
            kwargs["prefetch_factor"] = prefetch_factor
    loader = CaffeLoader(CaffeDataset(source, transformer, seed), batch_size, shuffle=shuffle,
                         drop_last=drop_last, seed=seed, **kwargs)
    if position is not None:
        loader.load_state_dict(position)
    return loader
