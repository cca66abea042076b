"""Run a net in the real Caffe (pycaffe), always in a subprocess.

The real Caffe is the CPU pycaffe that ``tools/build_caffe_oracle.sh`` builds
into its own venv.  It is run as ``<its python> -I _caffe_driver.py`` so that
libcaffe never shares a process with torch, and a glog CHECK failure (Caffe's
answer to any bad input) kills the child, not us.

Its interpreter: an explicit path, else ``$CAFFEKT_ORACLE_PYTHON``, else
``${XDG_CACHE_HOME:-~/.cache}/caffekt/caffe-oracle/venv/bin/python``.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

DRIVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_caffe_driver.py")
STDERR_TAIL = 4000
_ROUND_MODE = re.compile(r"\bround_mode\s*:\s*(CEIL|FLOOR)\b")
_FORCE_BACKWARD = re.compile(r"^\s*force_backward\s*:", re.MULTILINE)


class OracleError(RuntimeError):
    """The Caffe process failed; ``stderr`` holds the end of what it printed."""

    def __init__(self, message: str, stderr: str = "", returncode: Optional[int] = None):
        self.stderr = stderr
        self.returncode = returncode
        super().__init__(message)


def default_prefix() -> str:
    """Where ``tools/build_caffe_oracle.sh`` builds by default."""
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "caffekt", "caffe-oracle")


def find_python(explicit: Optional[str] = None) -> Optional[str]:
    """The oracle's interpreter if it exists and is executable, else ``None``."""
    exe = explicit or os.environ.get("CAFFEKT_ORACLE_PYTHON") or \
        os.path.join(default_prefix(), "venv", "bin", "python")
    return exe if os.path.isfile(exe) and os.access(exe, os.X_OK) else None


def oracle_env() -> Dict[str, str]:
    """Environment for the child: quiet glog, single-thread BLAS (bit-stable results)."""
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "2")
    env["OPENBLAS_NUM_THREADS"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.pop("PYTHONPATH", None)  # our checkout must not shadow the oracle's packages
    return env


def to_ceil_mode_text(prototxt_text: str) -> str:
    """BVLC's ``round_mode: CEIL|FLOOR`` spelled as the fork's ``ceil_mode: true|false``.

    The oracle (inisis fork: PoolingParameter field 13 is ``bool ceil_mode``)
    and OpenCV's Caffe importer both reject ``round_mode``.
    """
    return _ROUND_MODE.sub(lambda m: "ceil_mode: " + ("true" if m.group(1) == "CEIL" else "false"),
                           prototxt_text)


def with_force_backward(prototxt_text: str) -> str:
    """Prepend ``force_backward: true`` unless the net already sets it.

    Caffe skips backward for layers no loss depends on; feeding top diffs by
    hand needs every layer's backward to run.
    """
    if _FORCE_BACKWARD.search(prototxt_text):
        return prototxt_text
    return "force_backward: true\n" + prototxt_text


def _check(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        tail = (proc.stderr or "")[-STDERR_TAIL:]
        raise OracleError(f"caffe oracle failed (rc={proc.returncode}) {what}\n"
                          f"--- oracle stderr (tail) ---\n{tail}", tail, proc.returncode)


def run_code(python: str, code: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run Python ``code`` in the oracle's interpreter; ``OracleError`` on failure."""
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=oracle_env(), stdin=subprocess.DEVNULL)
    _check(proc, "running a script")
    return proc


def run_net(python: str, prototxt_text: str,
            params: Optional[Mapping[str, Sequence[np.ndarray]]] = None,
            inputs: Optional[Mapping[str, np.ndarray]] = None,
            top_diffs: Optional[Mapping[str, np.ndarray]] = None,
            phase: str = "TEST",
            weights_file: Optional[str] = None,
            save_caffemodel: Optional[str] = None,
            seed: Optional[int] = None,
            backward: bool = False,
            timeout: float = 300) -> Dict[str, object]:
    """One forward (and optionally backward) pass of ``prototxt_text`` in Caffe.

    ``params``: layer -> arrays copied into ``net.params`` (after
    ``weights_file``).  ``inputs``: blob -> array; the blob is reshaped to it
    and the net reshaped.  ``seed`` seeds Caffe's RNG (fillers, Dropout).
    Backward runs when ``backward`` or ``top_diffs`` is given, with
    ``force_backward: true`` added unless present.  ``round_mode`` is
    rewritten as the fork's ``ceil_mode``.

    Returns ``{"data": {blob: arr}, "diff": {blob: arr}, "params": {"layer/i":
    arr}, "param_diffs": {...}, "layer_params": {layer: [arr, ...]},
    "layer_param_diffs": {...}, "layers": [(name, type), ...]}``.
    """
    if phase not in ("TEST", "TRAIN"):
        raise ValueError(f"phase must be 'TEST' or 'TRAIN', got {phase!r}")
    do_backward = bool(backward or top_diffs)
    text = to_ceil_mode_text(prototxt_text)
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
               "weights": weights_file and os.path.abspath(weights_file),
               "save": save_caffemodel and os.path.abspath(save_caffemodel),
               "seed": seed, "backward": do_backward}
        req_json = os.path.join(d, "req.json")
        with open(req_json, "w") as f:
            json.dump(req, f)
        proc = subprocess.run([python, "-I", DRIVER, req_json], capture_output=True, text=True,
                              timeout=timeout, env=oracle_env(), stdin=subprocess.DEVNULL)
        n_layers = len(re.findall(r"^\s*layers?\s*\{", text, re.MULTILINE))
        _check(proc, f"on a net of {n_layers} layers (prototxt: {_first_line(text)!r}...)")
        return _read_result(out_npz)


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:60]


def _read_result(path: str) -> Dict[str, object]:
    res: Dict[str, Dict] = {"data": {}, "diff": {}, "params": {}, "param_diffs": {}}
    layers: List[tuple] = []
    with np.load(path, allow_pickle=False) as z:
        for k in z.files:
            kind, name = k.split("|", 1)
            if kind == "meta":
                layers = [tuple(s.split("\t", 1)) for s in z[k].tolist()]
            else:
                res[kind][name] = z[k]
    out: Dict[str, object] = dict(res)
    out["layers"] = layers
    for flat, nested in (("params", "layer_params"), ("param_diffs", "layer_param_diffs")):
        by_layer: Dict[str, Dict[int, np.ndarray]] = {}
        for key, a in res[flat].items():  # npz keeps the net's layer order
            layer, i = key.rsplit("/", 1)
            by_layer.setdefault(layer, {})[int(i)] = a
        out[nested] = {layer: [d[i] for i in sorted(d)] for layer, d in by_layer.items()}
    return out


__all__ = ["OracleError", "default_prefix", "find_python", "oracle_env", "to_ceil_mode_text",
           "with_force_backward", "run_code", "run_net", "DRIVER"]
