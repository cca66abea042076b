"""Numerical parity of our nets against independent implementations.

Backends (each returns ``{caffe blob name: array}`` for one forward pass):

- ``opencv``: OpenCV 4.x ``cv2.dnn.readNetFromCaffe`` in this process.
- ``caffe``: the real pycaffe, in a subprocess run with the oracle's Python
  (``caffe_compat/_caffe_driver.py``); caffe is never imported here.
- ``onnxruntime``: our module exported to ONNX, a backend registered by
  ``caffekt.converters`` (``plugin_backend``).

Every blob is judged against our module run in float64 on the same input
(``caffe_compat.judge``): the backend agrees when it is no further from float64
than float32 rounding explains (its distance within ``rtol`` of the blob's scale
plus ``slack`` times the distance our own float32 run shows).

Nothing heavy is imported at module import: cv2, torch and onnxruntime are
imported by the backend that needs them.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .caffe_oracle import to_ceil_mode_text
from .errors import UnsupportedParameter
from .judge import (DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SLACK, describe_inputs, float64_forward, input_laws,
                    judge)
from .judge import random_inputs as judge_random_inputs
from .prototxt import format_text, parse_net_text

# ---------------------------------------------------------------- OpenCV dnn

# What OpenCV's Caffe importer does differently from Caffe (checked against
# the real Caffe in tests): shown next to the numbers so a mismatch that is
# OpenCV's is not read as ours.
OPENCV_DEVIATIONS = {
    "lrn_k": "OpenCV's LRN ignores lrn_param.k (uses k = 1)",
    "empty_window": ("a ceil-mode MAX pooling window lies wholly past the image: "
                     "Caffe gives -FLT_MAX there, OpenCV 0"),
}


def _final_writers(net) -> Dict[str, Tuple[int, int]]:
    """blob -> (layer index, top index) of the last layer writing it (in-place aware)."""
    last: Dict[str, Tuple[int, int]] = {}
    for li, lp in enumerate(net.layer):
        for ti, top in enumerate(lp.top):
            last[top] = (li, ti)
    return last


# Long on purpose: OpenCV's dnn needs a probe layer per blob, a temp file pair and its own error
# mapping, in this order; each step is short.
def opencv_forward(prototxt_text: str, caffemodel_path: str,
                   inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every blob's final value after one OpenCV dnn forward pass.

    In-place layers (``top == bottom``) overwrite a blob, so a blob's value is
    read from the last layer that writes it.  OpenCV can only return a
    layer's first output, so a blob that is another top of its last writer is
    read through an appended identity ``Power`` layer.  Fusion is disabled so
    that every intermediate result is a real layer output.  Blobs OpenCV
    drops or renames beyond recognition are absent from the result.
    """
    import cv2  # only this backend needs it

    net, _info = parse_net_text(prototxt_text)
    if len(net.layers):
        raise UnsupportedParameter("opencv backend: legacy V1 'layers' net; upgrade it first "
                                   "(caffekt upgrade)")
    writers = _final_writers(net)
    probes: Dict[str, str] = {}
    by_layer: Dict[int, List[str]] = {}
    for blob, (li, ti) in writers.items():
        if ti > 0:
            by_layer.setdefault(li, []).append(blob)
    fed = type(net)()
    fed.CopyFrom(net)
    del fed.layer[:]
    for li, lp in enumerate(net.layer):
        fed.layer.add().CopyFrom(lp)
        for blob in by_layer.get(li, []):
            probe = fed.layer.add()
            probe.name = probes[blob] = f"{blob}__caffekt_probe"
            probe.type = "Power"
            probe.bottom.append(blob)
            probe.top.append(probe.name)
    text = to_ceil_mode_text(format_text(fed))

    with tempfile.TemporaryDirectory(prefix="caffekt-cv-") as d:
        path = os.path.join(d, "net.prototxt")
        with open(path, "w") as f:
            f.write(text)
        cvnet = cv2.dnn.readNetFromCaffe(path, caffemodel_path)
    cvnet.enableFusion(False)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    for name, a in inputs.items():
        cvnet.setInput(np.ascontiguousarray(a, dtype=np.float32), name)

    known = set(cvnet.getLayerNames())
    wanted: List[Tuple[str, str]] = []  # (caffe blob, opencv layer)
    for blob, (li, ti) in writers.items():
        lp = net.layer[li]
        if lp.type == "Input":
            continue
        if ti > 0:
            cv_name = probes[blob]
        elif lp.name in known:
            cv_name = lp.name
        elif lp.top[0] in known:  # the importer names some layers after their top
            cv_name = lp.top[0]
        else:
            continue
        if cv_name in known:
            wanted.append((blob, cv_name))
    outs = cvnet.forward([cv for _, cv in wanted]) if wanted else []
    result = {name: np.asarray(a, dtype=np.float32).copy() for name, a in inputs.items()}
    for (blob, _cv), arr in zip(wanted, outs):
        result[blob] = np.asarray(arr).copy()
    return result


def opencv_deviation_notes(prototxt_text: str, shapes: Mapping[str, Sequence[int]]) -> Dict[str, str]:
    """Layer name -> why OpenCV is expected to differ there (see ``OPENCV_DEVIATIONS``).

    ``shapes`` gives each blob's shape (from our own forward pass), needed to
    find pooling windows that ceil rounding places wholly past the image.
    """
    net, _ = parse_net_text(prototxt_text)
    notes: Dict[str, str] = {}
    for lp in net.layer:
        if lp.type == "LRN" and lp.lrn_param.k != 1.0:
            notes[lp.name] = OPENCV_DEVIATIONS["lrn_k"] + f" (k = {lp.lrn_param.k:g})"
        elif lp.type == "Pooling" and lp.bottom and lp.bottom[0] in shapes:
            if _has_empty_window(lp.pooling_param, shapes[lp.bottom[0]]):
                notes[lp.name] = OPENCV_DEVIATIONS["empty_window"]
    return notes


def _has_empty_window(pp, shape: Sequence[int]) -> bool:
    """Whether Caffe's ceil rounding leaves a MAX window wholly past the image end.

    pooling_layer.cpp only drops the last window when there is padding, so
    with ``pad: 0`` and stride > kernel a window can start at or after the
    end; Caffe's max over nothing is -FLT_MAX, OpenCV's is 0.
    """
    if pp.global_pooling or len(shape) != 4 or pp.round_mode != pp.CEIL or pp.pool != pp.MAX:
        return False
    k_hw = (pp.kernel_h or pp.kernel_size, pp.kernel_w or pp.kernel_size)
    s_hw = (pp.stride_h or pp.stride, pp.stride_w or pp.stride)
    p_hw = (pp.pad_h or pp.pad, pp.pad_w or pp.pad)
    for size, k, st, p in zip(shape[2:], k_hw, s_hw, p_hw):
        n = -(-(size + 2 * p - k) // st) + 1
        if p and (n - 1) * st >= size + p:  # Caffe drops this window itself
            n -= 1
        if (n - 1) * st - p >= size:
            return True
    return False


# ------------------------------------------------------------- the real Caffe

def caffe_forward(prototxt_text: str, caffemodel_path: str, inputs: Mapping[str, np.ndarray],
                  python: Optional[str] = None, timeout: float = 600) -> Dict[str, np.ndarray]:
    """Every blob after one forward pass of the real pycaffe (in a subprocess)."""
    from .caffe_oracle import default_prefix, find_python, run_net
    from .errors import CaffeCompatError

    exe = find_python(python)
    if exe is None:
        where = python or os.environ.get("CAFFEKT_ORACLE_PYTHON") or \
            os.path.join(default_prefix(), "venv", "bin", "python")
        raise CaffeCompatError(f"caffe backend: no oracle python at {where}; build one with "
                               f"tools/build_caffe_oracle.sh or pass --caffe-python")
    res = run_net(exe, prototxt_text, inputs=inputs, weights_file=caffemodel_path, timeout=timeout)
    return res["data"]


# ------------------------------------------------- backends of other packages

def plugin_backend(name: str):
    """The forward function another package registers for backend ``name`` in the
    ``caffekt.parity_backends`` entry-point group (onnxruntime: ``caffekt.converters``)."""
    from .plugins import PARITY_BACKENDS_GROUP, registered
    ep = registered(PARITY_BACKENDS_GROUP).get(name)
    if ep is None:
        raise UnsupportedParameter(f"{name} backend: not installed (no {name!r} in the "
                                   f"{PARITY_BACKENDS_GROUP} entry-point group; pip install -e .)")
    return ep.load()


# ---------------------------------------------------------------- comparison

BACKENDS = ("caffe", "opencv", "onnxruntime")


@dataclass
class BlobResult:
    """One blob compared: ``status`` is ok, mismatch, shape, missing or skipped.

    ``max_abs_err``/``max_rel_err``: the backend against our float32 result.
    ``scale``, ``ours_f64_err``, ``ref_f64_err``, ``limit``: the float64-anchored
    judgement (``caffe_compat.judge``), when a float64 reference was given.
    """
    name: str
    shape: Tuple[int, ...]
    ref_shape: Optional[Tuple[int, ...]]
    max_abs_err: Optional[float]
    max_rel_err: Optional[float]
    status: str
    note: Optional[str] = None
    scale: Optional[float] = None
    ours_f64_err: Optional[float] = None
    ref_f64_err: Optional[float] = None
    limit: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.status in ("ok", "skipped")


@dataclass
class ParityReport:
    """All blobs of one net compared between our module and one backend."""
    backend: str
    prototxt: str
    weights: str
    seed: int
    atol: float
    rtol: float
    inputs: Dict[str, Tuple[int, ...]]
    blobs: List[BlobResult] = field(default_factory=list)
    notes: Dict[str, str] = field(default_factory=dict)
    slack: float = DEFAULT_SLACK
    input_law: Dict[str, str] = field(default_factory=dict)   # input -> the law it was drawn from
    input_text: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.blobs) and all(b.ok for b in self.blobs) and \
            any(b.status == "ok" for b in self.blobs)

    def to_json(self) -> dict:
        """The ``--json`` document (schema ``caffekt.parity/2``: float64-anchored)."""
        return {
            "schema": "caffekt.parity/2",
            "backend": self.backend, "prototxt": self.prototxt, "weights": self.weights,
            "seed": self.seed, "atol": self.atol, "rtol": self.rtol, "slack": self.slack,
            "input_law": dict(self.input_law),
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "ok": self.ok,
            "compared": sum(b.status != "skipped" and b.status != "missing" for b in self.blobs),
            "failed": [b.name for b in self.blobs if not b.ok],
            "notes": dict(self.notes),
            "blobs": [{"name": b.name, "shape": list(b.shape),
                       "ref_shape": None if b.ref_shape is None else list(b.ref_shape),
                       "max_abs_err": b.max_abs_err, "max_rel_err": b.max_rel_err,
                       "scale": b.scale, "ours_f64_err": b.ours_f64_err,
                       "ref_f64_err": b.ref_f64_err, "limit": b.limit,
                       "ok": b.ok, "status": b.status, "note": b.note} for b in self.blobs],
        }


def compare_blob(name: str, ours: np.ndarray, ref: Optional[np.ndarray], atol: float, rtol: float,
                 missing_status: str = "missing", note: Optional[str] = None,
                 exact: Optional[np.ndarray] = None, slack: float = DEFAULT_SLACK) -> BlobResult:
    """``ref`` (the backend) against ``ours``.

    With ``exact`` (our module in float64) the verdict is ``judge``'s: the
    backend's distance from float64 within ``rtol + atol/scale + slack * ours'``
    (see ``caffe_compat.judge``).  Without it, numpy.isclose's rule
    ``|a - b| <= atol + rtol * |b|``.  Either way ``max_rel_err`` is the largest
    ``|a - b| / |b|`` over elements with ``|b| > atol`` (near-zero references
    would only measure noise).
    """
    shape = tuple(int(d) for d in ours.shape)
    if ref is None:
        return BlobResult(name, shape, None, None, None, missing_status, note)
    ref_shape = tuple(int(d) for d in ref.shape)
    if ref_shape != shape:
        if int(np.prod(ref_shape)) == int(np.prod(shape)) and ref.ndim != ours.ndim:
            ref = ref.reshape(shape)  # e.g. OpenCV keeps InnerProduct tops 2-D or 4-D
        else:
            return BlobResult(name, shape, ref_shape, None, None, "shape", note)
    a = ours.astype(np.float64)
    b = ref.astype(np.float64)
    if a.size == 0:
        return BlobResult(name, shape, ref_shape, 0.0, 0.0, "ok", note)
    # NaN agrees with NaN and inf with the same inf; anything else against
    # a non-finite value is an infinite error.
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    with np.errstate(invalid="ignore"):
        err = np.where(same, 0.0, np.abs(a - b))
    err = np.where(np.isnan(err), np.inf, err)
    big = np.isfinite(b) & (np.abs(b) > atol)
    max_abs = float(err.max())
    max_rel = float(np.max(err[big] / np.abs(b[big]))) if big.any() else 0.0
    if exact is not None and tuple(exact.shape) == shape:
        d = judge(ours, ref, exact, rtol=rtol, atol=atol, slack=slack)
        return BlobResult(name, shape, ref_shape, max_abs, max_rel, "ok" if d.ok else "mismatch",
                          note, d.scale, d.ours, d.other, d.limit)
    with np.errstate(invalid="ignore"):
        good = bool(np.all(same | (np.isfinite(err) & (err <= atol + rtol * np.abs(b)))))
    return BlobResult(name, shape, ref_shape, max_abs, max_rel, "ok" if good else "mismatch", note)


def _parse_net_file(prototxt: str):
    from .io import read_net
    got = read_net(prototxt)
    return got[0] if isinstance(got, tuple) else got


def _feedable_inputs(param, net, backend: str) -> None:
    """Caffe and OpenCV only take nets whose inputs are ``Input`` layers (deploy nets)."""
    if backend == "onnxruntime":
        return
    feeders = {t: lp for lp in param.layer for t in lp.top if t in net.inputs}
    bad = sorted(f"{lp.name} ({lp.type})" for lp in feeders.values() if lp.type != "Input")
    if bad:
        raise UnsupportedParameter(f"{backend} backend: inputs must come from Input layers "
                                   f"(a deploy net); this net reads them from {', '.join(bad)}")


def _set_input_shapes(param, shapes: Mapping[str, Sequence[int]]) -> None:
    """Write the shapes we run with into the Input layers, so that the other
    implementation builds (and loads weights into) the same net."""
    for lp in param.layer:
        if lp.type != "Input":
            continue
        old = list(lp.input_param.shape)
        del lp.input_param.shape[:]
        for i, top in enumerate(lp.top):
            dims = shapes.get(top) or (old[min(i, len(old) - 1)].dim if old else ())
            lp.input_param.shape.add().dim.extend(int(d) for d in dims)


def random_inputs(net, seed: int) -> Dict[str, np.ndarray]:
    """Standard normal float32 inputs (label inputs: classes), one per net input, from ``seed``."""
    return judge_random_inputs(net, seed)


# Long on purpose: the steps of one parity run in order (net, inputs, both sides, judge, report).
def run_parity(prototxt: str, weights: str, backend: str,
               input_shapes: Optional[Mapping[str, Sequence[int]]] = None, seed: int = 0,
               atol: float = DEFAULT_ATOL, rtol: float = DEFAULT_RTOL, caffe_python: Optional[str] = None,
               slack: float = DEFAULT_SLACK) -> ParityReport:
    """Compare every blob of our module against ``backend`` on seeded random inputs.

    Our module also runs in float64 on the same inputs; each blob is judged by
    how far the backend is from that reference next to how far our own float32
    run is (``caffe_compat.judge``).  ``input_shapes``: input blob -> shape
    overriding the prototxt's.  Blobs the backend cannot show are ``missing``
    (a failure) for caffe and onnxruntime and ``skipped`` for opencv, unless
    they are net outputs.
    """
    import torch

    from .net import load_net

    if backend not in BACKENDS:
        raise UnsupportedParameter(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    from .errors import CaffeCompatError
    from .errors import name_file

    param = _parse_net_file(prototxt)
    try:
        net = load_net(param, weights=weights, phase="TEST", input_shapes=input_shapes)
    except CaffeCompatError as e:
        raise name_file(e, os.fspath(prototxt))
    net.eval()
    _feedable_inputs(param, net, backend)
    inputs = random_inputs(net, seed)
    torch.manual_seed(seed)
    with torch.no_grad():
        ours = {k: v.detach().cpu().numpy() for k, v in net.forward_all(**{
            n: torch.from_numpy(a) for n, a in inputs.items()}).items()}
    exact = float64_forward(net, inputs)

    _set_input_shapes(param, {n: a.shape for n, a in inputs.items()})
    text = to_ceil_mode_text(format_text(param))
    notes: Dict[str, str] = {}
    if backend == "caffe":
        ref = caffe_forward(text, weights, inputs, python=caffe_python)
    elif backend == "opencv":
        ref = opencv_forward(text, weights, inputs)
        notes = opencv_deviation_notes(format_text(param), {k: v.shape for k, v in ours.items()})
    else:
        ref = plugin_backend(backend)(net, inputs)

    note_by_blob: Dict[str, str] = {}
    for lp in param.layer:
        if lp.name in notes:
            for t in lp.top:
                note_by_blob[t] = f"{lp.name}: {notes[lp.name]}"
    report = ParityReport(backend, os.fspath(prototxt), os.fspath(weights), seed, atol, rtol,
                          {n: tuple(a.shape) for n, a in inputs.items()}, notes=notes, slack=slack,
                          input_law=input_laws(net),
                          input_text=describe_inputs(inputs, input_laws(net), seed))
    for name, a in ours.items():
        lenient = backend == "opencv" and name not in net.outputs
        report.blobs.append(compare_blob(name, a, ref.get(name), atol, rtol,
                                         "skipped" if lenient else "missing", note_by_blob.get(name),
                                         exact=exact.get(name), slack=slack))
    return report


def _num(x: Optional[float]) -> str:
    return "-" if x is None else f"{x:.3g}"


def format_table(report: ParityReport) -> str:
    """The human-readable report: the inputs, one row per blob, then a verdict line.

    Columns: the blob's scale (max |float64 value|), our float32 and the
    backend's distance from float64 relative to it, the distance allowed, the verdict.
    """
    b_col = f"{report.backend} vs f64"
    rows = [("blob", "shape", "scale", "ours32 vs f64", b_col, "allowed", "ok")]
    for b in report.blobs:
        shape = "x".join(str(d) for d in b.shape)
        if b.status == "shape":
            shape += f" (ref {'x'.join(str(d) for d in b.ref_shape)})"
        verdict = {"ok": "yes", "mismatch": "NO", "shape": "NO (shape)", "missing": "NO (missing)",
                   "skipped": "n/a"}[b.status]
        rows.append((b.name, shape, _num(b.scale), _num(b.ours_f64_err), _num(b.ref_f64_err),
                     _num(b.limit), verdict + (" *" if b.note else "")))
    n = len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(n)]
    lines = [f"parity vs {report.backend}: {report.prototxt} + {report.weights}",
             report.input_text or "inputs: " + ", ".join(
                 f"{k} {'x'.join(map(str, v))}" for k, v in report.inputs.items()),
             f"judged against our module in float64: a blob agrees when {report.backend}'s distance "
             f"from float64 is <= {report.rtol:g}{f' + {report.atol:g}/scale' if report.atol else ''} + "
             f"{report.slack:g} x our "
             f"float32 distance (all relative to the blob's scale, max |f64|)"]
    for i, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j < 2 else c.rjust(w) if j < n - 1 else c
                               for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    for layer, note in report.notes.items():
        lines.append(f"* known OpenCV deviation at layer {layer}: {note}")
    failed = [b.name for b in report.blobs if not b.ok]
    compared = sum(b.status in ("ok", "mismatch", "shape") for b in report.blobs)
    if report.ok:
        lines.append(f"OK: {compared} blobs agree within float32 rounding")
    else:
        lines.append(f"FAILED: {len(failed)} of {len(report.blobs)} blobs differ beyond float32 "
                     f"rounding: {', '.join(failed) or '(none compared)'}")
    return "\n".join(lines)
