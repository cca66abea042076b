"""``caffekt train`` as a library: Caffe's ``caffe train`` (tools/caffe.cpp) on our Solver.

What it does, in Caffe's order:

* **Solver file** read and upgraded (``io.read_solver``); ``--max-iter`` and
  ``--seed`` override ``max_iter`` / ``random_seed``.  Paths in it are taken
  relative to the current directory as Caffe does; a relative ``net`` /
  ``train_net`` / ``test_net`` / data source / ``snapshot_prefix`` directory
  that is not there but exists beside the solver file is taken from there.
  ``out`` puts snapshots and logs in one folder, keeping Caffe's names
  ``<basename(prefix)>_iter_<N>.caffemodel|.solverstate``.
* **Nets** as ``Solver::InitTrainNet`` / ``InitTestNets`` choose them: one of
  ``train_net_param``, ``train_net``, ``net_param``, ``net`` for TRAIN
  (state: phase TRAIN, the net's own state, then ``train_state``); then
  ``test_net_param``s, ``test_net``s, and the generic net for the remaining
  ``test_iter`` entries (phase TEST, then ``test_state[i]``).
* **Data layers** are named inputs of our nets; each is fed by a *feeder*
  built from its own params (``DATA_FEEDERS``, a registry of
  ``(name, predicate(layer_param), factory(layer_param, ctx))`` consulted in
  order, so e.g. the Jigsaw++ puzzle data of ``caffekt.kt.jigsaw`` plugs in
  with ``register_data_feeder`` without touching this file).
* **Weights**: the solver's ``weights`` then ``--weights a,b`` copied in order
  (``LoadNetWeights``); ``--resume`` and ``--weights`` together are refused,
  as ``caffe train`` refuses them.
* **Multi-process** (``torchrun``; ``WORLD_SIZE`` > 1), as Caffe's NCCL
  multi-GPU (parallel.cpp): every rank builds the same solver, rank 0's
  weights are broadcast, each rank runs ``batch_size`` samples per pass, and
  after the ``iter_size`` passes the diffs are summed over ranks and scaled by
  ``1 / world_size`` (``ncclAllReduce(sum)`` + ``caffe_gpu_scal(1/solver_count)``)
  before every rank applies the same update.  So with losses normalised by
  the batch, N ranks x ``batch_size`` train like one process with
  ``N * batch_size``.  Rank r reads the samples at stream positions
  ``p % N == r`` (``DataLayer::Skip``), the torch seed is
  ``random_seed + rank`` (``Solver::Init``), and only rank 0 tests, logs and
  snapshots.  Every rank resumes from the same solverstate (as Caffe's
  workers all ``Restore`` the file); its side files hold rank 0's RNG
  streams, so a resumed multi-process run with Dropout is not bit-identical
  to an uninterrupted one (weights, history and data position are).
"""
from __future__ import annotations

import copy
import glob
import logging
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import CaffeCompatError, CaffeFormatError, UnsupportedParameter
from .proto import caffe_pb2

log = logging.getLogger("caffe_compat.train")

# ================================================================ paths


def _beside(path: str, base_dir: str) -> str:
    """``path`` as Caffe opens it (from the CWD); if absent there, the same relative path under ``base_dir``."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


def resolve_solver_paths(param, solver_path: str, out: Optional[str] = None) -> None:
    """Rewrite the relative paths of a read solver in place (see the module docstring).

    Expects ``snapshot_prefix`` as ``io.read_solver`` leaves it (Caffe's
    UpgradeSnapshotPrefixProperty applied relative to the CWD).
    """
    base = os.path.dirname(os.path.abspath(solver_path))
    for name in ("net", "train_net"):
        if param.HasField(name):
            setattr(param, name, _beside(getattr(param, name), base))
    for i, p in enumerate(param.test_net):
        param.test_net[i] = _beside(p, base)
    prefix = param.snapshot_prefix
    if prefix and not os.path.isabs(prefix):
        stem = os.path.splitext(os.path.basename(solver_path))[0]
        head = os.path.dirname(prefix)
        alt = os.path.join(base, prefix)
        if os.path.isdir(alt) and not os.path.isdir(prefix):
            # the prefix names a folder beside the solver: the solver's stem inside it (Caffe's rule)
            prefix = os.path.join(alt, stem)
        elif head and not os.path.isdir(head) and os.path.isdir(os.path.join(base, head)):
            prefix = alt
        param.snapshot_prefix = prefix
    if out is not None:
        os.makedirs(out, exist_ok=True)
        param.snapshot_prefix = os.path.join(out, os.path.basename(param.snapshot_prefix) or "snapshot")


def snapshot_complete(state_path: str) -> bool:
    """A snapshot a run can resume bit-identically: solverstate, its caffemodel and both side files."""
    from .solver import snapshot as snap
    model = state_path[:-len(".solverstate")] + ".caffemodel"
    return all(os.path.isfile(p) for p in (state_path, model, state_path + snap.SIDE_JSON,
                                           state_path + snap.SIDE_NPZ))


def latest_snapshot(prefix: str) -> Optional[str]:
    """The ``<prefix>_iter_<N>.solverstate`` with the largest N whose snapshot is complete, or None."""
    pat = re.compile(re.escape(os.path.basename(prefix)) + r"_iter_(\d+)\.solverstate\Z")
    best: Tuple[int, Optional[str]] = (-1, None)
    for p in glob.glob(glob.escape(prefix) + "_iter_*.solverstate"):
        m = pat.match(os.path.basename(p))
        if m and int(m.group(1)) > best[0] and snapshot_complete(p):
            best = (int(m.group(1)), p)
    return best[1]


# ================================================================ feeders


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
# packages add feeders through this entry-point group: each entry is a callable run once that
# calls register_data_feeder (so this module never imports the packages built on it)
FEEDER_ENTRY_POINTS = "caffekt.data_feeders"
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
    from importlib.metadata import entry_points
    for ep in entry_points(group=FEEDER_ENTRY_POINTS):
        ep.load()()


class _KeyStream:
    """Batches of dataset keys from a position on: Caffe's wrap-around read, one epoch order after another.

    Stream position p is sample ``order(p // n)[p % n]`` of epoch ``p // n``.
    Each call takes ``world_size * batch_size`` positions; this rank keeps
    those with ``offset % world_size == rank`` (``DataLayer::Skip``).
    """

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, rank: int, world_size: int,
                 start: int):
        from .data.loader import epoch_order
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
        from .data.loader import CaffeDataset
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
        from .data.loader import collate, start_workers
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
    from .data.transformer import DataTransformer
    tp = copy.deepcopy(lp.transform_param)
    if tp.HasField("mean_file"):
        tp.mean_file = _beside(tp.mean_file, ctx.base_dir)
    return DataTransformer(tp, ctx.phase, ctx.seed)


def _image_data(lp, ctx: FeedContext) -> SourceFeed:
    """ImageData (image_data_layer.cpp): list lines ``path label``, imread(root_folder + path), resized, transformed."""
    from .data.sources import ImageListSource
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
    from .data.jps import JpsTransformer, RelabelledSource, is_fork_layer, read_labels_bin
    from .data.sources import LMDBSource
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
    from .layers.input import Input
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


# ================================================================ nets


@dataclass
class NetSpec:
    param: Any                  # NetParameter with its state merged
    source: str                 # for messages: "net file X" / "net_param"
    phase: str


def _read_net_file(path: str, field_name: str):
    from .io import read_net
    if not os.path.exists(path):
        raise CaffeFormatError(f"net file not found (solver field {field_name!r})", path)
    return read_net(path)


def _with_state(net_param, phase: int, extra_state=None):
    """NetState: the phase, merged with the net's own state, then the solver's train/test state."""
    st = caffe_pb2.NetState(phase=phase)
    st.MergeFrom(net_param.state)
    if extra_state is not None:
        st.MergeFrom(extra_state)
    net_param.state.CopyFrom(st)
    return net_param


def net_specs(param, where: str) -> Tuple[NetSpec, List[NetSpec]]:
    """(train, [tests]) as Solver::InitTrainNet / InitTestNets pick and state them."""
    given = [f for f in ("net", "net_param", "train_net", "train_net_param") if param.HasField(f)]
    if len(given) != 1:
        raise UnsupportedParameter(f"{where}: SolverParameter must specify exactly one train net with "
                                   f"net, net_param, train_net or train_net_param; found {given or 'none'}")
    if param.HasField("train_net_param"):
        train = NetSpec(copy.deepcopy(param.train_net_param), "train_net_param", "TRAIN")
    elif param.HasField("train_net"):
        train = NetSpec(_read_net_file(param.train_net, "train_net"), f"train_net file {param.train_net}", "TRAIN")
    elif param.HasField("net_param"):
        train = NetSpec(copy.deepcopy(param.net_param), "net_param", "TRAIN")
    else:
        train = NetSpec(_read_net_file(param.net, "net"), f"net file {param.net}", "TRAIN")
    _with_state(train.param, caffe_pb2.TRAIN, param.train_state if param.HasField("train_state") else None)

    tests: List[NetSpec] = [NetSpec(copy.deepcopy(p), "test_net_param", "TEST") for p in param.test_net_param]
    tests += [NetSpec(_read_net_file(p, "test_net"), f"test_net file {p}", "TEST") for p in param.test_net]
    generic = param.HasField("net") or param.HasField("net_param")
    n_iter = len(param.test_iter)
    if (n_iter < len(tests)) if generic else (n_iter != len(tests)):
        raise UnsupportedParameter(f"{where}: test_iter must be specified for each test network "
                                   f"({len(tests)} test nets, {n_iter} test_iter)")
    for _ in range(n_iter - len(tests)):
        if param.HasField("net_param"):
            tests.append(NetSpec(copy.deepcopy(param.net_param), "net_param", "TEST"))
        else:
            tests.append(NetSpec(_read_net_file(param.net, "net"), f"net file {param.net}", "TEST"))
    if len(param.test_state) and len(param.test_state) != len(tests):
        raise UnsupportedParameter(f"{where}: test_state must be unspecified or specified once per test "
                                   f"net ({len(tests)} test nets, {len(param.test_state)} test_state)")
    for i, t in enumerate(tests):
        _with_state(t.param, caffe_pb2.TEST, param.test_state[i] if len(param.test_state) else None)
    return train, tests


def build_net(spec: NetSpec, ctx: FeedContext, feeds: Optional[Mapping[str, Any]] = None,
              feeders: Optional[Mapping[str, FeederFactory]] = None):
    """(Net, NetFeed): feeders made from each kept data layer's params, then the net with their shapes.

    ``feeds`` (top name -> tensor) replaces the feeder of any data layer whose tops it all names;
    ``feeders`` (layer name -> factory(lp, ctx), as registered ones) replaces a layer's feeder.  A feeder with a
    ``bind(net)`` method is handed the built net (e.g. to drive its MergeData layer).
    """
    from . import layers as L
    from .layers.input import NetInput
    from .net import Net, filter_layers
    p = spec.param
    phase = caffe_pb2.TRAIN if spec.phase == "TRAIN" else caffe_pb2.TEST
    given = dict(feeders or {})
    made: Dict[str, Feeder] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    feeds = dict(feeds or {})
    for lp in filter_layers(p, phase, p.state.level, list(p.state.stage), spec.source):
        try:
            cls = L.get(lp.type, lp.name)
        except CaffeCompatError:
            continue   # the net builder reports it with its context
        if not (isinstance(cls, type) and issubclass(cls, NetInput)):
            continue
        lctx = copy.copy(ctx)
        lctx.phase = spec.phase
        lctx.where = f"{spec.source}, layer {lp.name!r} (type {lp.type})"
        if lp.name in given:
            f = given[lp.name](lp, lctx)
        elif len(lp.top) and all(t in feeds for t in lp.top):
            f = ConstantFeed({t: torch.as_tensor(feeds[t]) for t in lp.top})
        else:
            f = make_feeder(lp, lctx)
        made[lp.name] = f
        shapes.update(f.shapes())
    net = Net(p, phase=spec.phase, level=p.state.level, input_shapes=shapes, path=spec.source)
    # the Net took the file's stages from p.state already
    for f in made.values():
        if hasattr(f, "bind"):
            f.bind(net)
    return net, NetFeed(made)


# ================================================================ the solver, distributed


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _make_solver_class():
    from .solver.solver import Solver

    class TrainSolver(Solver):
        """Solver + Caffe's NCCL gradient sum / solver_count before each update; rank 0 snapshots."""

        rank = 0
        world_size = 1

        def apply_update(self) -> None:
            dist = _dist()
            if dist is not None and self.world_size > 1:
                grads = [p.grad for p in self.params if p.grad is not None]
                if grads:
                    flat = torch.cat([g.reshape(-1) for g in grads])
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                    flat.mul_(np.float32(1.0) / np.float32(self.world_size))
                    k = 0
                    for g in grads:
                        g.copy_(flat[k:k + g.numel()].view_as(g))
                        k += g.numel()
            super().apply_update()

        def snapshot(self):
            if self.rank != 0:
                return self.snapshot_paths()
            return super().snapshot()

    return TrainSolver


def _init_distributed(device: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment.

    ``device`` None: CUDA when present, else CPU.  With world_size > 1 the
    process group is NCCL on CUDA and gloo on CPU, and rank r takes GPU
    ``LOCAL_RANK`` (else r modulo the GPU count).
    """
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist
    if dev.type == "cuda" and dev.index is None:
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


@torch.no_grad()
def _broadcast_params(net) -> None:
    dist = _dist()
    if dist is None:
        return
    for p in net.learnable_params():
        dist.broadcast(p.data, src=0)


# ================================================================ seeds


def _seed_globals(random_seed: int, rank: int) -> None:
    if random_seed >= 0:
        torch.manual_seed(int(random_seed) + rank)
        np.random.seed((int(random_seed) + rank) % 2 ** 32)


def _reseed_layers(net, random_seed: int, rank: int) -> None:
    """Layers with their own mask stream (Dropout) follow ``random_seed + rank``, as Caffe's RNG does."""
    if random_seed < 0 and rank == 0:
        return   # keep the layers' default streams
    seed = max(int(random_seed), 0) + rank
    for name, m in zip(net.layer_names, net.layers):
        if hasattr(m, "reseed"):
            m.reseed(zlib.crc32(f"{name}/{seed}".encode("utf-8")))


# ================================================================ train


@dataclass
class TrainResult:
    iter: int
    snapshot: Optional[Tuple[str, str]]       # (caffemodel, solverstate) of the last snapshot
    log_csv: Optional[str]
    smoothed_loss: float
    test_results: List[Dict[str, np.ndarray]] = field(default_factory=list)
    net: Any = None                           # the trained TRAIN net
    seconds: float = 0.0                      # wall time of the solve


def train(solver_path: str, *, weights: Sequence[str] = (), resume: Optional[str] = None,
          max_iter: Optional[int] = None, out: Optional[str] = None, seed: Optional[int] = None,
          workers: int = 0, progress: bool = True, feeds: Optional[Mapping[str, Any]] = None,
          feeders: Optional[Mapping[str, FeederFactory]] = None, labels_bin: Optional[str] = None,
          device: Optional[str] = None, callbacks: Sequence[Callable] = (),
          progress_desc: str = "train") -> TrainResult:
    """``caffe train --solver S [--weights a,b | --snapshot R]``; see the module docstring.

    ``resume="auto"``: the latest complete snapshot under the prefix, or a
    fresh start when there is none.  ``feeders`` (layer name -> feeder
    factory) replace the data layers' own (how ``caffekt.kt`` feeds puzzles from
    stored images); ``labels_bin`` is the fork's ``labels.bin`` for the TRAIN
    Data layers; ``device`` defaults to CUDA when present.  Everything that
    can be checked (files, solver type, lr policy, data sources, labels
    against the classifier, the solverstate against the net) is checked
    before the first iteration; failures are ``CaffeCompatError``s.
    """
    import time
    from .io import read_solver
    from .logs import TrainLogger
    from .solver.lr_policy import check_lr_policy
    from .solver.settings import from_proto
    from .solver.updates import check_settings

    if not os.path.isfile(solver_path):
        raise CaffeFormatError("solver file not found", solver_path)
    param = read_solver(solver_path)
    where = solver_path
    if max_iter is not None:
        param.max_iter = int(max_iter)
    if seed is not None:
        param.random_seed = int(seed)
    if resume and (weights or len(param.weights)) and resume != "auto":
        raise UnsupportedParameter("give a solverstate to resume training or weights to fine-tune, not both")
    settings = from_proto(param, where)
    check_settings(settings, where)
    check_lr_policy(settings, where)
    resolve_solver_paths(param, solver_path, out)
    snap_dir = os.path.dirname(param.snapshot_prefix) or "."
    if (param.snapshot or param.snapshot_after_train) and not os.path.isdir(snap_dir):
        # Caffe would only fail when writing the first snapshot, after training
        raise CaffeFormatError(f"the folder of snapshot_prefix does not exist ({snap_dir})", solver_path)

    if labels_bin is not None and not os.path.isfile(labels_bin):
        raise CaffeFormatError("labels file not found (--labels-bin)", labels_bin)
    rank, world, dev = _init_distributed(device)
    data_seed = int(param.random_seed) if param.random_seed >= 0 else 0
    _seed_globals(param.random_seed, rank)   # Caffe seeds before InitTrainNet: fillers are seeded too
    ctx = FeedContext("TRAIN", data_seed, rank, world, int(workers),
                      os.path.dirname(os.path.abspath(solver_path)), labels_bin=labels_bin)
    train_spec, test_specs = net_specs(param, where)
    if rank != 0:
        test_specs = []   # Caffe tests on the root solver only
    net, train_feed = build_net(train_spec, ctx, feeds, feeders)
    if labels_bin:
        check_labels_fit(net, train_spec, labels_bin)
    _reseed_layers(net, param.random_seed, rank)
    test_nets, test_feeds = [], []
    for spec in test_specs:
        tctx = copy.copy(ctx)
        tctx.rank, tctx.world_size = 0, 1   # the root solver's test net reads everything
        tnet, tfeed = build_net(spec, tctx, feeds)
        tfeed.device = dev
        tnet.to(dev)
        test_nets.append((tnet, tfeed))
        test_feeds.append(tfeed)
    net.to(dev)
    feed = TrainFeed(train_feed.feeders, test_feeds, device=dev)

    from .weights import copy_trained_layers
    for group in list(param.weights) + list(weights):
        for w in (s.strip() for s in group.split(",")):
            if w:
                copy_trained_layers(net, _beside(w, ctx.base_dir))

    if world > 1:
        p2 = copy.deepcopy(param)
        if p2.random_seed >= 0:
            p2.random_seed = p2.random_seed + rank   # Solver::Init: random_seed + solver_rank
        param_for_solver = p2
    else:
        param_for_solver = param
    cls = _make_solver_class()
    solver = cls(param_for_solver, net, feed, test_nets=test_nets, where=where)
    solver.rank, solver.world_size = rank, world
    if resume == "auto":
        resume = latest_snapshot(param.snapshot_prefix)
    if resume:
        if not os.path.isfile(resume):
            raise CaffeFormatError("solverstate to resume from not found", resume)
        solver.restore(resume)
    _broadcast_params(net)

    logger = TrainLogger.for_solver(solver, enabled=(rank == 0), progress=progress and rank == 0,
                                    desc=progress_desc)
    solver.callbacks = [logger.on_iteration] + list(callbacks)
    t0 = time.perf_counter()
    try:
        solver.solve()
        if (not solver.requested_early_exit and param.test_interval and test_nets
                and solver.iter % param.test_interval == 0):
            logger.on_final_test(solver)
    finally:
        logger.close()
    model, state = solver.snapshot_paths()
    last = (model, state) if rank == 0 and os.path.isfile(state) else None
    return TrainResult(solver.iter, last if rank == 0 else None, logger.csv_path,
                       float(solver.smoothed_loss), list(solver.test_results), net,
                       time.perf_counter() - t0)


def check_labels_fit(net, spec: NetSpec, labels_path: str) -> None:
    """labels.bin values must index the classifier each relabelled Data layer feeds (SoftmaxWithLoss/Accuracy)."""
    from .data.jps import read_labels_bin
    labels = read_labels_bin(labels_path)
    label_tops = {lp.top[1] for lp in spec.param.layer if lp.type == "Data" and len(lp.top) > 1}
    for lp in net.layer_params_proto:
        if lp.type in ("SoftmaxWithLoss", "Accuracy") and len(lp.bottom) > 1 and lp.bottom[1] in label_tops:
            n = int(net.blob_shapes[lp.bottom[0]][1])
            if int(labels.max()) >= n:
                raise CaffeFormatError(f"label {int(labels.max())} (index {int(labels.argmax())}) is outside the "
                                       f"{n} outputs of {lp.bottom[0]!r} that layer {lp.name!r} "
                                       f"({lp.type}) scores", labels_path)


def shutdown_distributed() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


__all__ = ["train", "TrainResult", "FeedContext", "register_data_feeder", "DATA_FEEDERS", "make_feeder",
           "SourceFeed", "ConstantFeed", "NetFeed", "TrainFeed", "net_specs", "build_net",
           "resolve_solver_paths", "latest_snapshot", "snapshot_complete", "shutdown_distributed"]
