"""What a jigsaw net expects as input, and the feeder that gives it puzzles from stored images."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import torch

from caffe_compat.errors import UnsupportedParameter

from ..puzzle import JITTER, STORED, TILE
from .batches import PuzzleLoader
from .merge import NTILES, DrawStream
from .source import PuzzleDataset, PuzzlePartsDataset, PuzzleSource


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


def perms_file(perms: Optional[str], prototxt: Optional[str]) -> Optional[str]:
    """``perms`` when given, else the ``hash_file`` the net's Data layers name (resolved), else None."""
    if perms:
        return perms
    if prototxt:
        from caffe_compat.io import read_net
        for lp in read_net(prototxt).layer:
            if lp.transform_param.hash_file:
                return resolve_hash_file(lp.transform_param.hash_file, prototxt)
    return None


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


def _merge_module(net, name: str):
    return net.layer(name)


def input_layers(param, phase: str = "TRAIN", path: Optional[str] = None) -> Dict[str, list]:
    """The data layers a jigsaw net of ``phase`` takes puzzles through: ``{layer name: tops}``.

    The authors' net: its puzzle Data layer (with hash_file: tiles, label)
    and its occluder Data layer; a generated net: its Input layer.
    """
    from caffe_compat.net import PHASES, filter_layers
    layers = filter_layers(param, PHASES[phase], 0, list(param.state.stage), path or "net")
    fork = [lp for lp in layers if lp.type == "Data" and lp.transform_param.siamese_size > 1]
    if fork:
        puzzle = [lp for lp in fork if lp.transform_param.hash_file]
        plain = [lp for lp in fork if not lp.transform_param.hash_file]
        if len(puzzle) != 1 or len(plain) > 1:
            raise UnsupportedParameter(f"{path or 'net'}: expected one puzzle Data layer (with hash_file) and at "
                                       f"most one occluder Data layer, found {len(puzzle)} and {len(plain)}")
        return {lp.name: list(lp.top) for lp in puzzle + plain}
    inputs = [lp for lp in layers if lp.type == "Input"]
    if len(inputs) != 1:
        raise UnsupportedParameter(f"{path or 'net'}: expected one Input layer (tiles and label) or the fork's "
                                   f"puzzle Data layers; found {len(inputs)} Input layers")
    return {inputs[0].name: list(inputs[0].top)}


class PuzzleFeed:
    """A feeder of the training driver: each call is the next batch of puzzles as the net's named inputs.

    It stands for the net's puzzle data layer(s) (``input_layers``); once the
    driver has built the net (``bind``), the net's own loss names the tops
    (``feed_spec``) and, on the authors' net, its MergeData layer is handed
    each batch's recorded rand() values, so the towers see exactly
    ``PuzzleSource.merged``.
    """

    def __init__(self, source: PuzzleSource, batch_size: int, data_tops, label_top: str, *, seed: int = 0,
                 shuffle: bool = True, workers: int = 0, rank: int = 0, world: int = 1):
        self.source, self.batch_size = source, int(batch_size)
        self.data_tops, self.label_top = list(data_tops), label_top
        self.seed, self.shuffle, self.workers, self.rank, self.world = seed, shuffle, workers, rank, world
        self.spec: Optional[NetFeedSpec] = None
        self.net = None
        self.loader: Optional[PuzzleLoader] = None
        self._stream: Optional[DrawStream] = None
        self._state = None

    def shapes(self) -> Dict[str, tuple]:
        b = self.batch_size
        out = {t: (b, 3 * NTILES, TILE, TILE) for t in self.data_tops}
        out[self.label_top] = (b,)
        return out

    def bind(self, net) -> None:
        spec = feed_spec(net)
        check_perms_fit(len(self.source.perms), spec, getattr(net, "path", None) or "net")
        cfg = self.source.cfg
        if spec.style == "authors":
            if cfg.min_substitute != spec.min_substitute or cfg.max_substitute != spec.max_substitute:
                raise UnsupportedParameter(
                    f"the puzzle source substitutes rand() % {cfg.max_substitute} + {cfg.min_substitute} tiles "
                    f"but the net's MergeData layer {spec.merge_layer!r} has {spec.max_substitute} / "
                    f"{spec.min_substitute}")
            ds: PuzzleDataset = PuzzlePartsDataset(self.source, None)
        else:
            ds = PuzzleDataset(self.source, None)
        self.spec, self.net = spec, net
        self.loader = PuzzleLoader(ds, self.batch_size, seed=self.seed, shuffle=self.shuffle,
                                   workers=self.workers, rank=self.rank, world=self.world)
        if self._state is not None:
            self.loader.load_state_dict(self._state)

    def __call__(self) -> Dict[str, torch.Tensor]:
        if self.loader is None:
            raise RuntimeError("PuzzleFeed used before bind(net)")
        if self._stream is not None:
            self._stream.check_consumed()
        batch = self.loader.next()
        if self.spec.style == "tiles":
            data, label = batch
            return {self.spec.data: data, self.spec.label: label}
        d0, dr, label, draws = batch
        self._stream = DrawStream([v for d in draws for v in d])
        _merge_module(self.net, self.spec.merge_layer)._rand = self._stream
        return {self.spec.data: d0, self.spec.other: dr, self.spec.label: label}

    def state_dict(self) -> dict:
        return self.loader.state_dict() if self.loader is not None else dict(self._state or {})

    def load_state_dict(self, state: dict) -> None:
        self._state = dict(state)
        if self.loader is not None:
            self.loader.load_state_dict(state)


class _NoFeed:
    """The occluder Data layer's place: its top comes with the puzzle feeder's batch."""

    def __init__(self, shapes):
        self._shapes = dict(shapes)

    def shapes(self):
        return self._shapes

    def __call__(self):
        return {}


def puzzle_feeders(param, source: PuzzleSource, batch_size: Optional[int], *, path: Optional[str] = None,
                   shuffle: bool = True) -> Dict[str, object]:
    """``{layer name: factory(lp, ctx)}`` for ``caffe_compat.train.train(feeders=...)`` over ``source``."""
    layers = input_layers(param, "TRAIN", path)
    names = list(layers)

    def batch_of(lp) -> int:
        if batch_size:
            return int(batch_size)
        if lp.type == "Data" and lp.data_param.batch_size:
            return int(lp.data_param.batch_size)
        if lp.type == "Input" and len(lp.input_param.shape) and len(lp.input_param.shape[0].dim):
            return int(lp.input_param.shape[0].dim[0])
        raise UnsupportedParameter(f"{path or 'net'}: layer {lp.name!r} names no batch size; give batch_size")

    def main(lp, ctx):
        if len(lp.top) != 2:
            raise UnsupportedParameter(f"{path or 'net'}: layer {lp.name!r} must have two tops (tiles, label)")
        data = [lp.top[0]] + [t for n in names[1:] for t in layers[n]]
        return PuzzleFeed(source, batch_of(lp), data, lp.top[1], seed=ctx.seed, shuffle=shuffle,
                          workers=ctx.workers, rank=ctx.rank, world=ctx.world_size)

    out = {names[0]: main}
    for n in names[1:]:
        out[n] = lambda lp, ctx: _NoFeed({})
    return out


def make_feed(net, source: PuzzleSource, batch_size: int, *, seed: int = 0, shuffle: bool = True,
              workers: int = 0, rank: int = 0, world: int = 1) -> PuzzleFeed:
    """A bound ``PuzzleFeed`` for a built ``net`` (checks the set against the classifier first)."""
    spec = feed_spec(net)
    data = [spec.data] + ([spec.other] if spec.other else [])
    feed = PuzzleFeed(source, batch_size, data, spec.label, seed=seed, shuffle=shuffle, workers=workers,
                      rank=rank, world=world)
    feed.bind(net)
    return feed
