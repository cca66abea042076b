"""Feeders: what fills a net's data layers (Data/ImageData/Input/...), one registry of them, resumable."""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import CaffeFormatError, UnsupportedParameter
from ..proto import caffe_pb2
from .paths import _beside

log = logging.getLogger("caffe_compat.train")


@dataclass
class FeedContext:
    """What a feeder factory may use besides the layer: phase, seeds, sharding, where files are."""
    phase: str                  # "TRAIN" or "TEST"
    seed: int                   # data seed, equal on every rank
    rank: int = 0
    world_size: int = 1
    workers: int = 0
    base_dir: str = "."         # the solver file's folder (fallback for relative sources)
    where: str = ""             # "net file X, layer 'data'" for messages
    labels_bin: Optional[str] = None   # the fork's labels.bin: replaces the TRAIN Data layers' labels


Feeder = Any   # callable() -> {top: tensor}; .shapes() -> {top: shape}; optional state_dict/load_state_dict
FeederFactory = Callable[[Any, FeedContext], Feeder]
# (name, predicate(layer_param) -> bool, factory(layer_param, ctx) -> feeder), first match wins
DATA_FEEDERS: List[Tuple[str, Callable[[Any], bool], FeederFactory]] = []
_plugins_loaded = False


def register_data_feeder(name: str, predicate: Callable[[Any], bool], factory: FeederFactory,
                         *, first: bool = True) -> None:
    """Add a feeder kind; ``first`` puts it ahead of the built-ins (a re-registered name is replaced)."""
    DATA_FEEDERS[:] = [e for e in DATA_FEEDERS if e[0] != name]
    entry = (name, predicate, factory)
    if first:
        DATA_FEEDERS.insert(0, entry)
    else:
        DATA_FEEDERS.append(entry)


def _load_plugins() -> None:
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    # installed packages add feeders through an entry point (a function that registers them),
    # so this module never imports the packages built on it
    from ..plugins import DATA_FEEDERS_GROUP, registered
    for ep in registered(DATA_FEEDERS_GROUP).values():
        ep.load()()


class _KeyStream:
    """Batches of dataset keys from a position on: Caffe's wrap-around read, one epoch order after another.

    Stream position p is sample ``order(p // n)[p % n]`` of epoch ``p // n``.
    Each call takes ``world_size * batch_size`` positions; this rank keeps
    those with ``offset % world_size == rank`` (``DataLayer::Skip``).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int,
                 start: int):
        from ..data.loader import epoch_order
        self.n, self.bs, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.rank, self.world = rank, world_size
        self.start = start
        self._order = epoch_order
        self._cache: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def _key(self, p: int) -> Tuple[int, int]:
        e = p // self.n
        if self._cache[0] != e:
            self._cache = (e, self._order(self.n, self.seed, e, self.shuffle))
        return e, int(self._cache[1][p % self.n])

    def __iter__(self) -> Iterator[List[Tuple[int, int]]]:
        p = self.start
        step = self.world * self.bs
        while True:
            yield [self._key(p + self.rank + self.world * j) for j in range(self.bs)]
            p += step


class SourceFeed:
    """An image source through a DataTransformer, in Caffe's batches: ``{data_top: N x C x H x W, label_top: N}``.

    Labels come out float32 (Caffe's label blob is a float blob).  The
    position (stream samples consumed, all ranks together) is the state saved
    in snapshots.
    """

    def __init__(self, source, transformer, tops: Sequence[str], batch_size: int, *, shuffle: bool,
                 ctx: FeedContext):
        from ..data.loader import CaffeDataset
        if batch_size <= 0:
            raise UnsupportedParameter(f"{ctx.where}: batch_size must be positive, got {batch_size}")
        if len(source) == 0:
            raise CaffeFormatError(f"{ctx.where}: the data source is empty")
        self.source, self.transformer, self.tops = source, transformer, list(tops)
        self.batch_size, self.shuffle, self.ctx = int(batch_size), bool(shuffle), ctx
        self.dataset = CaffeDataset(source, transformer, ctx.seed)
        self.pos = 0
        self._it: Optional[Iterator] = None

    def shapes(self) -> Dict[str, Tuple[int, ...]]:
        s = self.source.get(0, self.transformer.imdecode_flag)
        c, h, w = (s.image.shape[2], s.image.shape[0], s.image.shape[1]) if s.layout == "HWC" else s.image.shape
        out = {self.tops[0]: (self.batch_size,) + tuple(self.transformer.output_shape(c, h, w))}
        if len(self.tops) > 1:
            out[self.tops[1]] = (self.batch_size,)
        return out

    def _iterator(self) -> Iterator:
        from ..data.loader import collate, start_workers
        keys = _KeyStream(len(self.dataset), self.batch_size, self.shuffle, self.ctx.seed,
                          self.ctx.rank, self.ctx.world_size, self.pos)
        return start_workers(self.dataset, seed=self.ctx.seed, num_workers=self.ctx.workers,
                             batch_sampler=keys, collate_fn=collate)

    def __call__(self) -> Dict[str, torch.Tensor]:
        if self._it is None:
            self._it = self._iterator()
        data, labels, _skipped, _used = next(self._it)
        # counted when handed out: a snapshot after this batch's step resumes after it
        self.pos += self.ctx.world_size * self.batch_size
        out = {self.tops[0]: data}
        if len(self.tops) > 1:
            out[self.tops[1]] = labels.to(torch.float32)
        return out

    def state_dict(self) -> dict:
        return {"pos": self.pos, "size": len(self.dataset), "seed": self.ctx.seed,
                "world_size": self.ctx.world_size}

    def load_state_dict(self, d: Mapping) -> None:
        if int(d.get("size", len(self.dataset))) != len(self.dataset):
            raise UnsupportedParameter(f"{self.ctx.where}: the saved data position is for {d['size']} "
                                       f"samples but the source holds {len(self.dataset)}")
        self.pos = int(d["pos"])
        self._it = None


class ConstantFeed:
    """Tops that keep one value: an Input blob Caffe never fills stays zero; or arrays given by the caller."""

    def __init__(self, values: Mapping[str, torch.Tensor]):
        self.values = dict(values)

    def shapes(self):
        return {k: tuple(v.shape) for k, v in self.values.items()}

    def __call__(self):
        return self.values


def _transformer(lp, ctx: FeedContext):
    from ..data.transformer import DataTransformer
    tp = copy.deepcopy(lp.transform_param)
    if tp.HasField("mean_file"):
        tp.mean_file = _beside(tp.mean_file, ctx.base_dir)
    return DataTransformer(tp, ctx.phase, ctx.seed)


def _image_data(lp, ctx: FeedContext) -> SourceFeed:
    """ImageData (image_data_layer.cpp): list lines ``path label``, imread(root_folder + path), resized, transformed."""
    from ..data.sources import ImageListSource
    p = lp.image_data_param
    if p.rand_skip:
        raise UnsupportedParameter(f"{ctx.where}: image_data_param.rand_skip is not supported")
    src = ImageListSource(_beside(p.source, ctx.base_dir), p.root_folder, p.new_height, p.new_width,
                          p.is_color)
    # Caffe shuffles the list at set-up and again at each epoch's end: one permutation per epoch
    return SourceFeed(src, _transformer(lp, ctx), lp.top, p.batch_size, shuffle=p.shuffle, ctx=ctx)


def _lmdb_data(lp, ctx: FeedContext) -> SourceFeed:
    """Data (data_layer.cpp) with backend LMDB: Datum records in key order, wrapping around.

    A layer with the Jigsaw fork's transform fields goes through
    ``data.jps.JpsTransformer`` (the fork's DataTransformer); ``labels.bin``
    (``ctx.labels_bin``) relabels the records of TRAIN-phase layers.
    """
    from ..data.jps import JpsTransformer, RelabelledSource, is_fork_layer, read_labels_bin
    from ..data.sources import LMDBSource
    p = lp.data_param
    source = _beside(p.source, ctx.base_dir)
    # backend defaults to LEVELDB in caffe.proto; an unset backend naming an LMDB folder is read as LMDB
    lmdb_dir = os.path.isfile(os.path.join(source, "data.mdb"))
    if p.backend != caffe_pb2.DataParameter.LMDB and (p.HasField("backend") or not lmdb_dir):
        raise UnsupportedParameter(f"{ctx.where}: data_param.backend LEVELDB (caffe.proto's default) is not "
                                   "supported; set backend: LMDB for an LMDB source, or convert the database "
                                   "(convert_imageset -backend lmdb)")
    if p.rand_skip:
        raise UnsupportedParameter(f"{ctx.where}: data_param.rand_skip is not supported")
    if not os.path.exists(source):
        raise CaffeFormatError(f"{ctx.where}: data source not found (data_param.source, opened from the "
                               f"working directory {os.getcwd()!r} as Caffe does)", source)
    src = LMDBSource(source)
    if ctx.labels_bin and ctx.phase == "TRAIN" and len(lp.top) > 1:
        labels = read_labels_bin(ctx.labels_bin)
        src = RelabelledSource(src, labels, ctx.labels_bin)
        if ctx.rank == 0:
            log.info("%s: labels from %s replace the Datum labels (%d labels for %d records, in key order, "
                     "restarting at each epoch)", ctx.where or "Data layer", ctx.labels_bin, len(labels), len(src))
    if is_fork_layer(lp):
        tf = JpsTransformer(lp.transform_param, ctx.phase, where=ctx.where, base_dir=ctx.base_dir)
    else:
        tf = _transformer(lp, ctx)
    return SourceFeed(src, tf, lp.top, p.batch_size, shuffle=False, ctx=ctx)


def _input_zeros(lp, ctx: FeedContext) -> ConstantFeed:
    """Input (input_layer.cpp): blobs of input_param.shape that ``caffe train`` never writes (zeros)."""
    from ..layers.input import Input
    shapes = Input(lp, [], ctx.phase).top_shapes
    return ConstantFeed({t: torch.zeros(s) for t, s in zip(lp.top, shapes)})


def _memory_data(lp, ctx: FeedContext):
    raise UnsupportedParameter(
        f"{ctx.where}: MemoryData has no source; Caffe needs MemoryDataLayer::Reset with arrays. "
        f"Give them with caffe_compat.train.train(..., feeds={{{', '.join(repr(t) for t in lp.top)}: ...}})")


def _has_module(name: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(name) is not None


def _hdf5_data(lp, ctx: FeedContext):
    """HDF5Data (hdf5_data_layer.cpp): needs h5py, which caffekt does not depend on."""
    if not _has_module("h5py"):
        raise UnsupportedParameter(f"{ctx.where}: HDF5Data needs the h5py package, which is not "
                                   "installed (pip install h5py), or convert the data to LMDB") from None
    raise UnsupportedParameter(f"{ctx.where}: HDF5Data training input is not implemented; convert to LMDB")


def _window_data(lp, ctx: FeedContext):
    raise UnsupportedParameter(f"{ctx.where}: WindowData is not supported by caffekt train")


for _name, _pred, _fac in [
        ("ImageData", lambda lp: lp.type == "ImageData", _image_data),
        ("Data", lambda lp: lp.type == "Data", _lmdb_data),
        ("Input", lambda lp: lp.type == "Input", _input_zeros),
        ("MemoryData", lambda lp: lp.type == "MemoryData", _memory_data),
        ("HDF5Data", lambda lp: lp.type == "HDF5Data", _hdf5_data),
        ("WindowData", lambda lp: lp.type == "WindowData", _window_data)]:
    register_data_feeder(_name, _pred, _fac, first=False)


def make_feeder(lp, ctx: FeedContext) -> Feeder:
    """The first registered feeder whose predicate accepts ``lp`` (entry-point plugins loaded first)."""
    _load_plugins()
    for _name, pred, factory in DATA_FEEDERS:
        if pred(lp):
            return factory(lp, ctx)
    raise UnsupportedParameter(f"{ctx.where}: no data feeder for layer type {lp.type!r}")


def claimed_python(lp) -> bool:
    """A bottomless ``Python`` layer that a registered feeder accepts (e.g. Fast R-CNN's roi_data_layer)."""
    return lp.type == "Python" and not len(lp.bottom) and any(pred(lp) for _n, pred, _f in DATA_FEEDERS)


class NetFeed:
    """All data layers of one net: one call -> every input top.  State: each layer's position."""

    def __init__(self, feeders: Mapping[str, Feeder], device=None):
        self.feeders = dict(feeders)     # layer name -> feeder
        self.device = device             # where the batches go (None: where the feeders made them)

    def __call__(self) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        for f in self.feeders.values():
            out.update(f())
        if self.device is not None:
            out = {k: v.to(self.device, non_blocking=True) for k, v in out.items()}
        return out

    def state_dict(self) -> dict:
        return {k: f.state_dict() for k, f in self.feeders.items() if hasattr(f, "state_dict")}

    def load_state_dict(self, d: Mapping) -> None:
        for k, f in self.feeders.items():
            if k in d and hasattr(f, "load_state_dict"):
                f.load_state_dict(d[k])


class TrainFeed(NetFeed):
    """The train net's feed; its state also carries the test nets' positions, so a resume continues them too."""

    def __init__(self, feeders, test_feeds: Sequence[NetFeed] = (), device=None):
        super().__init__(feeders, device)
        self.test_feeds = list(test_feeds)

    def state_dict(self) -> dict:
        return {"train": super().state_dict(), "test": [t.state_dict() for t in self.test_feeds]}

    def load_state_dict(self, d: Mapping) -> None:
        super().load_state_dict(d.get("train", {}))
        for t, s in zip(self.test_feeds, d.get("test", [])):
            t.load_state_dict(s)
