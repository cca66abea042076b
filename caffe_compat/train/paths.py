"""Paths of a solver as Caffe opens them, and the latest complete snapshot under a prefix."""
from __future__ import annotations

import os
from typing import Optional


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
    from ..solver import snapshot as snap
    model = state_path[:-len(".solverstate")] + ".caffemodel"
    return all(os.path.isfile(p) for p in (state_path, model, state_path + snap.SIDE_JSON,
                                           state_path + snap.SIDE_NPZ))


def latest_snapshot(prefix: str) -> Optional[str]:
    """The ``<prefix>_iter_<N>.solverstate`` with the largest N whose snapshot is complete, or None."""
    from ..solver.snapshot import snapshot_iters
    done = [p for _, p in snapshot_iters(prefix, ".solverstate") if snapshot_complete(p)]
    return done[-1] if done else None
