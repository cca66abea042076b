"""The real-Caffe oracle, always in a subprocess (never imported here).

The oracle is a CPU pycaffe built by ``tools/build_caffe_oracle.sh``.  Its
Python is found from ``$CAFFEKT_ORACLE_PYTHON``, else the default build prefix
``${XDG_CACHE_HOME:-~/.cache}/caffekt/caffe-oracle/venv/bin/python``.

Tests marked ``@pytest.mark.caffe`` call ``require_oracle()``: it skips when no
oracle is built, unless ``CAFFEKT_REQUIRE_ORACLE=1`` (set by CI), where a
missing oracle is a failure.

``caffe_run(prototxt_text, ...)`` builds a ``caffe.Net`` from the text, sets
learnable blobs and input blobs, runs forward (and backward when asked) and
returns every blob's data (and diff) plus every layer's params (and diffs).

Facts about this oracle that tests must respect (it is the inisis fork of
BVLC Caffe): PoolingParameter field 13 is ``ceil_mode: bool`` (write
``ceil_mode: false`` where BVLC writes ``round_mode: FLOOR``, see
``to_oracle_dialect``); there are no Clip, Swish or Python layers.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytest

from caffe_compat.parity import to_ceil_mode_text

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_oracle_driver.py")
STDERR_TAIL = 4000


class OracleError(RuntimeError):
    """The oracle process failed; ``stderr`` holds the end of what it printed."""

    def __init__(self, message: str, stderr: str = "", returncode: Optional[int] = None):
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(message)


def oracle_prefix() -> str:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "caffekt", "caffe-oracle")


def oracle_python() -> Optional[str]:
    exe = os.environ.get("CAFFEKT_ORACLE_PYTHON") or os.path.join(oracle_prefix(), "venv", "bin", "python")
    return exe if os.path.isfile(exe) and os.access(exe, os.X_OK) else None


def require_oracle() -> str:
    exe = oracle_python()
    if exe is None:
        msg = ("real Caffe oracle not built: run tools/build_caffe_oracle.sh "
               "(or set CAFFEKT_ORACLE_PYTHON)")
        if os.environ.get("CAFFEKT_REQUIRE_ORACLE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def oracle_env() -> Dict[str, str]:
    """Environment for the oracle: quiet glog, single-thread BLAS (bit-stable)."""
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTHONPATH", None)  # our checkout must not shadow the oracle's packages
    return env


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-STDERR_TAIL:]
        raise OracleError(f"caffe oracle failed (rc={proc.returncode}) {what}\n"
                          f"--- oracle stderr (tail) ---\n{tail}", tail, proc.returncode)


def run_script(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python ``code`` with the oracle's interpreter; raise OracleError with its stderr."""
    exe = require_oracle()
    proc = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=oracle_env())
    _check(proc, "running a script")
    return proc


_FORCE_BACKWARD = re.compile(r"^\s*force_backward\s*:", re.MULTILINE)


def with_force_backward(prototxt_text: str) -> str:
    """Prepend ``force_backward: true`` unless the net already sets it.

    Caffe skips backward for layers that no loss depends on; a harness that
    feeds top diffs by hand needs every layer's backward to run.
    """
    if _FORCE_BACKWARD.search(prototxt_text):
        return prototxt_text
    return "force_backward: true\n" + prototxt_text


# BVLC's round_mode -> the fork's ceil_mode (shared with `caffekt parity`).
to_oracle_dialect = to_ceil_mode_text


def caffe_run(prototxt_text: str,
              params: Optional[Mapping[str, Sequence[np.ndarray]]] = None,
              inputs: Optional[Mapping[str, np.ndarray]] = None,
              top_diffs: Optional[Mapping[str, np.ndarray]] = None,
              phase: str = "TEST",
              weights_file: Optional[str] = None,
              save_caffemodel: Optional[str] = None,
              seed: Optional[int] = None,
              backward: bool = False,
              timeout: float = 300) -> Dict[str, Dict]:
    """Run one forward (and optionally backward) pass in the real Caffe.

    ``params``: layer name -> list of arrays, copied into ``net.params``
    (after loading ``weights_file`` if given).  ``inputs``: blob name -> array;
    the blob is reshaped to it and the net reshaped before ``net.forward()``.
    ``phase``: ``"TEST"`` or ``"TRAIN"``.  ``seed``: seeds Caffe's RNG (fillers,
    Dropout masks) and NumPy's in the oracle.  Backward runs when ``backward``
    is true or ``top_diffs`` is given (blob name -> diff set before
    ``net.backward()``); ``force_backward: true`` is then added to the text
    unless it is already there.  ``round_mode`` is translated to the fork's
    ``ceil_mode``.

    Returns ``{"data": {blob: arr}, "diff": {blob: arr},
    "params": {"layer/i": arr}, "param_diffs": {"layer/i": arr},
    "layer_params": {layer: [arr, ...]}, "layer_param_diffs": {layer: [...]},
    "layers": [(name, type), ...]}``.
    """
    if phase not in ("TEST", "TRAIN"):
        raise ValueError(f"phase must be 'TEST' or 'TRAIN', got {phase!r}")
    exe = require_oracle()
    do_backward = bool(backward or top_diffs)
    text = to_oracle_dialect(prototxt_text)
    if do_backward:
        text = with_force_backward(text)
    with tempfile.TemporaryDirectory(prefix="caffekt-oracle-") as d:
        proto = os.path.join(d, "net.prototxt")
        with open(proto, "w") as f:
            f.write(text)
        arrays = {}
        for name, blobs in (params or {}).items():
            for i, b in enumerate(blobs):
                arrays[f"param|{name}|{i}"] = np.asarray(b, dtype=np.float32)
        for name, a in (inputs or {}).items():
            arrays[f"input|{name}"] = np.asarray(a, dtype=np.float32)
        for name, a in (top_diffs or {}).items():
            arrays[f"topdiff|{name}"] = np.asarray(a, dtype=np.float32)
        req_npz = os.path.join(d, "req.npz")
        np.savez(req_npz, **arrays)
        out_npz = os.path.join(d, "out.npz")
        req = {"prototxt": proto, "arrays": req_npz, "out": out_npz, "phase": phase,
               "weights": weights_file, "save": save_caffemodel, "seed": seed,
               "backward": do_backward}
        req_json = os.path.join(d, "req.json")
        with open(req_json, "w") as f:
            json.dump(req, f)
        proc = subprocess.run([exe, DRIVER, req_json], capture_output=True, text=True,
                              timeout=timeout, env=oracle_env())
        _check(proc, f"on this net:\n{text}")
        return _read_result(out_npz)


def _read_result(path: str) -> Dict[str, Dict]:
    res: Dict[str, Dict] = {"data": {}, "diff": {}, "params": {}, "param_diffs": {}}
    layers: List[tuple] = []
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            kind, name = k.split("|", 1)
            if kind == "meta":
                layers = [tuple(s.split("\t", 1)) for s in z[k].tolist()]
            else:
                res[kind][name] = z[k]
    res["layers"] = layers
    for flat, nested in (("params", "layer_params"), ("param_diffs", "layer_param_diffs")):
        by_layer: Dict[str, Dict[int, np.ndarray]] = {}
        for key, a in res[flat].items():  # npz keeps the net's layer order
            layer, i = key.rsplit("/", 1)
            by_layer.setdefault(layer, {})[int(i)] = a
        res[nested] = {layer: [d[i] for i in sorted(d)] for layer, d in by_layer.items()}
    return res


if __name__ == "__main__":  # pragma: no cover - manual check
    print(oracle_python() or "no oracle", file=sys.stderr)
