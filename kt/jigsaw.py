"""Jigsaw++ pretext training: the puzzle source, datasets, nets, feeds, training and evaluation.

One puzzle source serves both ways of training:

* **dataset path**: ``PuzzleDataset`` -> ``(tiles (9,3,64,64) float32, label)``
  -> a 9-tower net with a plain ``data`` input (``cfn_net_param`` or the
  shipped ``jigsaw_cfn_pretext_9tower.prototxt``) -> the Caffe-semantics Solver;
* **authors' path**: ``train_val_cfn_jps++.prototxt`` as released, its two
  fork ``Data`` layers fed with what they would produce (``data_0``: permuted,
  jittered, colour-processed tiles, *unnormalised*; ``data_r``: tiles of the
  occluder image in natural order; ``label``), so the prototxt's own
  Slice/MergeData/MVN/Power run in the graph.

Sample ``i`` of epoch ``e`` is built from generators seeded by (seed, e, i)
alone, so batches do not depend on the worker count.  The MergeData step is
``merge_plan``, a port of the loop in the fork's merge_data_layer.cpp driven by
a per-sample ``rand()``; on the authors' path the feed hands those same
``rand()`` values to the net's MergeData layer, so both paths put identical
tensors into the towers (see tests/kt/test_jigsaw.py).
"""
from __future__ import annotations

import csv
import logging
import os
import time
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from caffe_compat.data.loader import start_workers
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter

from .permutations import _check as _check_perms
from .permutations import read_permutations
from .puzzle import GRID, JITTER, STORED, TILE, PuzzleConfig, colour_tiles, mvn_tiles

log = logging.getLogger("caffekt.jigsaw")

NTILES = GRID * GRID
RAND_MAX = 2 ** 31              # the fork's rand() range (glibc RAND_MAX + 1)
_SAMPLE_TAG = 0x4A494753        # keeps puzzle streams apart from other seeded streams
OCCLUDERS = ("another", "faithful", "none")

# the authors' schedule (solver_cfn_jps.prototxt)
AUTHORS_SCHEDULE = dict(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000, max_iter=350000,
                        momentum=0.9, weight_decay=0.0005, display=100, snapshot=5000)
AUTHORS_BATCH = 256


# --------------------------------------------------------------------------- MergeData

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


# --------------------------------------------------------------------------- the puzzle source

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
        p = _check_perms(np.asarray(perms), None)
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

    def __len__(self) -> int:
        return len(self.images)

    def streams(self, i: int, epoch: int = 0) -> List[np.random.Generator]:
        ss = np.random.SeedSequence([_SAMPLE_TAG, self.seed, int(epoch), int(i)])
        return [np.random.default_rng(s) for s in ss.spawn(3)]

    def parts(self, i: int, epoch: int = 0) -> PuzzleParts:
        cfg, n = self.cfg, len(self.images)
        g_puzzle, g_occ, g_merge = self.streams(i, epoch)
        img = self.images[i]
        label = int(g_puzzle.integers(len(self.perms)))
        tiles = colour_tiles(img, g_puzzle, cfg)[self.perms[label]]
        j = i
        if cfg.occluder == "another":
            j = (i + 1 + int(g_occ.integers(n - 1))) % n
        other = colour_tiles(self.images[j] if j != i else img, g_occ, cfg)
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


# --------------------------------------------------------------------------- batches

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


# --------------------------------------------------------------------------- nets

def _param_spec(lp, name: Optional[str], lr: float, decay: float):
    p = lp.param.add()
    if name:
        p.name = name
    p.lr_mult, p.decay_mult = lr, decay


def _filler(f, kind: str, value: float):
    f.type = kind
    if kind == "gaussian":
        f.std = value
    elif kind == "constant":
        f.value = value


def _layer(net, name, type_, bottom, top):
    lp = net.layer.add()
    lp.name, lp.type = name, type_
    lp.bottom.extend([bottom] if isinstance(bottom, str) else bottom)
    lp.top.extend([top] if isinstance(top, str) else top)
    return lp


def _conv(net, name, bottom, top, pname, n, k, stride=1, pad=0, group=1, std=0.01, bias=0.0, filler="gaussian"):
    lp = _layer(net, name, "Convolution", bottom, top)
    _param_spec(lp, f"{pname}_w", 1, 1)
    _param_spec(lp, f"{pname}_b", 2, 0)
    cp = lp.convolution_param
    cp.num_output, cp.kernel_size[:] = n, [k]
    if stride != 1:
        cp.stride[:] = [stride]
    if pad:
        cp.pad[:] = [pad]
    if group != 1:
        cp.group = group
    _filler(cp.weight_filler, filler, std)
    _filler(cp.bias_filler, "constant", bias)
    return lp


def _fc(net, name, bottom, top, n, std, bias, pname=None, filler="gaussian"):
    lp = _layer(net, name, "InnerProduct", bottom, top)
    _param_spec(lp, f"{pname}_w" if pname else None, 1, 1)
    _param_spec(lp, f"{pname}_b" if pname else None, 2, 0)
    ip = lp.inner_product_param
    ip.num_output = n
    _filler(ip.weight_filler, filler, std)
    _filler(ip.bias_filler, "constant", bias)
    return lp


def _pool(net, name, bottom, top, k=3, s=2):
    lp = _layer(net, name, "Pooling", bottom, top)
    lp.pooling_param.pool = lp.pooling_param.MAX
    lp.pooling_param.kernel_size, lp.pooling_param.stride = k, s


def _lrn(net, name, bottom, top):
    lp = _layer(net, name, "LRN", bottom, top)
    lp.lrn_param.local_size, lp.lrn_param.alpha, lp.lrn_param.beta = 5, 1e-4, 0.75


def _relu(net, name, blob):
    _layer(net, name, "ReLU", blob, blob)


def _drop(net, name, blob, ratio=0.5):
    _layer(net, name, "Dropout", blob, blob).dropout_param.dropout_ratio = ratio


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)  # group-2 convolutions need even widths


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _tower(net, arch: str, t: int, width: float, fc6: int, dropout: float, init: str) -> str:
    """One tower on blob ``tile{t}``; tower 1's layer names are the deploy names, others get ``_t{t}``."""
    sfx = "" if t == 1 else f"_t{t}"
    x = f"tile{t}_n"
    _layer(net, f"datamvn{sfx}", "MVN", f"tile{t}", x).mvn_param.across_channels = True
    _layer(net, f"datascale{sfx}", "Power", x, x).power_param.scale = 50
    cf = "msra" if init == "msra" else "gaussian"
    b1 = 1 if cf == "gaussian" else 0  # the authors' bias 1 suits their gaussian init only
    if arch == "alexnet":
        c = [_even(96 * width), _even(256 * width), _even(384 * width), _even(384 * width), _even(256 * width)]
        # msra's gain assumes unit-variance inputs; the tiles arrive with std 50 (the Power layer)
        std1 = 0.01 if cf == "gaussian" else (2.0 / (3 * 11 * 11)) ** 0.5 / 50.0
        _conv(net, f"conv1{sfx}", x, f"conv1{sfx}", "conv1", c[0], 11, stride=2, std=std1)
        _relu(net, f"relu1{sfx}", f"conv1{sfx}")
        _pool(net, f"pool1{sfx}", f"conv1{sfx}", f"pool1{sfx}")
        _lrn(net, f"norm1{sfx}", f"pool1{sfx}", f"norm1{sfx}")
        _conv(net, f"conv2{sfx}", f"norm1{sfx}", f"conv2{sfx}", "conv2", c[1], 5, pad=2, group=2, bias=b1, filler=cf)
        _relu(net, f"relu2{sfx}", f"conv2{sfx}")
        _pool(net, f"pool2{sfx}", f"conv2{sfx}", f"pool2{sfx}")
        _lrn(net, f"norm2{sfx}", f"pool2{sfx}", f"norm2{sfx}")
        _conv(net, f"conv3{sfx}", f"norm2{sfx}", f"conv3{sfx}", "conv3", c[2], 3, pad=1, filler=cf)
        _relu(net, f"relu3{sfx}", f"conv3{sfx}")
        _conv(net, f"conv4{sfx}", f"conv3{sfx}", f"conv4{sfx}", "conv4", c[3], 3, pad=1, group=2, bias=b1, filler=cf)
        _relu(net, f"relu4{sfx}", f"conv4{sfx}")
        _conv(net, f"conv5{sfx}", f"conv4{sfx}", f"conv5{sfx}", "conv5", c[4], 3, pad=1, group=2, bias=b1, filler=cf)
        _relu(net, f"relu5{sfx}", f"conv5{sfx}")
        _pool(net, f"pool5{sfx}", f"conv5{sfx}", f"pool5{sfx}")
        last, std6, filler = f"pool5{sfx}", 0.005, cf
    elif arch == "vgg16":
        last = x
        for bi, block in enumerate(VGG16_BLOCKS, 1):
            for ci, ch in enumerate(block, 1):
                name = f"conv{bi}_{ci}{sfx}"
                _conv(net, name, last, name, f"conv{bi}_{ci}", max(1, int(round(ch * width))), 3, pad=1,
                      filler="msra")
                _relu(net, f"relu{bi}_{ci}{sfx}", name)
                last = name
            _pool(net, f"pool{bi}{sfx}", last, f"pool{bi}{sfx}", k=2, s=2)
            last = f"pool{bi}{sfx}"
        std6, filler = 0.005, "gaussian"
    else:
        raise UnsupportedParameter(f"arch must be 'alexnet' or 'vgg16', got {arch!r}")
    _fc(net, f"fc6{sfx}", last, f"fc6{sfx}", fc6, std6, 1.0 if filler == "gaussian" else 0.0, pname="fc6",
        filler=filler)
    _relu(net, f"relu6{sfx}", f"fc6{sfx}")
    if dropout > 0:
        _drop(net, f"drop6{sfx}", f"fc6{sfx}", dropout)
    return f"fc6{sfx}"


def cfn_net_param(n_perms: int = 701, arch: str = "alexnet", batch_size: int = AUTHORS_BATCH,
                  width: float = 1.0, fc6: int = 1024, fc7: int = 4096, dropout: float = 0.5,
                  init: str = "authors"):
    """The 9-tower context-free network as a ``NetParameter`` (inputs ``data`` N x 27 x 64 x 64, ``label``).

    ``alexnet`` at width 1 is ``prototxt/jigsaw_cfn_pretext_9tower.prototxt``
    with fc8 sized ``n_perms`` (CaffeNet order, conv1 stride 2, fc6 1024 per
    tile, concat 9216, fc7 4096, the authors' fillers).  ``vgg16``: 13 3x3
    convolutions in VGG16's five blocks (msra fillers, no LRN) on the same
    64x64 tiles, so pool5 is 2x2x512 -> fc6 1024 per tile; the authors released
    no VGG16 Jigsaw++ definition, this is our choice.  ``width`` scales
    every convolution; ``dropout`` 0 drops the Dropout layers and ``init="msra"``
    uses msra weight fillers everywhere (both only for short test runs).
    """
    if init not in ("authors", "msra"):
        raise UnsupportedParameter(f"init must be 'authors' or 'msra', got {init!r}")
    from caffe_compat.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name=f"jigsaw_cfn_pretext_9tower_{arch}")
    inp = _layer(net, "data", "Input", [], ["data", "label"])
    inp.input_param.shape.add().dim.extend([batch_size, 3 * NTILES, TILE, TILE])
    inp.input_param.shape.add().dim.extend([batch_size])
    sl = _layer(net, "slice_tiles", "Slice", "data", [f"tile{t}" for t in range(1, NTILES + 1)])
    sl.slice_param.axis = 1
    sl.slice_param.slice_point.extend([3 * t for t in range(1, NTILES)])
    heads = [_tower(net, arch, t, width, fc6, dropout, init) for t in range(1, NTILES + 1)]
    _layer(net, "concat", "Concat", heads, "concat")
    fc_fill = "msra" if init == "msra" else "gaussian"
    _fc(net, "fc7", "concat", "fc7", fc7, 0.005, 1.0 if init == "authors" else 0.0, filler=fc_fill)
    _relu(net, "relu7", "fc7")
    if dropout > 0:
        _drop(net, "drop7", "fc7", dropout)
    _fc(net, "fc8_jigsaw", "fc7", "fc8_jigsaw", int(n_perms), 0.01, 0.0)  # small logits at the start
    acc = _layer(net, "accuracy", "Accuracy", ["fc8_jigsaw", "label"], "accuracy")
    acc.include.add().phase = caffe_pb2.TEST
    _layer(net, "loss", "SoftmaxWithLoss", ["fc8_jigsaw", "label"], "loss")
    return net


def write_cfn_prototxt(path: str, **kw) -> str:
    """``cfn_net_param(**kw)`` written as a prototxt (atomically); returns ``path``."""
    from caffe_compat.prototxt import write_prototxt
    write_prototxt(cfn_net_param(**kw), path)
    return path


# --------------------------------------------------------------------------- what a net expects

@dataclass
class NetFeedSpec:
    """How to feed a jigsaw net: the blob names, the class count and (authors' nets) the fork layers."""

    style: str                        # "tiles" (one data input) or "authors" (data_0 + data_r + MergeData)
    data: str
    label: str
    score: str                        # the classifier blob (bottom 0 of the loss / accuracy)
    n_classes: int
    other: Optional[str] = None       # data_r
    merge_layer: Optional[str] = None
    min_substitute: int = 0
    max_substitute: int = 1
    hash_file: Optional[str] = None
    batch_size: Optional[int] = None


_TRANSFORM_WANT = {"crop_size": STORED, "siamese_size": NTILES, "patch_size": TILE, "jitter_size": JITTER,
                   "gap_size": 0}


def _check_fork_transform(lp, path: Optional[str]) -> None:
    tp = lp.transform_param
    for field, want in _TRANSFORM_WANT.items():
        got = int(getattr(tp, field))
        if got != want:
            raise UnsupportedParameter(
                f"{path or 'net'}: layer {lp.name!r}: transform_param.{field} is {got}; the puzzle source "
                f"implements the authors' setting {field}: {want} (255x255 stored images, 3x3 grid of "
                f"85-pixel cells, 64-pixel tiles, jitter 0..18)")
    if tp.mirror or len(tp.mean_value) or tp.mean_file or tp.scale != 1:
        raise UnsupportedParameter(f"{path or 'net'}: layer {lp.name!r}: mirror/mean/scale in a puzzle Data "
                                   "layer are not part of the authors' setting")


def feed_spec(net) -> NetFeedSpec:
    """Read a built ``Net``'s inputs: a plain 9-tile net or the authors' two-Data-layer net."""
    path = getattr(net, "path", None)
    lps = {lp.name: lp for lp in net.layer_params_proto}
    loss = [lp for lp in net.layer_params_proto if lp.type in ("SoftmaxWithLoss", "Accuracy")]
    if not loss:
        raise UnsupportedParameter(f"{path or 'net'}: no SoftmaxWithLoss or Accuracy layer names the classifier")
    score, label = loss[0].bottom[0], loss[0].bottom[1]
    n_classes = int(net.blob_shapes[score][1])
    fork = [lp for lp in lps.values() if lp.type == "Data" and lp.transform_param.siamese_size > 1]
    if fork:
        puzzle = [lp for lp in fork if lp.transform_param.hash_file]
        plain = [lp for lp in fork if not lp.transform_param.hash_file]
        if len(puzzle) != 1 or len(plain) != 1:
            raise UnsupportedParameter(f"{path or 'net'}: expected one puzzle Data layer (with hash_file) and "
                                       f"one occluder Data layer, found {len(puzzle)} and {len(plain)}")
        for lp in fork:
            _check_fork_transform(lp, path)
        merges = [lp for lp in net.layer_params_proto if lp.type == "MergeData"]
        if len(merges) != 1:
            raise UnsupportedParameter(f"{path or 'net'}: expected one MergeData layer, found {len(merges)}")
        mp = merges[0].merge_data_param
        return NetFeedSpec("authors", puzzle[0].top[0], puzzle[0].top[1], score, n_classes,
                           other=plain[0].top[0], merge_layer=merges[0].name,
                           min_substitute=int(mp.min_substitute), max_substitute=int(mp.max_substitute),
                           hash_file=puzzle[0].transform_param.hash_file,
                           batch_size=int(puzzle[0].data_param.batch_size) or None)
    data = [n for n in net.inputs if n != label]
    if len(data) != 1 or tuple(net.blob_shapes[data[0]][1:]) != (3 * NTILES, TILE, TILE):
        raise UnsupportedParameter(f"{path or 'net'}: expected one tile input N x {3 * NTILES} x {TILE} x "
                                   f"{TILE} besides {label!r}; inputs are "
                                   f"{[(n, net.blob_shapes[n]) for n in net.inputs]}")
    return NetFeedSpec("tiles", data[0], label, score, n_classes, batch_size=int(net.blob_shapes[data[0]][0]))


def check_perms_fit(n_perms: int, spec: NetFeedSpec, where: str = "net") -> None:
    if n_perms > spec.n_classes:
        raise UnsupportedParameter(f"{where}: the permutation set has {n_perms} permutations but the "
                                   f"classifier {spec.score!r} has only {spec.n_classes} outputs")


def resolve_hash_file(hash_file: str, prototxt: Optional[str]) -> str:
    """The fork opens hash_file from the working directory; failing that we look beside the prototxt."""
    if os.path.exists(hash_file) or os.path.isabs(hash_file) or not prototxt:
        return hash_file
    beside = os.path.join(os.path.dirname(os.path.abspath(prototxt)), hash_file)
    return beside if os.path.exists(beside) else hash_file


def _merge_module(net, name: str):
    return net.layer(name)


class PuzzleFeed:
    """The Solver's feed: each call returns the next batch as the net's named inputs.

    Authors' nets: ``data_0``, ``data_r`` and ``label``, and the net's
    MergeData layer is handed the batch's recorded rand() values.
    """

    def __init__(self, net, spec: NetFeedSpec, loader: PuzzleLoader, device=None):
        self.net, self.spec, self.loader, self.device = net, spec, loader, device
        self._stream: Optional[DrawStream] = None

    def __call__(self) -> Dict[str, torch.Tensor]:
        if self._stream is not None:
            self._stream.check_consumed()
        batch = self.loader.next()
        dev = self.device
        if self.spec.style == "tiles":
            data, label = batch
            return {self.spec.data: data.to(dev), self.spec.label: label.to(dev)}
        d0, dr, label, draws = batch
        self._stream = DrawStream([v for d in draws for v in d])
        _merge_module(self.net, self.spec.merge_layer)._rand = self._stream
        return {self.spec.data: d0.to(dev), self.spec.other: dr.to(dev), self.spec.label: label.to(dev)}

    def state_dict(self) -> dict:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.loader.load_state_dict(state)


def make_feed(net, source: PuzzleSource, batch_size: int, *, seed: int = 0, shuffle: bool = True,
              workers: int = 0, rank: int = 0, world: int = 1, device=None) -> PuzzleFeed:
    """A ``PuzzleFeed`` for ``net`` over ``source`` (checks the set against the classifier first)."""
    spec = feed_spec(net)
    check_perms_fit(len(source.perms), spec, getattr(net, "path", None) or "net")
    if spec.style == "authors":
        if source.cfg.min_substitute != spec.min_substitute or source.cfg.max_substitute != spec.max_substitute:
            raise UnsupportedParameter(
                f"the puzzle source substitutes rand() % {source.cfg.max_substitute} + "
                f"{source.cfg.min_substitute} tiles but the net's MergeData layer {spec.merge_layer!r} "
                f"has {spec.max_substitute} / {spec.min_substitute}")
        ds: PuzzleDataset = PuzzlePartsDataset(source, None)
    else:
        ds = PuzzleDataset(source, None)
    loader = PuzzleLoader(ds, batch_size, seed=seed, shuffle=shuffle, workers=workers, rank=rank, world=world)
    return PuzzleFeed(net, spec, loader, device)


# --------------------------------------------------------------------------- training

def default_solver_param(out_prefix: str, max_iter: Optional[int] = None, **overrides):
    """The authors' schedule as a ``SolverParameter`` (SGD, lr 0.01 x0.1 every 100K, 350K iterations)."""
    from caffe_compat.proto import caffe_pb2

    sp = caffe_pb2.SolverParameter()
    for k, v in {**AUTHORS_SCHEDULE, **overrides}.items():
        setattr(sp, k, v)
    if max_iter is not None:
        sp.max_iter = int(max_iter)
    sp.snapshot_prefix = out_prefix
    sp.type = "SGD"
    return sp


def _dist():
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _solver_class(world: int):
    from caffe_compat.solver import Solver
    if world <= 1:
        return Solver

    import torch.distributed as dist

    class _AllReduceSolver(Solver):
        """Each rank's forward/backward on its own shard, then the diffs averaged (data parallel)."""

        def forward_backward(self) -> float:
            loss = super().forward_backward()
            for g in self._grads():
                dist.all_reduce(g)
                g /= world
            return loss

    return _AllReduceSolver


class TrainLog:
    """Solver callback: CSV rows (iter, loss, smoothed_loss, lr, seconds), tqdm, TensorBoard when importable."""

    def __init__(self, path: Optional[str], total: int, start: int = 0, progress: bool = True,
                 tensorboard_dir: Optional[str] = None):
        self.t0 = time.perf_counter()
        self.path = path
        if path:
            new = not os.path.exists(path)
            self._f = open(path, "a", newline="")
            self._w = csv.writer(self._f)
            if new:
                self._w.writerow(["iter", "loss", "smoothed_loss", "lr", "seconds"])
        self.bar = None
        if progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, unit="it", desc="jigsaw")
        self.tb = None
        if tensorboard_dir:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(tensorboard_dir)
            except Exception:  # noqa: BLE001 -- tensorboard is optional
                self.tb = None

    def __call__(self, solver, loss: float) -> None:
        secs = time.perf_counter() - self.t0
        if self.path:
            self._w.writerow([solver.iter, f"{loss:.6g}", f"{solver.smoothed_loss:.6g}", f"{solver.rate:.6g}",
                              f"{secs:.3f}"])
            self._f.flush()  # a log one can follow while training runs
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{solver.smoothed_loss:.4f}", lr=f"{solver.rate:.3g}")
        if self.tb is not None:
            self.tb.add_scalar("train/loss", loss, solver.iter)
            self.tb.add_scalar("train/lr", solver.rate, solver.iter)

    def close(self) -> None:
        if self.path:
            self._f.close()
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()


@dataclass
class TrainResult:
    net: object
    solver: object
    spec: NetFeedSpec
    out: str
    prototxt: str
    last_snapshot: Optional[Tuple[str, str]]
    seconds: float


def build_train_net(*, n_perms: int, net_prototxt: Optional[str], arch: str, batch_size: Optional[int],
                    width: float, fc6: int, fc7: int, out: str, phase: str = "TRAIN", dropout: float = 0.5,
                    init: str = "authors"):
    """The TRAIN net and the prototxt it came from (generated into ``out`` when none is given)."""
    from caffe_compat.net import load_net

    if net_prototxt is None:
        net_prototxt = os.path.join(out, f"jigsaw_cfn_{arch}_train.prototxt")
        write_cfn_prototxt(net_prototxt, n_perms=n_perms, arch=arch, batch_size=batch_size or AUTHORS_BATCH,
                           width=width, fc6=fc6, fc7=fc7, dropout=dropout, init=init)
        return load_net(net_prototxt, phase=phase), net_prototxt
    probe = _authors_shapes(net_prototxt, batch_size, phase)
    return load_net(net_prototxt, phase=phase, input_shapes=probe), net_prototxt


def _authors_shapes(prototxt: str, batch_size: Optional[int], phase: str) -> Dict[str, Tuple[int, ...]]:
    """input_shapes for the fork's Data layers (their channels live in the LMDB: 3 per tile)."""
    from caffe_compat.io import read_net
    from caffe_compat.net import PHASES, filter_layers

    param = read_net(prototxt)
    shapes = {}
    for lp in filter_layers(param, PHASES[phase], 0, list(param.state.stage), prototxt):
        if lp.type == "Data" and lp.transform_param.siamese_size > 1:
            b = int(batch_size or lp.data_param.batch_size)
            shapes[lp.top[0]] = (b, 3 * int(lp.transform_param.siamese_size), TILE, TILE)
            if len(lp.top) > 1:
                shapes[lp.top[1]] = (b,)
        elif lp.type == "Input" and batch_size:
            for top, s in zip(lp.top, lp.input_param.shape):
                shapes[top] = (int(batch_size),) + tuple(int(d) for d in s.dim[1:])
    return shapes


def train(images, *, perms, out: str, net_prototxt: Optional[str] = None, solver: Optional[str] = None,
          arch: str = "alexnet", width: float = 1.0, fc6: int = 1024, fc7: int = 4096,
          max_iter: Optional[int] = None, batch_size: Optional[int] = None, occluder: str = "another",
          seed: int = 0, workers: int = 0, resume: Optional[str] = None, snapshot: Optional[int] = None,
          base_lr: Optional[float] = None, progress: bool = True, device: Optional[str] = None,
          cfg: Optional[PuzzleConfig] = None, dropout: float = 0.5, init: str = "authors") -> TrainResult:
    """Train the 9-tower puzzle net on ``images`` (stored images) with Caffe's solver semantics.

    ``net_prototxt`` None: the generated ``cfn_net_param`` net (fc8 = the set's
    size); the authors' train_val prototxt: its Data layers are fed by the
    same puzzle source, its MergeData params decide the substitutions.
    ``solver`` None: the authors' schedule; its ``net:`` is ignored (we pass
    the net).  Writes ``out/train_log.csv`` and Caffe-named snapshots under
    ``out/``; ``resume`` is a ``.solverstate`` to continue from.
    """
    from caffe_compat.io import read_solver

    rank, world = _dist()
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    table = load_perms(perms)
    net, proto = build_train_net(n_perms=len(table), net_prototxt=net_prototxt, arch=arch,
                                 batch_size=batch_size, width=width, fc6=fc6, fc7=fc7, out=out,
                                 dropout=dropout, init=init)
    spec = feed_spec(net)
    check_perms_fit(len(table), spec, proto)
    cfg = cfg or PuzzleConfig(occluder=occluder, normalize=False)  # the net's MVN/Power normalise
    if spec.style == "authors":
        cfg = replace(cfg, min_substitute=spec.min_substitute, max_substitute=spec.max_substitute)
    source = PuzzleSource(images, table, cfg, seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and world > 1:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        dev = torch.device("cuda", rank % torch.cuda.device_count())
    if dev.type != "cpu":
        net.to(dev)
    b = int(net.blob_shapes[spec.data][0])
    feed = make_feed(net, source, b, seed=seed, workers=workers, rank=rank, world=world, device=dev)
    sp = read_solver(solver) if solver else default_solver_param(os.path.join(out, "jigsaw"))
    sp.snapshot_prefix = os.path.join(out, "jigsaw") if not solver else sp.snapshot_prefix
    if max_iter is not None:
        sp.max_iter = int(max_iter)
    if snapshot is not None:
        sp.snapshot = int(snapshot)
    if base_lr is not None:
        sp.base_lr = float(base_lr)
    sp.test_interval, sp.display = 0, sp.display  # puzzle accuracy: ``evaluate`` on held-out images
    del sp.test_iter[:]
    if rank:
        sp.snapshot, sp.snapshot_after_train = 0, False
    logger = TrainLog(os.path.join(out, "train_log.csv") if rank == 0 else None, int(sp.max_iter),
                      progress=progress and rank == 0,
                      tensorboard_dir=os.path.join(out, "tb") if rank == 0 else None)
    solver_obj = _solver_class(world)(sp, net, feed, callbacks=[logger], where=solver or "jigsaw solver")
    t0 = time.perf_counter()
    try:
        if resume:
            solver_obj.restore(resume)
            logger.bar is not None and logger.bar.update(solver_obj.iter)
        solver_obj.solve()
    finally:
        logger.close()
    last = solver_obj.snapshot_paths() if sp.snapshot_after_train or sp.snapshot else None
    if last and not os.path.exists(last[0]):
        last = None
    return TrainResult(net, solver_obj, spec, out, proto, last, time.perf_counter() - t0)


# --------------------------------------------------------------------------- evaluation

@torch.no_grad()
def evaluate(net, source: PuzzleSource, *, puzzles: Optional[int] = None, device=None) -> Dict[str, float]:
    """Puzzle accuracy of ``net`` (TEST phase) on ``puzzles`` puzzles: image ``p % n`` in round ``p // n``.

    The order is fixed (no shuffle), so an evaluation is repeatable; the
    source's seed should differ from the training seed.
    """
    spec = feed_spec(net)
    check_perms_fit(len(source.perms), spec, getattr(net, "path", None) or "net")
    n = puzzles or len(source)
    was_training = net.training
    net.eval()
    dev = device or next((p.device for p in net.parameters()), torch.device("cpu"))
    b = int(net.blob_shapes[spec.data][0])  # loss layers fix the batch: pad the last one, count the real part
    correct = total = 0
    for start in range(0, n, b):
        real = min(n, start + b) - start
        keys = [((p % n) // len(source), (p % n) % len(source)) for p in range(start, start + b)]
        parts = [source.parts(i, e) for e, i in keys]
        label = torch.tensor([p.label for p in parts], dtype=torch.int64, device=dev)
        if spec.style == "tiles":
            tiles = np.stack([source.merged(p) for p in parts]).reshape(b, 3 * NTILES, TILE, TILE)
            out = net.forward_all(**{spec.data: torch.from_numpy(tiles).to(dev), spec.label: label})
        else:
            stream = DrawStream([v for p in parts for v in p.draws])
            _merge_module(net, spec.merge_layer)._rand = stream
            d0 = np.stack([p.tiles for p in parts]).reshape(b, -1, TILE, TILE)
            dr = np.stack([p.other for p in parts]).reshape(b, -1, TILE, TILE)
            out = net.forward_all(**{spec.data: torch.from_numpy(d0).to(dev),
                                     spec.other: torch.from_numpy(dr).to(dev), spec.label: label})
            stream.check_consumed()
        pred = out[spec.score].reshape(b, -1).argmax(dim=1)
        correct += int((pred[:real] == label[:real]).sum())
        total += real
    net.train(was_training)
    return {"accuracy": correct / max(total, 1), "puzzles": total, "chance": 1.0 / len(source.perms),
            "permutations": len(source.perms)}


def load_eval_net(model: str, *, batch_size: int = 50):
    """``PROTOTXT:WEIGHTS`` or a caffemodel written by ``train`` (its own layer list is the net)."""
    from caffe_compat.net import load_net

    if ":" in model and not os.path.exists(model):
        proto, weights = model.rsplit(":", 1)
    else:
        proto = weights = model
    shapes = _authors_shapes(proto, batch_size, "TEST")
    net = load_net(proto, weights=weights, phase="TEST", input_shapes=shapes)
    net.path = proto
    return net
