"""Export a Caffe net (our ``caffe_compat.Net``) to ONNX, checked in onnxruntime.

The module itself is traced with the TorchScript exporter (``dynamo=False``;
the dynamo exporter needs onnxscript), opset >= 13, batch axis dynamic.  The
graph reproduces Caffe's numerics because the layers do:

* Pooling (pooling_layer.cpp): where PyTorch's pooling has Caffe's output
  size the layer uses it and ONNX gets ``MaxPool``/``AveragePool`` with
  ``ceil_mode`` and ``count_include_pad=1``; otherwise the layer pads
  explicitly to exactly Caffe's windows (``Pad`` + VALID pool, then a constant
  per-window divisor for AVE), which ONNX takes as it is.
* LRN across channels (lrn_layer.cpp, ``x * (k + alpha/n * sum x^2)^-beta``)
  becomes one ONNX ``LRN`` node with ``bias = k`` (ONNX's formula is the same
  for odd n).  Within-channel LRN exports as its pooling arithmetic.
* Softmax (softmax_layer.cpp) exports over its single axis, which is what
  opset-13 ``Softmax`` computes.

``export_onnx_file`` never reports success unchecked: ``onnx.checker`` must
pass and onnxruntime must match our module on seeded random inputs (at a
batch size different from the traced one, so the dynamic batch axis is
exercised) within ``rtol`` relative to each output's largest magnitude.
The file is written atomically, and only when the check passes.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import UnsupportedParameter

MIN_OPSET = 13
DEFAULT_OPSET = 17


# ------------------------------------------------------------------ LRN as one node

def _lrn_function():
    import torch

    class _CaffeLRN(torch.autograd.Function):
        """Runs the layer's own forward; exports as ONNX ``LRN`` (bias = Caffe's k)."""

        @staticmethod
        def forward(ctx, x, module):  # noqa: D401 - torch API
            return module._caffekt_forward(x)

        @staticmethod
        def symbolic(g, x, module):
            return g.op("LRN", x, size_i=int(module.size), alpha_f=float(module.alpha),
                        beta_f=float(module.beta), bias_f=float(module.k))

    return _CaffeLRN


def _conv_axis1(mod, xs):
    from caffe_compat.layers.convolution import _CONV, _CONV_T
    fn = (_CONV_T if mod.transposed else _CONV)[len(mod.kernel)]
    bias = mod.blobs[1] if mod.bias_term else None
    tops = tuple(fn(x, mod.blobs[0], bias, stride=mod.stride, padding=mod.pad,
                    dilation=mod.dilation, groups=mod.group) for x in xs)
    return tops[0] if len(tops) == 1 else tops


@contextlib.contextmanager
def onnx_friendly(net) -> Iterator[None]:
    """Swap in export-only forwards for the duration: ACROSS_CHANNELS LRN -> one ONNX node,
    axis-1 convolutions without the batch-freezing reshape."""
    from caffe_compat.layers.lrn import ACROSS_CHANNELS, LRN

    from caffe_compat.layers.convolution import _BaseConv

    fn = _lrn_function()
    patched = []
    for m in net.modules():
        if isinstance(m, LRN) and m.region == ACROSS_CHANNELS:
            m._caffekt_forward = m.forward
            m.forward = (lambda mod: (lambda x: fn.apply(x, mod)))(m)
            patched.append(m)
        elif isinstance(m, _BaseConv) and m.axis == 1:
            # the layer folds leading axes with a product of sizes, which tracing freezes
            # to the traced batch; with axis 1 there is nothing to fold
            m._caffekt_forward = m.forward
            m.forward = (lambda mod: (lambda *xs: _conv_axis1(mod, xs)))(m)
            patched.append(m)
    try:
        yield
    finally:
        for m in patched:
            m.forward = m._caffekt_forward
            del m._caffekt_forward


# ------------------------------------------------------------------ export

def export_net(net, f, outputs: Optional[Sequence[str]] = None, opset: int = DEFAULT_OPSET,
               onnx_names: Optional[Sequence[str]] = None, batch: int = 1) -> List[str]:
    """Trace ``net`` (a ``caffe_compat.Net``) into ONNX at ``f`` (a path or a binary file).

    ``outputs``: Caffe blob names to expose (default: the net's outputs; any
    blob may be named).  ``onnx_names``: the graph's output names (default:
    the blob names).  Inputs are named after the net's input blobs; axis 0
    of every input and output is the dynamic ``batch``.  Returns the blob
    name of each ONNX output, in order.
    """
    import torch

    if opset < MIN_OPSET:
        raise UnsupportedParameter(f"opset {opset}: caffekt exports at opset >= {MIN_OPSET} "
                                   f"(Softmax over one axis needs opset 13)")
    in_names = list(net.inputs)
    names = list(outputs) if outputs is not None else list(net.outputs)
    unknown = [n for n in names if n not in net.blob_shapes]
    if unknown:
        raise UnsupportedParameter(f"no blob(s) {unknown} in net {net.name!r}")
    out_names = list(onnx_names) if onnx_names is not None else names
    only_outputs = set(names) <= set(net.outputs)

    class _Blobs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *xs):
            kw = dict(zip(in_names, xs))
            blobs = self.inner(**kw) if only_outputs else self.inner.forward_all(**kw)
            return tuple(blobs[n] for n in names)

    xs = tuple(torch.zeros((batch,) + tuple(net.blob_shapes[n][1:])) for n in in_names)
    dyn = {n: {0: "batch"} for n in in_names + out_names}
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad(), warnings.catch_warnings(), onnx_friendly(net):
            # shapes are Python ints fixed at build time; the batch axis is checked in onnxruntime
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(_Blobs(net), xs, f, dynamo=False, opset_version=opset,
                              input_names=in_names, output_names=out_names, dynamic_axes=dyn,
                              do_constant_folding=True)
    finally:
        net.train(was_training)
    return names


# ------------------------------------------------------------------ checking

@dataclass
class OutputCheck:
    name: str
    shape: Tuple[int, ...]
    max_abs_err: float
    max_rel_err: float   # max |onnx - ours| / max |ours|
    ok: bool


@dataclass
class OnnxReport:
    """What ``export_onnx_file`` wrote and how onnxruntime compared with our module."""

    path: str
    opset: int
    inputs: Dict[str, Tuple[int, ...]]
    outputs: List[OutputCheck] = field(default_factory=list)
    rtol: float = 1e-5
    checker: str = "not run"
    written: bool = False
    nbytes: int = 0
    ops: Dict[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.checker == "ok" and bool(self.outputs) and all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        lines = [f"ONNX opset {self.opset}: {self.path} ({'written, ' + str(self.nbytes) + ' bytes' if self.written else 'NOT written'})",
                 f"onnx.checker: {self.checker}",
                 "checked in onnxruntime on random inputs " +
                 ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.inputs.items()) +
                 f" (batch axis dynamic); tolerance max|diff| <= {self.rtol:g} * max|ours|"]
        for o in self.outputs:
            lines.append(f"  {o.name:<20} {'x'.join(map(str, o.shape)):<16} max abs {o.max_abs_err:.3g}  "
                         f"rel {o.max_rel_err:.3g}  {'ok' if o.ok else 'MISMATCH'}")
        lines.append("OK" if self.ok else "FAILED: onnxruntime does not reproduce the net")
        return "\n".join(lines)


def _compare(name: str, ours: np.ndarray, got: np.ndarray, rtol: float) -> OutputCheck:
    if tuple(got.shape) != tuple(ours.shape):
        return OutputCheck(name, tuple(ours.shape), float("inf"), float("inf"), False)
    a, b = got.astype(np.float64), ours.astype(np.float64)
    err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    rel = err / scale if scale > 0 else err
    good = bool(np.isfinite(a).all() == np.isfinite(b).all()) and rel <= rtol
    return OutputCheck(name, tuple(ours.shape), err, rel, good)


def check_onnx(model_bytes: bytes, net, names: Sequence[str], onnx_names: Sequence[str],
               batch: int = 2, seed: int = 0, rtol: float = 1e-5) -> Tuple[str, List[OutputCheck], Dict]:
    """(checker verdict, per-output comparison, input shapes): ONNX in onnxruntime vs ``net``."""
    import onnx
    import onnxruntime as ort
    import torch

    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
        verdict = "ok"
    except Exception as e:  # the checker's own exception types vary by version
        return f"failed: {e}", [], {}
    rng = np.random.default_rng(seed)
    feed = {n: rng.standard_normal((batch,) + tuple(net.blob_shapes[n][1:])).astype(np.float32)
            for n in net.inputs}
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(list(onnx_names), feed)
    net.eval()
    with torch.no_grad():
        blobs = net.forward_all(**{k: torch.from_numpy(v) for k, v in feed.items()})
    checks = [_compare(n, blobs[n].numpy(), g, rtol) for n, g in zip(names, got)]
    return verdict, checks, {k: v.shape for k, v in feed.items()}


def op_counts(model_bytes: bytes) -> Dict[str, int]:
    """ONNX op type -> number of nodes (what the graph is made of)."""
    import onnx
    counts: Dict[str, int] = {}
    for node in onnx.load_from_string(model_bytes).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def export_onnx_file(prototxt, weights, out: str, opset: int = DEFAULT_OPSET,
                     input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                     outputs: Optional[Sequence[str]] = None, rtol: float = 1e-5,
                     seed: int = 0, check_batch: int = 2, write_on_mismatch: bool = False,
                     python_layers: str = "refuse") -> OnnxReport:
    """Build ``prototxt`` + ``weights`` (TEST phase), export, check, and write ``out`` atomically.

    ``weights`` may be None (filler values; useful only for testing the graph).
    The file is written only if the check passes (or ``write_on_mismatch``).
    """
    from caffe_compat.files import atomic_output
    from caffe_compat.net import load_net

    net = load_net(prototxt, weights=weights, phase="TEST", input_shapes=input_shapes,
                   python_layers=python_layers)
    net.eval()
    buf = io.BytesIO()
    names = export_net(net, buf, outputs=outputs, opset=opset)
    data = buf.getvalue()
    verdict, checks, shapes = check_onnx(data, net, names, names, batch=check_batch, seed=seed,
                                         rtol=rtol)
    report = OnnxReport(os.fspath(out), opset, shapes, checks, rtol, verdict, ops=op_counts(data))
    if report.ok or write_on_mismatch:
        with atomic_output(os.fspath(out)) as f:
            f.write(data)
        report.written, report.nbytes = True, len(data)
    return report


__all__ = ["export_net", "export_onnx_file", "check_onnx", "onnx_friendly", "op_counts",
           "OnnxReport", "OutputCheck", "MIN_OPSET", "DEFAULT_OPSET"]
