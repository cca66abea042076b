"""Data-dependent rescaling (Kraehenbuehl et al., ICLR 2016) of exported weights.

The procedure of ``philkr/magic_init`` (magic_init.py), re-implemented on a
caffekt ``Net``:

* **Within-layer** (magic_init's ``initializeLayer``): for each selected
  Convolution / InnerProduct layer, in forward order, the per-output-channel
  mean mu and std sigma (population std, over images and positions) of the
  layer's own top -- the pre-activation, before an in-place ReLU -- are
  measured on the sample images, then ``W <- W / sigma`` and
  ``b <- (b - mu) / sigma + beta``, so every channel has mean ``beta`` and
  unit std on that data.  Layers are done one after another, so a later
  layer is measured on the already rescaled earlier ones.  (magic_init zeroes
  and re-draws a new layer first, so its bias is ``-mu/sigma + beta``; here
  the export's fill is kept and its bias carried along.  ``beta`` defaults to
  0 -- magic_init's function default; its command line uses ``--bias 0.1``.)
  A channel whose pre-activation is constant (sigma 0) only gets its mean
  moved to ``beta``; such channels are counted in the report.
* **Between-layer** (magic_init's ``calibrateGradientRatio``): Gaussian
  N(0, 1) top gradients on the net's output are back-propagated; per layer
  ``r_k = sqrt(mean(dW^2) / mean(W^2))``; the target ``t`` is the geometric
  mean of the ``r_k``, times ``output_std ** (1/L)`` as magic_init does
  (``match_output_std``; output_std = mean per-channel std of the output
  blob), which pulls the output's std towards 1 over the iterations.  Going
  forward, each layer's bias is first multiplied by the change of its input's
  mean absolute value (the earlier layers' scaling carried along), then its
  weights and bias by ``s_k = sqrt(r_k / t)``.  Repeated until every
  ``r_k`` is within ``tol`` (1%) of ``t`` or ``max_iter`` (10) rounds.
  Unlike magic_init, every round back-propagates the same draws (from
  ``seed``): a fresh draw moves the ratios by several percent on a few
  dozen images, so the rounds would chase sampling noise and never settle.
  In a positively homogeneous net (Convolution, InnerProduct, ReLU, max
  pooling, ROI pooling, test-time Dropout: no LRN, no sigmoid) each blob is
  then its old value times the product of the ``s`` of the layers before
  it: the function is kept up to one positive factor, ``output_scale`` =
  prod(s_k), which is exactly 1 without ``match_output_std``.

The net that is measured is the target's deploy form (``deploy_form``)
without its heads: the learnable layers whose output reaches no other
learnable layer (Fast R-CNN's cls_score and bbox_pred) and what depends on
them are dropped, so the trunk ends at fc7 (after relu7 / drop7).  Every
learnable trunk layer takes part in the between-layer calibration, frozen
ones (``lr_mult: 0``) included.

Images: read like ImageData does (``cv2.imread`` colour, BGR) and warped to
``size`` x ``size`` (INTER_LINEAR) so they batch -- Fast R-CNN itself keeps
the aspect ratio (shorter side 600), which matters little for channel
statistics -- then the Fast R-CNN pixel means (BGR 102.9801, 115.9465,
122.7717, from its config.py) are subtracted on the 0-255 scale.  A ``rois``
input gets one whole-image ROI per image.  Every image is read before any
weight changes, and an unreadable one is a ``CaffeFormatError`` naming it.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from caffe_compat.errors import CaffeFormatError, UnsupportedParameter

FRCNN_PIXEL_MEANS = (102.9801, 115.9465, 122.7717)  # BGR, fast_rcnn/config.py __C.PIXEL_MEANS
MODES = ("within", "between", "both")
PARAM_TYPES = ("Convolution", "InnerProduct")
from .deploy_form import DEFAULT_DATA_SIDE as _DEFAULT_DATA
from .deploy_form import deploy_form


# ------------------------------------------------------------------ images

def list_images(spec: Union[str, Sequence[str]]) -> List[str]:
    """Image paths from a folder (recursive, sorted), a list file or a sequence of paths.

    A list file holds one path per line, relative to the list's folder unless
    absolute; a trailing `` <integer>`` (an ImageData label) is dropped
    unless the whole line names an existing file.
    """
    from caffe_compat.data.sources import list_image_paths

    if not isinstance(spec, (str, os.PathLike)):
        paths = [os.fspath(p) for p in spec]
        if not paths:
            raise CaffeFormatError("no images to rescale on", "the image list given")
        return paths
    try:
        return list_image_paths(spec)
    except CaffeFormatError as e:
        if "no image files" in e.detail or "is empty" in e.detail:
            raise CaffeFormatError("no images to rescale on", os.fspath(spec)) from None
        raise


def load_images(paths: Sequence[str], size: int,
                means: Sequence[float] = FRCNN_PIXEL_MEANS) -> np.ndarray:
    """N x 3 x size x size float32: BGR pixels (0-255) warped to size x size, minus ``means``."""
    from caffe_compat.data.sources import read_image
    from caffe_compat.data.transformer import DataTransformer

    if size <= 0:
        raise UnsupportedParameter(f"rescale image size must be > 0, got {size}")
    imgs = np.empty((len(paths), size, size, 3), np.uint8)
    for i, p in enumerate(paths):
        imgs[i] = read_image(p, True, size, size)
    return DataTransformer({"mean_value": [float(m) for m in means]}, "TEST").transform_batch(imgs)


# ------------------------------------------------------------------ the nets

def trunk_form(deploy) -> Tuple[object, List[str], List[str]]:
    """(deploy without its heads, trunk learnable layers, head learnable layers).

    A head is a learnable layer whose output reaches no other learnable
    layer; it and every layer depending on it are dropped.
    """
    from caffe_compat.proto import caffe_pb2

    layers = list(deploy.layer)
    learn = [i for i, lp in enumerate(layers) if lp.type in PARAM_TYPES]
    reaches: List[bool] = [False] * len(layers)
    # backwards: a layer reaches a learnable layer when a later reader of its tops is one or reaches one
    for i in range(len(layers) - 1, -1, -1):
        tops = set(layers[i].top)
        for j in range(i + 1, len(layers)):
            if tops & set(layers[j].bottom) and (j in learn or reaches[j]):
                reaches[i] = True
                break
    heads = [layers[i].name for i in learn if not reaches[i]]
    trunk = [layers[i].name for i in learn if reaches[i]]
    dead: set = set()
    net = caffe_pb2.NetParameter(name=deploy.name)
    for lp in layers:
        if lp.name in heads or any(b in dead for b in lp.bottom):
            dead.update(lp.top)
            continue
        net.layer.add().CopyFrom(lp)
    return net, trunk, heads


# ------------------------------------------------------------------ measurement helpers

def _run_to_layer(net, layer: str, hook, batches, pre: bool) -> None:
    """Forward each batch only as far as ``layer``: ``hook`` sees its inputs (pre) or output, then raises ``_Stop``."""
    import torch

    m = net.layer(layer)
    h = m.register_forward_pre_hook(hook) if pre else m.register_forward_hook(hook)
    try:
        with torch.no_grad():
            for b in batches:
                try:
                    net(**b)
                except _Stop:
                    pass
    finally:
        h.remove()


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the blob wanted is seen."""


def _channel_stats(x) -> Tuple[np.ndarray, np.ndarray, int]:
    # per-channel sum and sum of squares (float64) over every axis except 1
    x = x.detach().double().transpose(0, 1).reshape(x.shape[1], -1)
    return x.sum(1).numpy(), (x * x).sum(1).numpy(), int(x.shape[1])


def _top_stats(net, layer: str, batches) -> Tuple[np.ndarray, np.ndarray]:
    """(mean, std) per channel of ``layer``'s own top over all batches."""
    acc: List = [0.0, 0.0, 0]

    def hook(_m, _inp, out):
        s, q, n = _channel_stats(out[0] if isinstance(out, tuple) else out)
        acc[0] = acc[0] + s
        acc[1] = acc[1] + q
        acc[2] += n
        raise _Stop

    _run_to_layer(net, layer, hook, batches, pre=False)
    mean = acc[0] / acc[2]
    var = np.maximum(acc[1] / acc[2] - mean * mean, 0.0)
    return mean, np.sqrt(var)


def _bottom_scale(net, layer: str, batches) -> float:
    """Mean over bottoms of mean |bottom| of ``layer`` (magic_init's input scale), all batches."""
    tot: List = [0.0, 0]

    def hook(_m, inputs):
        tot[0] += float(np.mean([t.detach().abs().double().mean().item() for t in inputs]))
        tot[1] += 1
        raise _Stop

    _run_to_layer(net, layer, hook, batches, pre=True)
    return tot[0] / tot[1]


def _output_std(net, out_name: str, batches) -> float:
    import torch
    with torch.no_grad():
        ys = [net(**b)[out_name] for b in batches]
    y = torch.cat([t.detach().double() for t in ys])
    y = y.transpose(0, 1).reshape(y.shape[1], -1)
    return float(y.std(1, unbiased=False).mean())


def gradient_ratios(net, layers: Sequence[str], out_name: str, batches, seed: int = 0) -> Dict[str, float]:
    """r_k = sqrt(mean(dW^2) / mean(W^2)) after back-propagating N(0, 1) top gradients.

    One Gaussian draw (from ``seed``) per batch, on the output blob
    ``out_name``; gradients of all batches add up.
    """
    import torch
    params = net.params
    for name in layers:
        for p in params[name]:
            p.grad = None
    g = torch.Generator().manual_seed(int(seed))
    for b in batches:
        y = net(**b)[out_name]
        top = torch.randn(y.shape, generator=g, dtype=y.dtype)
        (y * top).sum().backward()
    out = {}
    for name in layers:
        w = params[name][0]
        dw = w.grad if w.grad is not None else torch.zeros_like(w)
        out[name] = math.sqrt(float(dw.double().pow(2).mean()) / float(w.detach().double().pow(2).mean()))
    return out


# ------------------------------------------------------------------ the two procedures

def within_layer(net, layers: Sequence[str], batches, beta: float = 0.0) -> Dict[str, int]:
    """Rescale ``layers`` of ``net`` in place, in net order; returns constant channels per layer."""
    import torch
    params = net.params
    order = [n for n in net.layer_names if n in set(layers)]
    constant: Dict[str, int] = {}
    for name in order:
        mean, std = _top_stats(net, name, batches)
        flat = std <= 1e-12 * max(1.0, float(np.abs(mean).max()))
        sigma = np.where(flat, 1.0, std)
        constant[name] = int(flat.sum())
        ps = params[name]
        with torch.no_grad():
            w = ps[0].double()
            ps[0].copy_(w / torch.from_numpy(sigma).reshape((-1,) + (1,) * (w.dim() - 1)))
            if len(ps) > 1:
                b = ps[1].double().reshape(-1).numpy()
                ps[1].copy_(torch.from_numpy((b - mean) / sigma + beta).reshape(ps[1].shape))
            else:
                raise UnsupportedParameter(f"layer {name!r} has no bias (bias_term: false): within-layer "
                                           f"rescaling needs one to move its mean")
    return constant


@dataclass
class BetweenResult:
    iterations: int = 0
    converged: bool = False
    ratios_before: Dict[str, float] = field(default_factory=dict)
    ratios_after: Dict[str, float] = field(default_factory=dict)
    scales: Dict[str, float] = field(default_factory=dict)   # total factor applied to each layer's W
    output_scale: float = 1.0                                 # product of the per-round s_k
    output_std: Tuple[float, float] = (0.0, 0.0)              # before, after


def between_layer(net, layers: Sequence[str], out_name: str, batches, max_iter: int = 10,
                  tol: float = 0.01, match_output_std: bool = True, seed: int = 0) -> BetweenResult:
    """Equalise the gradient-to-weight ratios of ``layers`` in place; see the module doc."""
    import torch
    params = net.params
    order = [n for n in net.layer_names if n in set(layers)]
    for name in order:
        for p in params[name]:
            p.requires_grad_(True)
    res = BetweenResult(scales={n: 1.0 for n in order})
    in_scale = {n: _bottom_scale(net, n, batches) for n in order}
    out_std = _output_std(net, out_name, batches)
    res.output_std = (out_std, out_std)
    for it in range(max_iter + 1):
        ratio = gradient_ratios(net, order, out_name, batches, seed)
        if it == 0:
            res.ratios_before = dict(ratio)
        res.ratios_after = dict(ratio)
        logs = np.log(np.array([ratio[n] for n in order]))
        target = math.exp(float(logs.mean()))
        if match_output_std:
            target *= out_std ** (1.0 / len(order))
        if all(abs(ratio[n] / target - 1.0) <= tol for n in order) or it == max_iter:
            res.converged = all(abs(ratio[n] / target - 1.0) <= tol for n in order)
            break
        res.iterations += 1
        for name in order:
            now = _bottom_scale(net, name, batches)
            s = math.sqrt(ratio[name] / target)
            ps = params[name]
            with torch.no_grad():
                for p in ps[1:]:
                    p.mul_(now / in_scale[name])     # the earlier layers' change, carried into the bias
                for p in ps:
                    p.mul_(s)
            in_scale[name] = now
            res.scales[name] *= s
            res.output_scale *= s
        out_std = _output_std(net, out_name, batches)
        res.output_std = (res.output_std[0], out_std)
    for name in order:
        for p in params[name]:
            p.grad = None
    return res


# ------------------------------------------------------------------ on an export

@dataclass
class RescaleReport:
    """What ``rescale_blobs`` did."""

    mode: str
    images: int
    size: int
    within: List[str] = field(default_factory=list)
    beta: float = 0.0
    constant_channels: Dict[str, int] = field(default_factory=dict)
    between: Optional[BetweenResult] = None
    trunk: List[str] = field(default_factory=list)
    heads: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"rescaled ({self.mode}, Kraehenbuehl et al.) on {self.images} images at "
                 f"{self.size}x{self.size}; trunk {', '.join(self.trunk)}; heads left as filled: "
                 f"{', '.join(self.heads) or '-'}"]
        if self.mode in ("within", "both"):
            lines.append(f"within-layer (mean {self.beta:g}, std 1): {', '.join(self.within) or 'no layer selected'}")
            flat = {k: v for k, v in self.constant_channels.items() if v}
            if flat:
                lines.append("constant channels (std 0, only shifted): " +
                             ", ".join(f"{k} {v}" for k, v in flat.items()))
        b = self.between
        if b is not None:
            lines.append(f"between-layer: {b.iterations} round(s), "
                         f"{'converged' if b.converged else 'NOT converged'}; output scale {b.output_scale:.4g}; "
                         f"output std {b.output_std[0]:.4g} -> {b.output_std[1]:.4g}")
            lines.append("  ratio before -> after: " + ", ".join(
                f"{k} {b.ratios_before[k]:.3g}->{b.ratios_after[k]:.3g}" for k in b.ratios_before))
        return "\n".join(lines)


def rescale_net(param, path: Optional[str] = None, input_shapes=None):
    """(caffekt Net of the target's trunk in TEST phase, trunk layers, head layers, output blob)."""
    from caffe_compat.net import Net

    trunk_param, trunk, heads = trunk_form(deploy_form(param, path, input_shapes))
    if not trunk:
        raise UnsupportedParameter("the target has no learnable layer feeding another one: nothing to rescale")
    net = Net(trunk_param, phase="TEST", path=path)
    bad = [n for n in net.inputs if n not in ("data", "rois")]
    if bad or "data" not in net.inputs:
        raise UnsupportedParameter(f"rescaling feeds the inputs 'data' (and 'rois'); the target's trunk "
                                   f"reads {net.inputs}")
    last = trunk[-1]
    out = net.top_names[last][0]
    if out not in net.outputs:
        raise UnsupportedParameter(f"the trunk's last learnable layer {last!r} writes {out!r}, which is "
                                   f"not a net output ({net.outputs})")
    return net, trunk, heads, out


def _batches(x: np.ndarray, has_rois: bool, batch_size: int):
    import torch
    s = x.shape[-1]
    out = []
    for i in range(0, len(x), batch_size):
        d = torch.from_numpy(np.ascontiguousarray(x[i:i + batch_size]))
        b = {"data": d}
        if has_rois:
            n = d.shape[0]
            rois = torch.zeros((n, 5), dtype=torch.float32)
            rois[:, 0] = torch.arange(n, dtype=torch.float32)
            rois[:, 3:] = s - 1
            b["rois"] = rois
        out.append(b)
    return out


def input_size(param, path: Optional[str] = None) -> int:
    """The height of the deploy form's ``data`` (the default rescale image size)."""
    for lp in deploy_form(param, path).layer:
        if lp.type == "Input" and "data" in lp.top:
            dims = list(lp.input_param.shape[list(lp.top).index("data")].dim)
            if len(dims) == 4 and dims[2] > 0:
                return int(dims[2])
    return _DEFAULT_DATA


def rescale_blobs(param, blobs: "Dict[str, List[np.ndarray]]", images: Union[str, Sequence[str]],
                  mode: str = "both", layers: Union[str, Sequence[str]] = "initialised",
                  initialised: Sequence[str] = (), beta: float = 0.0, size: Optional[int] = None,
                  batch_size: int = 16, max_images: Optional[int] = None, max_iter: int = 10,
                  tol: float = 0.01, match_output_std: bool = True, seed: int = 0,
                  path: Optional[str] = None) -> RescaleReport:
    """Rescale ``blobs`` (layer -> arrays, as the export writes them) of target ``param`` in place.

    ``layers`` picks the within-layer ones: ``"initialised"`` (those named
    in ``initialised``), ``"all"`` or a list of names; heads are never
    within-rescaled.  Nothing in ``blobs`` changes unless every image reads.
    """
    import torch

    if mode not in MODES:
        raise UnsupportedParameter(f"rescale mode must be one of {', '.join(MODES)}, got {mode!r}")
    if batch_size <= 0 or max_iter < 0 or tol <= 0:
        raise UnsupportedParameter("rescale needs batch_size > 0, max_iter >= 0 and tol > 0")
    paths = list_images(images)
    if max_images is not None:
        paths = paths[:max_images]
    size = int(size or input_size(param, path))
    x = load_images(paths, size)
    net, trunk, heads, out_name = rescale_net(param, path,
                                              {"data": (batch_size, 3, size, size), "rois": (batch_size, 5)})
    if isinstance(layers, str) and layers not in ("all", "initialised"):
        layers = [s for s in layers.split(",") if s]
    if layers == "all":
        chosen = list(trunk)
    elif layers == "initialised":
        chosen = [n for n in trunk if n in set(initialised)]
    else:
        unknown = [n for n in layers if n not in trunk]
        if unknown:
            raise UnsupportedParameter(f"--rescale-layers {unknown}: not learnable trunk layers of the "
                                       f"target (its trunk: {', '.join(trunk)})")
        chosen = [n for n in trunk if n in set(layers)]
    missing = [n for n in trunk if n not in blobs]
    if missing:
        raise UnsupportedParameter(f"no blobs for trunk layer(s) {missing}")
    params = net.params
    with torch.no_grad():
        for name in trunk:
            for p, a in zip(params[name], blobs[name]):
                p.copy_(torch.from_numpy(np.array(a, np.float32)).reshape(p.shape))
    batches = _batches(x, "rois" in net.inputs, batch_size)
    rep = RescaleReport(mode, len(paths), size, beta=float(beta), trunk=trunk, heads=heads)
    if mode in ("within", "both"):
        rep.within = chosen
        rep.constant_channels = within_layer(net, chosen, batches, beta)
    if mode in ("between", "both"):
        rep.between = between_layer(net, trunk, out_name, batches, max_iter, tol, match_output_std, seed)
    for name in trunk:
        blobs[name] = [p.detach().numpy().astype(np.float32).reshape(np.shape(a))
                       for p, a in zip(params[name], blobs[name])]
    return rep


__all__ = ["rescale_blobs", "within_layer", "between_layer", "gradient_ratios", "trunk_form", "rescale_net", "list_images", "load_images", "input_size", "RescaleReport",
           "BetweenResult", "FRCNN_PIXEL_MEANS", "MODES"]
