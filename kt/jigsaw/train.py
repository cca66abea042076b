"""Jigsaw++ pretext training through the one training driver (``caffe_compat.train.train``).

``train`` writes the net prototxt (generated, or the authors' train_val as
given) and a solver prototxt into ``out``, then calls the driver behind
``caffekt train`` with a ``PuzzleFeed`` in place of the net's puzzle data
layers: one solver loop, one distributed set-up (torchrun), one CSV +
TensorBoard log (``out/jigsaw_log.csv``), Caffe's snapshot names
(``out/jigsaw_iter_N.caffemodel|.solverstate``) and one resume rule.
"""
from __future__ import annotations

import os
from dataclasses import replace
from typing import Optional

from caffe_compat.errors import UnsupportedParameter

from ..puzzle import PuzzleConfig
from .feed import _authors_shapes, feed_spec, input_layers, puzzle_feeders
from .nets import AUTHORS_BATCH, write_cfn_prototxt
from .source import PuzzleSource, load_perms

# the authors' schedule (solver_cfn_jps.prototxt)
AUTHORS_SCHEDULE = dict(base_lr=0.01, lr_policy="step", gamma=0.1, stepsize=100000, max_iter=350000,
                        momentum=0.9, weight_decay=0.0005, display=100, snapshot=5000)
PREFIX = "jigsaw"     # snapshot names: out/jigsaw_iter_N.caffemodel


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


def _net_file(out: str, net_prototxt: Optional[str], n_perms: int, arch: str, batch_size: Optional[int],
              width: float, fc6: int, fc7: int, dropout: float, init: str) -> str:
    if net_prototxt is not None:
        return os.path.abspath(net_prototxt)
    path = os.path.join(out, f"jigsaw_cfn_{arch}_train.prototxt")
    write_cfn_prototxt(path, n_perms=n_perms, arch=arch, batch_size=batch_size or AUTHORS_BATCH, width=width,
                       fc6=fc6, fc7=fc7, dropout=dropout, init=init)
    return os.path.abspath(path)


def write_solver(out: str, net_file: str, *, solver: Optional[str] = None, max_iter: Optional[int] = None,
                 snapshot: Optional[int] = None, base_lr: Optional[float] = None, seed: int = 0) -> str:
    """``out/solver.prototxt``: ``solver``'s settings (default: the authors' schedule) on ``net_file``.

    Snapshots go to ``out/jigsaw_iter_N``; testing is off (puzzle accuracy
    comes from ``evaluate`` on held-out images).
    """
    from caffe_compat.io import read_solver
    from caffe_compat.prototxt import write_prototxt

    sp = read_solver(solver) if solver else default_solver_param(PREFIX)
    for f in ("net", "net_param", "train_net", "train_net_param"):
        sp.ClearField(f)
    del sp.test_net[:], sp.test_net_param[:], sp.test_iter[:], sp.test_state[:]
    sp.test_interval = 0
    sp.net = net_file
    sp.snapshot_prefix = os.path.abspath(os.path.join(out, PREFIX))
    sp.random_seed = int(seed)
    if max_iter is not None:
        sp.max_iter = int(max_iter)
    if snapshot is not None:
        sp.snapshot = int(snapshot)
    if base_lr is not None:
        sp.base_lr = float(base_lr)
    path = os.path.join(out, "solver.prototxt")
    write_prototxt(sp, path)
    return path


def train(images, *, perms, out: str, net_prototxt: Optional[str] = None, solver: Optional[str] = None,
          arch: str = "alexnet", width: float = 1.0, fc6: int = 1024, fc7: int = 4096,
          max_iter: Optional[int] = None, batch_size: Optional[int] = None, occluder: str = "another",
          seed: int = 0, workers: int = 0, resume: Optional[str] = None, snapshot: Optional[int] = None,
          base_lr: Optional[float] = None, progress: bool = True, device: Optional[str] = None,
          cfg: Optional[PuzzleConfig] = None, dropout: float = 0.5, init: str = "authors"):
    """Train the 9-tower puzzle net on ``images`` (stored 255x255 images) through the training driver.

    ``net_prototxt`` None: the generated ``cfn_net_param`` net (fc8 = the
    set's size); the authors' train_val prototxt: its puzzle Data layers are
    fed by the puzzle source and its MergeData params decide the
    substitutions.  ``solver`` None: the authors' schedule; the solver's own
    ``net:`` is replaced by ours.  ``resume``: a ``.solverstate``, or
    ``"auto"`` for the latest complete snapshot in ``out``.  Returns the
    driver's ``TrainResult`` (``.net``, ``.snapshot``, ``.log_csv``, ``.iter``).
    """
    from caffe_compat.io import read_net
    from caffe_compat.train import train as drive

    os.makedirs(out, exist_ok=True)
    table = load_perms(perms)
    net_file = _net_file(out, net_prototxt, len(table), arch, batch_size, width, fc6, fc7, dropout, init)
    param = read_net(net_file)
    authors = any(lp.type == "Data" for lp in param.layer if lp.name in input_layers(param, "TRAIN", net_file))
    cfg = cfg or PuzzleConfig(occluder=occluder, normalize=False)  # the net's MVN/Power normalise
    if authors:
        merges = [lp for lp in param.layer if lp.type == "MergeData"]
        if len(merges) != 1:
            raise UnsupportedParameter(f"{net_file}: expected one MergeData layer, found {len(merges)}")
        mp = merges[0].merge_data_param
        cfg = replace(cfg, min_substitute=int(mp.min_substitute), max_substitute=int(mp.max_substitute))
    source = PuzzleSource(images, table, cfg, seed)
    solver_file = write_solver(out, net_file, solver=solver, max_iter=max_iter, snapshot=snapshot,
                               base_lr=base_lr, seed=seed)
    feeders = puzzle_feeders(param, source, batch_size, path=net_file)
    return drive(solver_file, resume=resume, workers=workers, progress=progress, feeders=feeders,
                 device=device, progress_desc="jigsaw")


__all__ = ["AUTHORS_SCHEDULE", "default_solver_param", "build_train_net", "write_solver", "train", "PREFIX",
           "feed_spec"]
