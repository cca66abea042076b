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
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..errors import CaffeFormatError, UnsupportedParameter
from .distributed import _broadcast_params, _init_distributed, _make_solver_class, _reseed_layers, _seed_globals
from .feeders import FeedContext, FeederFactory, TrainFeed
from .nets import NetSpec, build_net, net_specs
from .paths import _beside, latest_snapshot, resolve_solver_paths

log = logging.getLogger("caffe_compat.train")


@dataclass
class TrainResult:
    iter: int
    snapshot: Optional[Tuple[str, str]]       # (caffemodel, solverstate) of the last snapshot
    log_csv: Optional[str]
    smoothed_loss: float
    test_results: List[Dict[str, np.ndarray]] = field(default_factory=list)
    net: Any = None                           # the trained TRAIN net
    seconds: float = 0.0                      # wall time of the solve


def read_checked_solver(solver_path: str, *, max_iter=None, seed=None, out=None, resume=None, weights=()):
    """The solver file read, overridden, checked and its paths resolved (all before any net is built)."""
    from ..io import read_solver
    from ..solver.lr_policy import check_lr_policy
    from ..solver.settings import from_proto
    from ..solver.updates import check_settings

    if not os.path.isfile(solver_path):
        raise CaffeFormatError("solver file not found", solver_path)
    param = read_solver(solver_path)
    if max_iter is not None:
        param.max_iter = int(max_iter)
    if seed is not None:
        param.random_seed = int(seed)
    if resume and (weights or len(param.weights)) and resume != "auto":
        raise UnsupportedParameter("give a solverstate to resume training or weights to fine-tune, not both")
    settings = from_proto(param, solver_path)
    check_settings(settings, solver_path)
    check_lr_policy(settings, solver_path)
    resolve_solver_paths(param, solver_path, out)
    snap_dir = os.path.dirname(param.snapshot_prefix) or "."
    if (param.snapshot or param.snapshot_after_train) and not os.path.isdir(snap_dir):
        # Caffe would only fail when writing the first snapshot, after training
        raise CaffeFormatError(f"the folder of snapshot_prefix does not exist ({snap_dir})", solver_path)
    return param


def _nets(param, where: str, ctx: FeedContext, dev, feeds, feeders):
    """(train net, its TrainFeed, [(test net, feed)]) as Solver::InitTrainNet / InitTestNets, on ``dev``."""
    train_spec, test_specs = net_specs(param, where)
    if ctx.rank != 0:
        test_specs = []   # Caffe tests on the root solver only
    net, train_feed = build_net(train_spec, ctx, feeds, feeders)
    if ctx.labels_bin:
        check_labels_fit(net, train_spec, ctx.labels_bin)
    _reseed_layers(net, param.random_seed, ctx.rank)
    test_nets = []
    for spec in test_specs:
        tctx = copy.copy(ctx)
        tctx.rank, tctx.world_size = 0, 1   # the root solver's test net reads everything
        tnet, tfeed = build_net(spec, tctx, feeds)
        tfeed.device = dev
        test_nets.append((tnet.to(dev), tfeed))
    net.to(dev)
    return net, TrainFeed(train_feed.feeders, [f for _, f in test_nets], device=dev), test_nets


def _load_weights(net, param, weights: Sequence[str], base_dir: str) -> None:
    """The solver's ``weights`` then ``--weights a,b``, in order (LoadNetWeights)."""
    from ..weights import copy_trained_layers
    for group in list(param.weights) + list(weights):
        for w in (s.strip() for s in group.split(",")):
            if w:
                copy_trained_layers(net, _beside(w, base_dir))


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
    from ..logs import TrainLogger

    param = read_checked_solver(solver_path, max_iter=max_iter, seed=seed, out=out, resume=resume,
                                weights=weights)
    if labels_bin is not None and not os.path.isfile(labels_bin):
        raise CaffeFormatError("labels file not found (--labels-bin)", labels_bin)
    rank, world, dev = _init_distributed(device)
    _seed_globals(param.random_seed, rank)   # Caffe seeds before InitTrainNet: fillers are seeded too
    ctx = FeedContext("TRAIN", max(int(param.random_seed), 0), rank, world, int(workers),
                      os.path.dirname(os.path.abspath(solver_path)), labels_bin=labels_bin)
    net, feed, test_nets = _nets(param, solver_path, ctx, dev, feeds, feeders)
    _load_weights(net, param, weights, ctx.base_dir)

    solver_param = copy.deepcopy(param)
    if world > 1 and solver_param.random_seed >= 0:
        solver_param.random_seed += rank   # Solver::Init: random_seed + solver_rank
    solver = _make_solver_class()(solver_param, net, feed, test_nets=test_nets, where=solver_path)
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
    from ..data.jps import read_labels_bin
    labels = read_labels_bin(labels_path)
    label_tops = {lp.top[1] for lp in spec.param.layer if lp.type == "Data" and len(lp.top) > 1}
    for lp in net.layer_params_proto:
        if lp.type in ("SoftmaxWithLoss", "Accuracy") and len(lp.bottom) > 1 and lp.bottom[1] in label_tops:
            n = int(net.blob_shapes[lp.bottom[0]][1])
            if int(labels.max()) >= n:
                raise CaffeFormatError(f"label {int(labels.max())} (index {int(labels.argmax())}) is outside the "
                                       f"{n} outputs of {lp.bottom[0]!r} that layer {lp.name!r} "
                                       f"({lp.type}) scores", labels_path)
