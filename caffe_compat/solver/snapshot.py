"""Snapshots as Caffe names and writes them (Solver::Snapshot, SGDSolver::SnapshotSolverState).

``<prefix>_iter_<N>.caffemodel`` (``Net::ToProto``, written by
``weights.save_caffemodel``: every layer of the train net with its blobs;
layers sharing a param each hold a copy) and
``<prefix>_iter_<N>.solverstate`` (iter, learned_net = the caffemodel path as
written, history in ``learnable_params`` order, current_step).

caffekt's own extra state (RNG states, smoothed-loss window, the feeder's
position) goes to ``<prefix>_iter_<N>.solverstate.caffekt.json`` plus
``...caffekt.npz`` (arrays, ``allow_pickle=False``), so a resumed run is
bit-identical on CPU.  Real Caffe ignores these files.  Every file is written
to a temp file beside its target and renamed into place; the side files go
last, so a kill mid-snapshot leaves at worst a complete Caffe snapshot
without its side files (resume then warns and continues with Caffe's state).
"""
from __future__ import annotations

import json
import os
import random
import warnings
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from ..binary import SolverState, read_solverstate, write_solverstate
from ..files import atomic_output
from ..errors import CaffeFormatError, ShapeError

SIDE_JSON = ".caffekt.json"
SIDE_NPZ = ".caffekt.npz"
SIDE_VERSION = 1


def snapshot_filename(prefix: str, it: int, extension: str) -> str:
    """prefix + "_iter_" + iter + extension (Solver::SnapshotFilename, solver.cpp)."""
    return f"{prefix}_iter_{int(it)}{extension}"


def snapshot_iters(prefix: str, extension: str) -> List[Tuple[int, str]]:
    """``(N, path)`` of every ``snapshot_filename(prefix, N, extension)`` on disk, N ascending."""
    import glob
    import re
    pat = re.compile(re.escape(os.path.basename(prefix)) + r"_iter_(\d+)" + re.escape(extension) + r"\Z")
    found = []
    for p in glob.glob(glob.escape(prefix) + "_iter_*" + glob.escape(extension)):
        m = pat.match(os.path.basename(p))
        if m:
            found.append((int(m.group(1)), p))
    return sorted(found)


def write_state(path: str, it: int, learned_net: str, history: List[torch.Tensor], current_step: int) -> int:
    st = SolverState(iter=int(it), learned_net=learned_net,
                     history=[h.detach().cpu().numpy() for h in history], current_step=int(current_step))
    return write_solverstate(path, st)


def read_state(path: str, params: List[torch.Tensor], n_history: int) -> SolverState:
    """Read a .solverstate and check it fits: ``n_history`` blobs, each with its param's count.

    Caffe CHECKs the count ("Incorrect length of history blobs") and reshapes
    each history blob to the stored shape; here a blob must hold as many values
    as its param (the update could not run otherwise) and takes the param's shape.
    """
    st = read_solverstate(path)
    if len(st.history) != n_history:
        raise CaffeFormatError(f"incorrect length of history blobs: the file has {len(st.history)}, "
                               f"this solver needs {n_history} ({len(params)} learnable params)", path)
    n = len(params)
    for i, h in enumerate(st.history):
        p = params[i % n] if n else None
        if p is None or h.size != p.numel():
            raise ShapeError(f"{path}: history blob {i} has {h.size} values {list(h.shape)}; learnable "
                             f"param {i % max(n, 1)} has {p.numel() if p is not None else 0} "
                             f"{list(p.shape) if p is not None else []}")
    return st


# ------------------------------------------------------------------ side files

def _capture_rng() -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "gauss": float(gauss)},
            "python": {"version": py_version, "gauss_next": py_gauss}}
    arrays = {"torch_cpu_rng": torch.get_rng_state().numpy(),
              "numpy_keys": np.asarray(keys, dtype=np.uint32),
              "python_state": np.asarray(py_state, dtype=np.int64)}
    return meta, arrays


def _restore_rng(meta: Dict[str, Any], arrays: Dict[str, np.ndarray]) -> None:
    torch.set_rng_state(torch.from_numpy(np.array(arrays["torch_cpu_rng"], dtype=np.uint8)))
    n = meta["numpy"]
    np.random.set_state((n["kind"], np.array(arrays["numpy_keys"], dtype=np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(int(v) for v in arrays["python_state"]), p["gauss_next"]))


def _module_generators(net) -> Dict[str, Tuple[Any, Any, torch.Generator]]:
    """Every ``torch.Generator`` a layer keeps (directly or in a dict keyed by device), by a
    stable name: layers like Dropout draw from their own generators, not the global one."""
    out = {}
    for mname, m in net.named_modules():
        for attr, v in vars(m).items():
            if isinstance(v, torch.Generator):
                out[f"{mname}:{attr}"] = (m, attr, v)
            elif isinstance(v, dict):
                for k, g in v.items():
                    if isinstance(g, torch.Generator) and isinstance(k, str):
                        out[f"{mname}:{attr}[{k}]"] = (m, (attr, k), g)
    return out


def write_side(state_path: str, extra: Dict[str, Any], net=None) -> None:
    """``extra`` must be JSON-able; global and per-layer RNG states are added here."""
    meta, arrays = _capture_rng()
    if net is not None:
        gens = _module_generators(net)
        meta["modules"] = sorted(gens)
        for i, key in enumerate(meta["modules"]):
            arrays[f"module_rng_{i}"] = gens[key][2].get_state().numpy()
    doc = {"format": "caffekt-solver-side", "version": SIDE_VERSION, "rng": meta, **extra}
    with atomic_output(state_path + SIDE_NPZ) as f:
        np.savez(f, **arrays)
    with atomic_output(state_path + SIDE_JSON) as f:
        f.write(json.dumps(doc, indent=1, sort_keys=True).encode("utf-8"))


def _restore_module_rng(net, names, arrays) -> None:
    have = _module_generators(net)
    modules = dict(net.named_modules())
    for i, key in enumerate(names):
        state = torch.from_numpy(np.array(arrays[f"module_rng_{i}"], dtype=np.uint8))
        if key in have:
            have[key][2].set_state(state)
            continue
        # a generator made lazily on first use (e.g. per device): create it now
        mname, rest = key.split(":", 1)
        m = modules.get(mname)
        if m is None or "[" not in rest:
            raise CaffeFormatError(f"side file names layer generator {key!r}, which this net lacks")
        attr, dev = rest[:-1].split("[", 1)
        table = getattr(m, attr, None)
        if not isinstance(table, dict):
            raise CaffeFormatError(f"side file names layer generator {key!r}, which this net lacks")
        g = torch.Generator(device=dev)
        g.set_state(state)
        table[dev] = g


def read_side(state_path: str, restore_rng: bool = True, net=None) -> Optional[Dict[str, Any]]:
    """The side document (RNG states restored), or None with a warning when absent."""
    jpath, npath = state_path + SIDE_JSON, state_path + SIDE_NPZ
    if not (os.path.isfile(jpath) and os.path.isfile(npath)):
        warnings.warn(f"{state_path}: no caffekt side files; resuming with Caffe's state only "
                      f"(RNG streams and data position restart)", stacklevel=3)
        return None
    try:
        with open(jpath, "rb") as f:
            doc = json.loads(f.read().decode("utf-8"))
        with np.load(npath, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError) as e:
        raise CaffeFormatError(f"unreadable caffekt side file: {e}", jpath) from None
    if doc.get("format") != "caffekt-solver-side" or doc.get("version") != SIDE_VERSION:
        raise CaffeFormatError(f"not a caffekt solver side file version {SIDE_VERSION}", jpath)
    if restore_rng:
        _restore_rng(doc["rng"], arrays)
        if net is not None:
            _restore_module_rng(net, doc["rng"].get("modules", []), arrays)
    return doc
