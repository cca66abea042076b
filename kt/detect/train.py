"""``caffekt detect train``: lib/fast_rcnn/train.py and tools/train_net.py through caffekt's one training driver.

The roidb is built (ground truth + proposals, flips, targets normalised by
the dataset's means/stds), the RoIDataLayer feeder registered, and
``caffe_compat.train.train`` runs the solver unchanged.  Two kinds of files
come out, as the fork's SolverWrapper makes them (train.py:48-101):

* ``<out>/<snapshot_prefix>[_<SNAPSHOT_INFIX>]_iter_<N>.caffemodel`` every
  TRAIN.SNAPSHOT_ITERS iterations and after the last one, with ``bbox_pred``
  un-normalised (W * stds per output row, b * stds + means; train.py:54-65)
  so test nets read plain deltas;
* the driver's own resumable snapshots (normalised weights + solverstate)
  under ``<out>/solver_state/`` when the solver asks for them (``--resume auto``).

A config ``SOLVER`` section (the shipped ``voc07_paper``) rewrites solver
fields into ``<out>/solver.prototxt`` (net paths made absolute) first; a net
path the fork writes relative to its root is also found from the solver's
folder upwards.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
import torch

from caffe_compat.errors import UnsupportedParameter

from . import config as C
from . import feeder as F
from .proposals import proposals_for
from .roidb import training_roidb
from .voc import VOCDataset


@dataclass
class DetectTrainResult:
    iter: int
    models: List[str] = field(default_factory=list)     # un-normalised caffemodels, in order
    means: Optional[np.ndarray] = None
    stds: Optional[np.ndarray] = None
    log_csv: Optional[str] = None
    seconds_per_iter: float = float("nan")


def _text_value(x) -> str:
    if isinstance(x, bool):
        return "true" if x else "false"
    return json.dumps(x) if isinstance(x, str) else str(x)


def _find_up(path: str, start: str) -> str:
    """``path`` as given if it exists, else under the solver's folder or one of its parents (the fork's
    solvers name their net relative to the repository root: ``models/CaffeNet/train.prototxt``)."""
    if not path or os.path.isabs(path) or os.path.exists(path):
        return path
    d = os.path.abspath(start)
    while True:
        cand = os.path.join(d, path)
        if os.path.exists(cand):
            return cand
        parent = os.path.dirname(d)
        if parent == d:
            return path
        d = parent


def derived_solver(solver_path: str, overrides, out: str) -> str:
    """``solver_path`` with net paths found (see ``_find_up``) and the config's SOLVER fields set, written to
    ``out/solver.prototxt``; the file itself when nothing changes."""
    from google.protobuf import text_format

    from caffe_compat.io import read_solver
    from caffe_compat.prototxt import write_prototxt
    param = read_solver(solver_path)
    base = os.path.dirname(os.path.abspath(solver_path))
    changed = bool(overrides)
    for name in ("net", "train_net"):
        if param.HasField(name):
            found = _find_up(getattr(param, name), base)
            changed |= found != getattr(param, name)
            setattr(param, name, os.path.abspath(found))
    for i, p in enumerate(param.test_net):
        found = _find_up(p, base)
        changed |= found != p
        param.test_net[i] = os.path.abspath(found)
    if not changed:
        return solver_path
    for k, v in (overrides or {}).items():
        if k not in param.DESCRIPTOR.fields_by_name:
            raise UnsupportedParameter(f"config SOLVER: {k!r} is not a SolverParameter field")
        param.ClearField(k)
        text = "\n".join(f"{k}: {_text_value(x)}" for x in (v if isinstance(v, list) else [v]))
        try:
            text_format.Merge(text, param)
        except text_format.ParseError as e:
            raise UnsupportedParameter(f"config SOLVER: {k}: {v!r}: {e}") from None
    path = os.path.join(out, "solver.prototxt")
    write_prototxt(param, path)
    return path


@torch.no_grad()
def save_unnormalized(net, path: str, means: np.ndarray, stds: np.ndarray, layer: str = "bbox_pred") -> None:
    """train.py:48-82: write ``net`` with ``layer``'s W, b mapped to plain deltas, then restore them."""
    from caffe_compat.weights import save_caffemodel
    blobs = net.params.get(layer)
    if not blobs:
        raise UnsupportedParameter(f"the train net has no {layer!r} layer with weights to un-normalise")
    w, b = blobs[0], blobs[1] if len(blobs) > 1 else None
    if w.shape[0] != stds.size:
        raise UnsupportedParameter(f"{layer} has {w.shape[0]} outputs, the dataset's targets {stds.size} "
                                   f"(4 x classes)")
    keep = [w.detach().clone()] + ([b.detach().clone()] if b is not None else [])
    s = torch.as_tensor(stds, dtype=torch.float64)
    m = torch.as_tensor(means, dtype=torch.float64)
    w.copy_((w.double() * s.view(-1, *([1] * (w.dim() - 1)))).to(w.dtype))
    if b is not None:
        b.copy_((b.double() * s + m).to(b.dtype))
    try:
        save_caffemodel(net, path)
    finally:
        w.copy_(keep[0])
        if b is not None:
            b.copy_(keep[1])


def train_detector(solver: str, dataset: str, split: str = "trainval", *, weights: Sequence[str] = (),
                   classes: Optional[Sequence[str]] = None, cfg_path: Optional[str] = None, cfg_overrides=None,
                   proposals: Optional[str] = None, cache: Optional[str] = None, ss_mode: str = "fast",
                   out: str = "frcnn_out", max_iter: Optional[int] = None, resume: Optional[str] = None,
                   progress: bool = True, seed: Optional[int] = None) -> DetectTrainResult:
    """Fine-tune the Fast R-CNN net of ``solver`` on a VOC-format split; see the module docstring."""
    import time

    from caffe_compat.io import read_solver
    from caffe_compat.train import train
    cfg = C.load(cfg_path, cfg_overrides)
    os.makedirs(out, exist_ok=True)
    ds = VOCDataset(dataset, split, classes) if classes else VOCDataset(dataset, split)
    records = ds.records()
    props = proposals_for(records, proposals, cache or os.path.join(out, "proposals", split), ss_mode, progress)
    entries, means, stds = training_roidb(records, props, ds.num_classes, cfg)
    with open(os.path.join(out, "bbox_means_stds.json"), "w", encoding="utf-8") as f:
        json.dump({"classes": list(ds.classes), "means": means.tolist(), "stds": stds.tolist()}, f)
    solver_file = derived_solver(solver, cfg["SOLVER"], out)
    prefix = os.path.basename(read_solver(solver_file).snapshot_prefix) or "fast_rcnn"
    infix = "_" + cfg["TRAIN"]["SNAPSHOT_INFIX"] if cfg["TRAIN"]["SNAPSHOT_INFIX"] else ""
    every = int(cfg["TRAIN"]["SNAPSHOT_ITERS"])
    res = DetectTrainResult(0, means=means, stds=stds)
    seen = {}

    def snapshot(solver_obj, _loss=None):
        seen["solver"] = solver_obj
        if getattr(solver_obj, "rank", 0) == 0 and (_loss is None or solver_obj.iter % every == 0):
            path = os.path.join(out, f"{prefix}{infix}_iter_{solver_obj.iter}.caffemodel")
            if not res.models or res.models[-1] != path:
                save_unnormalized(solver_obj.net, path, means, stds)
                res.models.append(path)

    F.register(entries, ds.num_classes, cfg)
    t0 = time.perf_counter()
    try:
        tr = train(solver_file, weights=list(weights), resume=resume, max_iter=max_iter,
                   out=os.path.join(out, "solver_state"), seed=seed, progress=progress, callbacks=[snapshot])
    finally:
        F.unregister()
    if "solver" in seen:
        snapshot(seen["solver"])          # train.py:100-101: the last iteration is always written
    res.iter, res.log_csv = tr.iter, tr.log_csv
    if tr.iter:
        res.seconds_per_iter = (time.perf_counter() - t0) / max(tr.iter, 1)
    return res
