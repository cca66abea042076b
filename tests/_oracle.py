"""The real-Caffe oracle, always in a subprocess (never imported here).

The oracle is a CPU pycaffe built by ``tools/build_caffe_oracle.sh``.  Its
Python is found from ``$CAFFEKT_ORACLE_PYTHON``, else the default build prefix
``${XDG_CACHE_HOME:-~/.cache}/caffekt/caffe-oracle/venv/bin/python``.

Tests marked ``@pytest.mark.caffe`` call ``require_oracle()``: it skips when no
oracle is built, unless ``CAFFEKT_REQUIRE_ORACLE=1`` (set by CI), where a
missing oracle is a failure.

``caffe_run(prototxt_text, ...)`` builds a ``caffe.Net`` from the text, sets
learnable blobs and input blobs, runs forward (and backward when
``top_diffs`` is given) and returns every blob's data (and diff) plus every
layer's params (and their diffs).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "_oracle_driver.py")


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


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    env["OPENBLAS_NUM_THREADS"] = "1"  # bit-stable references
    env.pop("PYTHONPATH", None)
    return env


def run_script(code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python ``code`` with the oracle's interpreter; raise with its stderr on failure."""
    exe = require_oracle()
    proc = subprocess.run([exe, "-c", code], capture_output=True, text=True, timeout=timeout, env=_env())
    if proc.returncode != 0:
        raise RuntimeError(f"caffe oracle failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def caffe_run(prototxt_text: str,
              params: Optional[Mapping[str, Sequence[np.ndarray]]] = None,
              inputs: Optional[Mapping[str, np.ndarray]] = None,
              top_diffs: Optional[Mapping[str, np.ndarray]] = None,
              phase: str = "TEST",
              weights_file: Optional[str] = None,
              save_caffemodel: Optional[str] = None,
              seed: Optional[int] = None,
              timeout: float = 300) -> Dict[str, Dict[str, np.ndarray]]:
    """Run one forward (and optional backward) pass in the real Caffe.

    ``params``: layer name -> list of arrays, copied into ``net.params``
    (after loading ``weights_file`` if given).  ``inputs``: blob name -> array,
    copied into ``net.blobs`` (reshaped to fit) before ``net.forward()``.
    ``top_diffs``: blob name -> array set as the diff of that blob, then
    ``net.backward()`` runs (with ``force_backward`` advised in the prototxt).

    Returns ``{"data": {blob: arr}, "diff": {blob: arr},
    "params": {"layer/i": arr}, "param_diffs": {"layer/i": arr}}``.
    """
    exe = require_oracle()
    with tempfile.TemporaryDirectory(prefix="caffekt-oracle-") as d:
        proto = os.path.join(d, "net.prototxt")
        with open(proto, "w") as f:
            f.write(prototxt_text)
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
               "backward": bool(top_diffs)}
        proc = subprocess.run([exe, DRIVER, json.dumps(req)], capture_output=True, text=True,
                              timeout=timeout, env=_env())
        if proc.returncode != 0:
            raise RuntimeError(f"caffe oracle failed (rc={proc.returncode}) on:\n{prototxt_text}\n"
                               f"stderr:\n{proc.stderr[-4000:]}")
        res: Dict[str, Dict[str, np.ndarray]] = {"data": {}, "diff": {}, "params": {}, "param_diffs": {}}
        with np.load(out_npz) as z:
            for k in z.files:
                kind, name = k.split("|", 1)
                res[kind][name] = z[k]
        return res


if __name__ == "__main__":  # pragma: no cover - manual check
    print(oracle_python() or "no oracle", file=sys.stderr)
