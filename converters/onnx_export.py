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
from caffe_compat.judge import DEFAULT_RTOL, DEFAULT_SLACK

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

    from caffe_compat.layers.pooling import Pooling

    fn = _lrn_function()
    patched = []
    explicit = []
    for m in net.modules():
        if isinstance(m, Pooling) and not m.plain_ceil_agrees():
            # ONNX's ceil_mode keeps a last window that starts in the right padding; PyTorch and
            # Caffe drop it: pad explicitly so that ONNX visits Caffe's windows
            m.explicit_padding(True)
            explicit.append(m)
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
        for m in explicit:
            m.explicit_padding(False)
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
    dyn = {n: {0: "batch"} for n in in_names}
    # scalar outputs (a loss, an accuracy) have no batch axis
    dyn.update({o: {0: "batch"} for o, n in zip(out_names, names) if len(net.blob_shapes[n])})
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
    ours_f64_err: float = 0.0   # max |ours32 - f64| / scale (caffe_compat.judge)
    onnx_f64_err: float = 0.0   # max |onnx - f64| / scale
    limit: float = 0.0          # what onnx_f64_err may reach


@dataclass
class OnnxReport:
    """What ``export_onnx_file`` wrote and how onnxruntime compared with our module."""

    path: str
    opset: int
    inputs: Dict[str, Tuple[int, ...]]
    outputs: List[OutputCheck] = field(default_factory=list)
    rtol: float = DEFAULT_RTOL
    checker: str = "not run"
    written: bool = False
    nbytes: int = 0
    ops: Dict[str, int] = field(default_factory=dict)
    slack: float = DEFAULT_SLACK
    dropped: List[str] = field(default_factory=list)   # layers left out of a train/test net's deploy form
    input_text: str = ""

    @property
    def ok(self) -> bool:
        return self.checker == "ok" and bool(self.outputs) and all(o.ok for o in self.outputs)

    def __str__(self) -> str:
        lines = [f"ONNX opset {self.opset}: {self.path} ({'written, ' + str(self.nbytes) + ' bytes' if self.written else 'NOT written'})"]
        if self.dropped:
            lines.append(f"deploy form exported; dropped {len(self.dropped)} layer(s) that need labels "
                         f"or data: {', '.join(self.dropped)} (--keep-losses keeps losses and accuracy)")
        lines += [f"onnx.checker: {self.checker}",
                  "checked in onnxruntime (batch axis dynamic) against our module in float64 on random inputs:",
                  self.input_text or ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in self.inputs.items()),
                  f"an output agrees when |onnx - f64| <= {self.rtol:g} + {self.slack:g} x |ours32 - f64| "
                  f"(max over the output, relative to its max |f64|)"]
        for o in self.outputs:
            lines.append(f"  {o.name:<20} {'x'.join(map(str, o.shape)):<16} ours32 vs f64 {o.ours_f64_err:.3g}  "
                         f"onnx vs f64 {o.onnx_f64_err:.3g}  allowed {o.limit:.3g}  "
                         f"{'ok' if o.ok else 'MISMATCH'}")
        lines.append("OK: onnxruntime agrees within float32 rounding" if self.ok
                     else "FAILED: onnxruntime does not reproduce the net")
        return "\n".join(lines)


def _compare(name: str, ours: np.ndarray, got: np.ndarray, exact: np.ndarray, rtol: float,
             slack: float) -> OutputCheck:
    from caffe_compat.judge import judge
    if tuple(got.shape) != tuple(ours.shape):
        return OutputCheck(name, tuple(ours.shape), float("inf"), float("inf"), False,
                           0.0, float("inf"), 0.0)
    a, b = got.astype(np.float64), ours.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        err = float(np.max(np.abs(a - b))) if a.size else 0.0
    scale = float(np.max(np.abs(b))) if b.size else 0.0
    rel = err / scale if scale > 0 else err
    d = judge(ours, got, exact, rtol=rtol, slack=slack)
    return OutputCheck(name, tuple(ours.shape), err, rel, d.ok, d.ours, d.other, d.limit)


def check_onnx(model_bytes: bytes, net, names: Sequence[str], onnx_names: Sequence[str],
               batch: int = 2, seed: int = 0, rtol: float = DEFAULT_RTOL,
               slack: float = DEFAULT_SLACK) -> Tuple[str, List[OutputCheck], Dict]:
    """(checker verdict, per-output comparison, input shapes): ONNX in onnxruntime vs ``net``.

    The inputs are ``judge.random_inputs(net, seed, batch)``.

    Each output is judged against ``net`` run in float64 (``caffe_compat.judge``).
    """
    import onnx
    import onnxruntime as ort
    import torch

    from caffe_compat.judge import float64_forward

    try:
        model = onnx.load_from_string(model_bytes)
        onnx.checker.check_model(model)
        verdict = "ok"
    except Exception as e:  # the checker's own exception types vary by version
        return f"failed: {e}", [], {}
    from caffe_compat.judge import random_inputs

    feed = random_inputs(net, seed, batch=batch)
    sess = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    got = sess.run(list(onnx_names), feed)
    net.eval()
    with torch.no_grad():
        blobs = net.forward_all(**{k: torch.from_numpy(v) for k, v in feed.items()})
    exact = float64_forward(net, feed)
    checks = [_compare(n, blobs[n].numpy(), g, exact[n], rtol, slack) for n, g in zip(names, got)]
    return verdict, checks, {k: v.shape for k, v in feed.items()}


def op_counts(model_bytes: bytes) -> Dict[str, int]:
    """ONNX op type -> number of nodes (what the graph is made of)."""
    import onnx
    counts: Dict[str, int] = {}
    for node in onnx.load_from_string(model_bytes).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def _layer_outputs(net, feed) -> Dict[str, object]:
    """Layer name -> its output, for the layers that ran before any error."""
    import torch

    seen: Dict[str, object] = {}
    hooks = [net.layer_modules[st.key].register_forward_hook(
        (lambda name: lambda _m, _i, out: seen.__setitem__(name, out))(name))
        for name, st in zip(net.layer_names, net._steps)]
    try:
        with torch.no_grad():
            net.eval().forward_all(**feed)
    except Exception:   # noqa: BLE001 - the layer that raised is the first one missing
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen


def _same(a, b) -> bool:
    import torch
    a = a if isinstance(a, (tuple, list)) else (a,)
    b = b if isinstance(b, (tuple, list)) else (b,)
    return len(a) == len(b) and all(
        tuple(x.shape) == tuple(y.shape) and
        torch.allclose(x.double(), y.double(), rtol=1e-4, atol=1e-6, equal_nan=True)
        for x, y in zip(a, b))


def batch_dependent_layer(form, state: Mapping, shapes: Mapping[str, Sequence[int]], batch: int,
                          path: Optional[str] = None, python_layers: str = "refuse") -> Optional[str]:
    """The first layer whose output at ``batch`` differs from the same layer built for ``batch``.

    A net built for one batch and run at another is what a traced graph with a
    dynamic batch axis does; a layer that keeps its setup batch shows here.
    """
    import torch

    from caffe_compat.judge import random_inputs
    from caffe_compat.net import Net

    built = Net(form, phase="TEST", input_shapes=shapes, python_layers=python_layers, path=path)
    other = Net(form, phase="TEST", python_layers=python_layers, path=path,
                input_shapes={k: (batch,) + tuple(v[1:]) for k, v in shapes.items()})
    built.load_state_dict(state)
    other.load_state_dict(state)
    feed = {k: torch.from_numpy(v) for k, v in random_inputs(other, 0).items()}
    want, got = _layer_outputs(other, feed), _layer_outputs(built, feed)
    for name in built.layer_names:
        if name in want and (name not in got or not _same(got[name], want[name])):
            return name
    return None


def export_onnx_file(prototxt, weights, out: str, opset: int = DEFAULT_OPSET,
                     input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                     outputs: Optional[Sequence[str]] = None, rtol: float = DEFAULT_RTOL,
                     seed: int = 0, check_batch: int = 2, write_on_mismatch: bool = False,
                     python_layers: str = "refuse", keep_losses: bool = False,
                     slack: float = DEFAULT_SLACK) -> OnnxReport:
    """Build ``prototxt`` + ``weights`` (TEST phase), export, check, and write ``out`` atomically.

    A train/test net exports its deploy form (``export_form``).  ``weights``
    may be None (filler values; useful only for testing the graph).  The file
    is written only if the check passes (or ``write_on_mismatch``).  A layer
    that only works at the batch it was built for is refused by name.
    """
    from caffe_compat.files import atomic_output
    from caffe_compat.judge import describe_inputs, input_laws, random_inputs
    from caffe_compat.net import load_net

    from caffe_compat.errors import CaffeCompatError
    from caffe_compat.errors import name_file

    from .deploy_form import export_form

    form, path, dropped = export_form(prototxt, keep_losses, input_shapes)
    try:
        net = load_net(form, weights=weights, phase="TEST", input_shapes=input_shapes,
                       python_layers=python_layers)
    except CaffeCompatError as e:
        raise name_file(e, path)
    net.path = path
    net.eval()
    buf = io.BytesIO()
    names = export_net(net, buf, outputs=outputs, opset=opset)
    data = buf.getvalue()
    try:
        verdict, checks, shapes = check_onnx(data, net, names, names, batch=check_batch, seed=seed,
                                           rtol=rtol, slack=slack)
        failed = not all(c.ok for c in checks)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors are not typed; decided below
        failed, err = True, e
    else:
        err = None
    if failed:
        shapes = {k: net.blob_shapes[k] for k in net.inputs}
        bad = batch_dependent_layer(form, net.state_dict(), shapes, check_batch, path, python_layers)
        if bad is not None:
            i = net.layer_names.index(bad)
            raise UnsupportedParameter(f"{path or 'net'}: layer {bad!r} (type {net.layer_types[i]}) "
                                       f"only works at the batch it was built for, so it cannot be "
                                       f"exported with a dynamic batch; leave it out (without "
                                       f"--keep-losses) or use --output-blob")
        if err is not None:
            raise UnsupportedParameter(f"{path or 'net'}: onnxruntime cannot run the exported graph: "
                                       f"{str(err)[:300]}") from err
    feed = random_inputs(net, seed, batch=check_batch)   # what check_onnx ran on
    report = OnnxReport(os.fspath(out), opset, shapes, checks, rtol,
                        verdict, ops=op_counts(data), slack=slack, dropped=dropped,
                        input_text=describe_inputs(feed, input_laws(net), seed))
    if report.ok or write_on_mismatch:
        with atomic_output(os.fspath(out)) as f:
            f.write(data)
        report.written, report.nbytes = True, len(data)
    return report


__all__ = ["export_net", "export_onnx_file", "batch_dependent_layer", "check_onnx", "onnx_friendly", "op_counts",
           "OnnxReport", "OutputCheck", "MIN_OPSET", "DEFAULT_OPSET"]
