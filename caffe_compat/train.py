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
import os
import re
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from .errors import CaffeCompatError, CaffeFormatError, UnsupportedParameter
from .proto import caffe_pb2

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


Feeder = Any   # callable() -> {top: tensor}; .shapes() -> {top: shape}; optional state_dict/load_state_dict
FeederFactory = Callable[[Any, FeedContext], Feeder]
# (name, predicate(layer_param) -> bool, factory(layer_param, ctx) -> feeder), first match wins
DATA_FEEDERS: List[Tuple[str, Callable[[Any], bool], FeederFactory]] = []
# modules imported (once) to let them register feeders before a layer is found unclaimed
FEEDER_PLUGINS: List[str] = ["caffekt.kt.jigsaw"]
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
    import importlib
    for mod in FEEDER_PLUGINS:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if e.name is None or not mod.startswith(e.name):
                raise   # the plugin exists but one of its own imports is missing


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
    """Data (data_layer.cpp) with backend LMDB: Datum records in key order, wrapping around."""
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
        raise CaffeFormatError(f"{ctx.where}: data source not found (data_param.source)", source)
    return SourceFeed(LMDBSource(source), _transformer(lp, ctx), lp.top, p.batch_size, shuffle=False, ctx=ctx)


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


_PUZZLE_FIELDS = ("hash_file", "siamese_size", "patch_size", "gap_size", "jitter_size")


def _is_puzzle(lp) -> bool:
    tp = lp.transform_param
    return lp.type == "Data" and any(tp.HasField(f) for f in _PUZZLE_FIELDS)


def _puzzle_unclaimed(lp, ctx: FeedContext):
    raise UnsupportedParameter(f"{ctx.where}: a Jigsaw++ fork Data layer (transform_param "
                               f"hash_file/siamese_size...); no puzzle feeder is registered "
                               f"(caffekt.kt.jigsaw registers one with register_data_feeder)")


for _name, _pred, _fac in [
        ("jigsaw-unclaimed", _is_puzzle, _puzzle_unclaimed),
        ("ImageData", lambda lp: lp.type == "ImageData", _image_data),
        ("Data", lambda lp: lp.type == "Data", _lmdb_data),
        ("Input", lambda lp: lp.type == "Input", _input_zeros),
        ("MemoryData", lambda lp: lp.type == "MemoryData", _memory_data),
        ("HDF5Data", lambda lp: lp.type == "HDF5Data", _hdf5_data),
        ("WindowData", lambda lp: lp.type == "WindowData", _window_data)]:
    register_data_feeder(_name, _pred, _fac, first=False)


def make_feeder(lp, ctx: FeedContext) -> Feeder:
    """The first registered feeder whose predicate accepts ``lp`` (plugins loaded on first need)."""
    if _is_puzzle(lp):
        _load_plugins()
    for _name, pred, factory in DATA_FEEDERS:
        if pred(lp):
            return factory(lp, ctx)
    raise UnsupportedParameter(f"{ctx.where}: no data feeder for layer type {lp.type!r}")


def _claimed_python(lp) -> bool:
    """A bottomless ``Python`` layer that a registered feeder accepts (e.g. Fast R-CNN's roi_data_layer)."""
    return lp.type == "Python" and not len(lp.bottom) and any(pred(lp) for _n, pred, _f in DATA_FEEDERS)


class NetFeed:
    """All data layers of one net: one call -> every input top.  State: each layer's position."""

    def __init__(self, feeders: Mapping[str, Feeder]):
        self.feeders = dict(feeders)     # layer name -> feeder

    def __call__(self) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        for f in self.feeders.values():
            out.update(f())
        return out

    def state_dict(self) -> dict:
        return {k: f.state_dict() for k, f in self.feeders.items() if hasattr(f, "state_dict")}

    def load_state_dict(self, d: Mapping) -> None:
        for k, f in self.feeders.items():
            if k in d and hasattr(f, "load_state_dict"):
                f.load_state_dict(d[k])


class TrainFeed(NetFeed):
    """The train net's feed; its state also carries the test nets' positions, so a resume continues them too."""

    def __init__(self, feeders, test_feeds: Sequence[NetFeed] = ()):
        super().__init__(feeders)
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


def build_net(spec: NetSpec, ctx: FeedContext, feeds: Optional[Mapping[str, Any]] = None):
    """(Net, NetFeed): feeders made from each kept data layer's params, then the net with their shapes.

    ``feeds`` (top name -> tensor) replaces the feeder of any data layer whose tops it all names.
    """
    from . import layers as L
    from .layers.input import NetInput
    from .net import Net, filter_layers
    p = spec.param
    phase = caffe_pb2.TRAIN if spec.phase == "TRAIN" else caffe_pb2.TEST
    feeders: Dict[str, Feeder] = {}
    shapes: Dict[str, Tuple[int, ...]] = {}
    feeds = dict(feeds or {})
    for lp in filter_layers(p, phase, p.state.level, list(p.state.stage), spec.source):
        claimed = _claimed_python(lp)
        try:
            cls = None if claimed else L.get(lp.type, lp.name)
        except CaffeCompatError:
            continue   # the net builder reports it with its context
        if not claimed and not (isinstance(cls, type) and issubclass(cls, NetInput)):
            continue
        lctx = copy.copy(ctx)
        lctx.phase = spec.phase
        lctx.where = f"{spec.source}, layer {lp.name!r} (type {lp.type})"
        if len(lp.top) and all(t in feeds for t in lp.top):
            f = ConstantFeed({t: torch.as_tensor(feeds[t]) for t in lp.top})
        else:
            f = make_feeder(lp, lctx)
        feeders[lp.name] = f
        shapes.update(f.shapes())
    # a bottomless Python layer claimed by a registered feeder is a named input (its code never runs)
    python_layers = "as_input" if any(map(_claimed_python, p.layer)) else "refuse"
    net = Net(p, phase=spec.phase, level=p.state.level, input_shapes=shapes, path=spec.source,
              python_layers=python_layers)
    # the Net took the file's stages from p.state already
    return net, NetFeed(feeders)


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


def _init_distributed() -> Tuple[int, int]:
    """(rank, world_size) from torchrun's environment; gloo process group when world_size > 1."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


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


def train(solver_path: str, *, weights: Sequence[str] = (), resume: Optional[str] = None,
          max_iter: Optional[int] = None, out: Optional[str] = None, seed: Optional[int] = None,
          workers: int = 0, progress: bool = True, feeds: Optional[Mapping[str, Any]] = None,
          callbacks: Sequence[Callable] = ()) -> TrainResult:
    """``caffe train --solver S [--weights a,b | --snapshot R]``; see the module docstring.

    ``resume="auto"``: the latest complete snapshot under the prefix, or a
    fresh start when there is none.  Everything that can be checked (files,
    solver type, lr policy, data sources, the solverstate against the net) is
    checked before the first iteration; failures are ``CaffeCompatError``s.
    """
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

    rank, world = _init_distributed()
    data_seed = int(param.random_seed) if param.random_seed >= 0 else 0
    _seed_globals(param.random_seed, rank)   # Caffe seeds before InitTrainNet: fillers are seeded too
    ctx = FeedContext("TRAIN", data_seed, rank, world, int(workers),
                      os.path.dirname(os.path.abspath(solver_path)))
    train_spec, test_specs = net_specs(param, where)
    if rank != 0:
        test_specs = []   # Caffe tests on the root solver only
    net, train_feed = build_net(train_spec, ctx, feeds)
    _reseed_layers(net, param.random_seed, rank)
    test_nets, test_feeds = [], []
    for spec in test_specs:
        tctx = copy.copy(ctx)
        tctx.rank, tctx.world_size = 0, 1   # the root solver's test net reads everything
        tnet, tfeed = build_net(spec, tctx, feeds)
        test_nets.append((tnet, tfeed))
        test_feeds.append(tfeed)
    feed = TrainFeed(train_feed.feeders, test_feeds)

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

    logger = TrainLogger.for_solver(solver, enabled=(rank == 0), progress=progress and rank == 0)
    solver.callbacks = [logger.on_iteration] + list(callbacks)
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
                       float(solver.smoothed_loss), list(solver.test_results))


def shutdown_distributed() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()


__all__ = ["train", "TrainResult", "FeedContext", "register_data_feeder", "DATA_FEEDERS", "make_feeder",
           "SourceFeed", "ConstantFeed", "NetFeed", "TrainFeed", "net_specs", "build_net",
           "resolve_solver_paths", "latest_snapshot", "snapshot_complete", "shutdown_distributed"]
