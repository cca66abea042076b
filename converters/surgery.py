"""Weight surgery: rename / drop / re-initialise layers, fold preprocessing and BatchNorm.

* ``rename_layers``, ``drop_layers``, ``reinit_layers`` work on a
  ``convert.WeightSet`` (what ``caffekt convert --rename/--drop/--reinit`` do).
* ``fold_input_preprocessing``: Caffe's input transform (data_transformer.cpp:
  ``x_c = (P_c - mean_c) * scale``, P a 0-255 pixel in BGR order) is folded into
  conv1, so the model takes torchvision input ``z = (p - m) / s`` (RGB, p in
  0-1).  Exact wherever conv1's window lies inside the image: zero padding in
  z space is the pixel value ``m``, not Caffe's mean, so outputs whose window
  touches the padding differ.
* ``fold_batchnorm``: a Convolution/InnerProduct followed by BatchNorm (global
  statistics, batch_norm_layer.cpp) and optionally Scale (scale_layer.cpp)
  becomes one layer: ``W' = W * g / sqrt(v + eps)``, ``b' = (b - mu) * g /
  sqrt(v + eps) + beta`` with ``mu, v`` the stored sums divided by the stored
  scale factor.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import ShapeError, UnsupportedParameter

from .convert import LayerWeights, WeightSet

IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
# The BVLC ImageNet mean per channel (BGR), as in Caffe's examples and Fast R-CNN's
# PIXEL_MEANS (102.9801, 115.9465, 122.7717).
CAFFE_MEAN_BGR = (104.0, 117.0, 123.0)


def _copy(ws: Sequence[LayerWeights]) -> WeightSet:
    out = WeightSet(LayerWeights(lw.name, lw.type, list(lw.blobs)) for lw in ws)
    out.source = getattr(ws, "source", None)
    return out


def _need(ws: Sequence[LayerWeights], names: Sequence[str], what: str) -> None:
    have = {lw.name for lw in ws}
    missing = [n for n in names if n not in have]
    if missing:
        raise UnsupportedParameter(f"{what}: no weight layer named {', '.join(map(repr, missing))} "
                                   f"(weight layers: {', '.join(lw.name for lw in ws)})")


def rename_layers(ws: Sequence[LayerWeights], mapping: Mapping[str, str]) -> WeightSet:
    """Layers renamed by ``mapping`` (old -> new); refuses unknown names and collisions."""
    _need(ws, list(mapping), "--rename")
    out = _copy(ws)
    for lw in out:
        lw.name = mapping.get(lw.name, lw.name)
    names = [lw.name for lw in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise UnsupportedParameter(f"--rename: the result has layer name(s) {dup} twice")
    return out


def drop_layers(ws: Sequence[LayerWeights], names: Sequence[str]) -> WeightSet:
    """Layers without those named (each must exist)."""
    _need(ws, names, "--drop")
    out = WeightSet(lw for lw in _copy(ws) if lw.name not in set(names))
    out.source = getattr(ws, "source", None)
    return out


@dataclass
class ReinitSpec:
    """``LAYER:FILLER[:ARG[:BIAS]]``: weight filler (gaussian std / constant value /
    uniform half-width / xavier / msra) and a constant bias (default 0)."""

    layer: str
    filler: str
    arg: Optional[float] = None
    bias: float = 0.0

    def filler_param(self):
        from caffe_compat.proto import caffe_pb2
        fp = caffe_pb2.FillerParameter(type=self.filler)
        if self.arg is not None:
            if self.filler == "gaussian":
                fp.std = self.arg
            elif self.filler == "constant":
                fp.value = self.arg
            elif self.filler == "uniform":
                fp.min, fp.max = -self.arg, self.arg
            else:
                raise UnsupportedParameter(f"--reinit {self.layer}: filler {self.filler!r} takes "
                                           f"no argument (got {self.arg:g})")
        return fp


_FILLERS = ("gaussian", "constant", "uniform", "xavier", "msra")


def parse_reinit(text: str) -> ReinitSpec:
    """``fc7:gaussian:0.005`` -> ReinitSpec('fc7', 'gaussian', 0.005, 0.0)."""
    # layer names may hold ':'; the filler name anchors the split
    m = re.match(r"^(?P<layer>.+?):(?P<f>" + "|".join(_FILLERS) + r")(?::(?P<a>[^:]*))?(?::(?P<b>[^:]*))?$",
                 text)
    if not m:
        raise UnsupportedParameter(f"--reinit {text!r}: expected LAYER:FILLER[:ARG[:BIAS]] with "
                                   f"FILLER one of {', '.join(_FILLERS)}")
    try:
        arg = float(m["a"]) if m["a"] not in (None, "") else None
        bias = float(m["b"]) if m["b"] not in (None, "") else 0.0
    except ValueError:
        raise UnsupportedParameter(f"--reinit {text!r}: ARG and BIAS must be numbers") from None
    return ReinitSpec(m["layer"], m["f"], arg, bias)


def fill_blob(shape: Sequence[int], filler, layer: str) -> np.ndarray:
    """A new float32 array of ``shape`` filled by Caffe's filler ``filler`` (torch's RNG)."""
    import torch

    from caffe_compat.layers.fillers import fill
    t = torch.empty(tuple(int(d) for d in shape), dtype=torch.float32)
    fill(t, filler, layer_name=layer)
    return t.numpy()


def reinit_layers(ws: Sequence[LayerWeights], specs: Sequence[ReinitSpec]) -> WeightSet:
    """Blob 0 refilled by the spec's filler, blob 1 (if any) set to its bias; shapes kept."""
    _need(ws, [s.layer for s in specs], "--reinit")
    out = _copy(ws)
    by = {s.layer: s for s in specs}
    for lw in out:
        s = by.get(lw.name)
        if s is None:
            continue
        if not lw.blobs:
            raise UnsupportedParameter(f"--reinit {lw.name}: the layer has no blobs")
        new = [fill_blob(lw.blobs[0].shape, s.filler_param(), lw.name)]
        if len(lw.blobs) > 1:
            new.append(np.full(lw.blobs[1].shape, s.bias, dtype=np.float32))
        if len(lw.blobs) > 2:
            raise UnsupportedParameter(f"--reinit {lw.name}: {len(lw.blobs)} blobs; only "
                                       f"weight (+ bias) layers can be re-initialised")
        lw.blobs = new
    return out


# ------------------------------------------------------------------ preprocessing

def fold_input_preprocessing(weight: np.ndarray, bias: np.ndarray,
                             caffe_mean: Sequence[float] = CAFFE_MEAN_BGR, caffe_scale: float = 1.0,
                             caffe_bgr: bool = True, pixel_range: float = 255.0,
                             target_mean: Sequence[float] = IMAGENET_MEAN_RGB,
                             target_std: Sequence[float] = IMAGENET_STD_RGB
                             ) -> Tuple[np.ndarray, np.ndarray]:
    """conv1 (W, b) for Caffe input -> (W', b') for torchvision input.

    Caffe feeds ``x_c = (R * p_r - mean_c) * scale`` with r the RGB channel
    of Caffe's channel c (c = 2 - r for BGR) and R = ``pixel_range``; the
    torchvision input is ``z_r = (p_r - m_r) / s_r``.  Substituting
    ``p_r = s_r z_r + m_r``: ``W'[:, r] = W[:, c] * scale * R * s_r`` and
    ``b' = b + sum_{c, kernel} W[:, c] * scale * (R * m_r - mean_c)``.
    Computed in float64, stored as float32.
    """
    w = np.asarray(weight, dtype=np.float64)
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    if w.ndim < 2 or w.shape[1] != 3:
        raise ShapeError(f"conv1 weight must take 3 input channels (shape (out, 3, ...)); got "
                         f"{tuple(w.shape)} (a grouped or non-RGB first layer cannot be folded)")
    if len(caffe_mean) != 3 or len(target_mean) != 3 or len(target_std) != 3:
        raise UnsupportedParameter("means and stds must have 3 values (per channel); a per-pixel "
                                   "mean image cannot be folded into a convolution")
    order = [2, 1, 0] if caffe_bgr else [0, 1, 2]   # Caffe channel c holds RGB channel order[c]
    m = np.asarray(target_mean, dtype=np.float64)
    s = np.asarray(target_std, dtype=np.float64)
    mean = np.asarray(caffe_mean, dtype=np.float64)
    w_new = np.empty_like(w)
    shift = np.zeros(w.shape[0], dtype=np.float64)
    for c in range(3):
        r = order[c]
        w_new[:, r] = w[:, c] * caffe_scale * pixel_range * s[r]
        shift += w[:, c].reshape(w.shape[0], -1).sum(axis=1) * caffe_scale * (pixel_range * m[r] - mean[c])
    return w_new.astype(np.float32), (b + shift).astype(np.float32)


# ------------------------------------------------------------------ BatchNorm folding

def _bn_stats(blobs: Sequence[np.ndarray], eps: float) -> Tuple[np.ndarray, np.ndarray]:
    s = float(np.asarray(blobs[2]).reshape(-1)[0])
    f = 0.0 if s == 0 else 1.0 / s
    mean = f * np.asarray(blobs[0], dtype=np.float64).reshape(-1)
    var = f * np.asarray(blobs[1], dtype=np.float64).reshape(-1)
    return mean, 1.0 / np.sqrt(var + eps)


def fold_bn_into(weight: np.ndarray, bias: Optional[np.ndarray], bn_blobs: Sequence[np.ndarray],
                 eps: float = 1e-5, scale_blobs: Sequence[np.ndarray] = ()) -> Tuple[np.ndarray, np.ndarray]:
    """(W', b') of one layer followed by BatchNorm (global stats) and an optional Scale."""
    w = np.asarray(weight, dtype=np.float64)
    n = w.shape[0]
    b = np.zeros(n) if bias is None else np.asarray(bias, dtype=np.float64).reshape(-1)
    mean, inv = _bn_stats(bn_blobs, eps)
    if mean.size != n:
        raise ShapeError(f"BatchNorm has {mean.size} channels, the layer before it {n} outputs")
    gamma = np.ones(n) if not len(scale_blobs) else np.asarray(scale_blobs[0], np.float64).reshape(-1)
    beta = np.zeros(n) if len(scale_blobs) < 2 else np.asarray(scale_blobs[1], np.float64).reshape(-1)
    if gamma.size != n or beta.size != n:
        raise ShapeError(f"Scale has {gamma.size} factors / {beta.size} biases for {n} channels")
    k = gamma * inv
    w_new = w * k.reshape((n,) + (1,) * (w.ndim - 1))
    b_new = (b - mean) * k + beta
    return w_new.astype(np.float32), b_new.astype(np.float32)


def fold_batchnorm(param, ws: Sequence[LayerWeights]):
    """(NetParameter, WeightSet, folded [(layer, bn, scale or None)]) with BN/Scale merged.

    A BatchNorm is folded when it reads the top of a Convolution/InnerProduct
    directly, uses global statistics, and no other layer reads that top
    before it; a Scale (single bottom) reading the BatchNorm's top is folded
    too.  The merged layer writes the last folded layer's top.
    """
    from caffe_compat.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    net.CopyFrom(param)
    weights = {lw.name: lw for lw in _copy(ws)}
    layers = list(net.layer)
    drop, folded = set(), []
    for i, lp in enumerate(layers):
        if lp.type not in ("Convolution", "InnerProduct") or len(lp.top) != 1:
            continue
        top = lp.top[0]
        j = next((j for j in range(i + 1, len(layers)) if top in layers[j].bottom), None)
        if j is None or layers[j].type != "BatchNorm":
            continue
        bn = layers[j]
        if bn.batch_norm_param.HasField("use_global_stats") and not bn.batch_norm_param.use_global_stats:
            continue  # batch statistics: not a fixed affine map
        if lp.name not in weights or bn.name not in weights:
            raise UnsupportedParameter(f"cannot fold BatchNorm {bn.name!r} into {lp.name!r}: "
                                       f"the weights lack one of them")
        if bn.top[0] != top and any(top in layers[x].bottom for x in range(j + 1, len(layers))):
            continue  # the un-normalised blob is read again later: keep it
        end, scale = bn, None
        k = next((k for k in range(j + 1, len(layers)) if bn.top[0] in layers[k].bottom), None)
        if k is not None and layers[k].type == "Scale" and len(layers[k].bottom) == 1:
            scale = layers[k]
            end = scale
        cw = weights[lp.name].blobs
        has_bias = (lp.convolution_param.bias_term if lp.type == "Convolution"
                    else lp.inner_product_param.bias_term)
        w_new, b_new = fold_bn_into(cw[0], cw[1] if has_bias else None, weights[bn.name].blobs,
                                    float(bn.batch_norm_param.eps),
                                    weights[scale.name].blobs if scale is not None else ())
        weights[lp.name].blobs = [w_new.reshape(np.asarray(cw[0]).shape), b_new]
        sub = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
        sub.bias_term = True
        lp.top[0] = end.top[0]
        drop.update({bn.name} | ({scale.name} if scale is not None else set()))
        folded.append((lp.name, bn.name, scale.name if scale is not None else None))
    kept = [lp for lp in layers if lp.name not in drop]
    del net.layer[:]
    net.layer.extend(kept)
    out = WeightSet(lw for name, lw in weights.items() if name not in drop)
    out.source = getattr(ws, "source", None)
    return net, out, folded


__all__ = ["rename_layers", "drop_layers", "reinit_layers", "parse_reinit", "ReinitSpec",
           "fill_blob", "fold_input_preprocessing", "fold_bn_into", "fold_batchnorm",
           "IMAGENET_MEAN_RGB", "IMAGENET_STD_RGB", "CAFFE_MEAN_BGR"]


@dataclass
class ConvertResult:
    """What ``convert_file`` wrote: ``weights`` (the layers written, or None for torchvision keys),
    ``folded`` (conv, bn, scale) triples, ``tensors`` (torchvision output: tensor count), ``nbytes``."""
    weights: Optional[WeightSet]
    folded: list
    tensors: int
    nbytes: int


def convert_file(src: str, dst: str, *, prototxt: Optional[str] = None, rename: Optional[Mapping[str, str]] = None,
                 drop: Sequence[str] = (), reinit: Sequence[str] = (), seed: int = 0, fold_bn: bool = False,
                 prototxt_output: Optional[str] = None, fold_preprocessing: Optional[str] = None,
                 caffe_mean: Sequence[float] = (104.0, 117.0, 123.0), caffe_scale: float = 1.0,
                 torchvision: Optional[str] = None) -> ConvertResult:
    """``caffekt convert``: read ``src``, then in order rename, drop, reinit (``LAYER:FILLER[:ARG[:BIAS]]``,
    seeded), fold BatchNorm (needs ``prototxt``; the folded net goes to ``prototxt_output``), fold
    Caffe's input preprocessing into ``fold_preprocessing``, and write ``dst`` (format from its
    extension; ``torchvision="vgg16"``: torchvision's state_dict keys).  A caffemodel output is the
    full net when a prototxt still matches the weights, else weights-only."""
    from .convert import read_weights, to_torchvision_vgg16, write_tensors, write_weights

    ws = read_weights(src)
    if rename:
        ws = rename_layers(ws, rename)
    if drop:
        ws = drop_layers(ws, list(drop))
    if reinit:
        import torch
        torch.manual_seed(seed)
        ws = reinit_layers(ws, [parse_reinit(s) for s in reinit])
    folded: list = []
    if fold_bn:
        if not prototxt:
            raise UnsupportedParameter("--fold-bn needs --prototxt (which layers follow which)")
        from caffe_compat.io import read_net
        from caffe_compat.prototxt import write_prototxt
        net, ws, folded = fold_batchnorm(read_net(prototxt), ws)
        if prototxt_output:
            write_prototxt(net, prototxt_output)
        prototxt = prototxt_output   # without it the original net no longer matches the weights
    if fold_preprocessing:
        lw = ws.get(fold_preprocessing)
        if lw is None:
            raise UnsupportedParameter(f"--fold-preprocessing: no weight layer {fold_preprocessing!r}")
        lw.blobs = list(fold_input_preprocessing(lw.blobs[0], lw.blobs[1], list(caffe_mean), caffe_scale))
    if torchvision:
        if dst.lower().endswith(".caffemodel"):
            raise UnsupportedParameter("--torchvision writes torchvision keys: use a .safetensors or .pt output")
        sd = to_torchvision_vgg16(ws)
        return ConvertResult(None, folded, len(sd), write_tensors(dst, sd))
    n = write_weights(dst, ws, prototxt)
    return ConvertResult(ws, folded, sum(len(lw.blobs) for lw in ws), n)
