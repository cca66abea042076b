"""Caffe weights <-> safetensors / PyTorch ``state_dict`` files, bit for bit.

Naming scheme (both directions, documented for users)
------------------------------------------------------
Every blob of a caffemodel layer becomes one tensor keyed ``<layer>.<i>``,
where ``<layer>`` is the Caffe layer name as written and ``<i>`` the blob's
index in that layer (Caffe's order: ``conv1.0`` is conv1's weight, ``conv1.1``
its bias; a BatchNorm layer has ``.0`` mean sum, ``.1`` variance sum, ``.2``
scale factor).  The key is split at its *last* dot, so layer names that
contain dots survive.  On input the readable aliases ``<layer>.weight`` (= 0)
and ``<layer>.bias`` (= 1) are accepted too.  Shapes are kept exactly as the
caffemodel stores them (a legacy V1 InnerProduct weight stays 1x1xNxK), and
values are float32, so caffemodel -> safetensors -> caffemodel gives
byte-identical blobs.

safetensors files also carry ``__metadata__["caffekt.layers"]``: a JSON list
of ``[name, type, blob count]`` in caffemodel order, so layer order and types
come back.  ``.pt`` files are ``torch.save`` of a plain ``{key: tensor}``
dict (read back with ``torch.load(weights_only=True)``: nothing but tensors is
ever unpickled); their layer order is the dict order and types are unknown.

Reverse direction: with a prototxt, the written caffemodel is the full net
(every layer's parameters, as Caffe's snapshot writes it) with the blobs of
the named layers; every weight layer must exist in the prototxt.  Without
one, a *weights-only* caffemodel is written: one layer per weight layer with
its name, its type (when known) and its blobs.  That is all
``Net::CopyTrainedLayersFrom`` reads (it matches layers by name only), so
Caffe, OpenCV and caffekt load it into any net with those layer names.

Torchvision: ``torchvision_vgg16_keys`` maps Caffe VGG16 layer names to the
``torchvision.models.vgg16`` ``state_dict`` keys (a fixed table; torchvision
itself is never imported).
"""
from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import CaffeFormatError, ShapeError, UnsupportedParameter

METADATA_KEY = "caffekt.layers"
FORMATS = ("caffemodel", "safetensors", "pt")
_ALIASES = {"weight": 0, "bias": 1}


@dataclass
class LayerWeights:
    """One weight layer: Caffe name, type ('' when unknown) and blobs (float32 arrays)."""

    name: str
    type: str
    blobs: List[np.ndarray]


class WeightSet(list):
    """An ordered list of ``LayerWeights`` (caffemodel order), with lookup by name."""

    source: Optional[str] = None
    legacy: bool = False   # a V0/V1 caffemodel: blob shapes compare as Blob::ShapeEquals' legacy rule

    def names(self) -> List[str]:
        return [lw.name for lw in self]

    def get(self, name: str) -> Optional[LayerWeights]:
        for lw in self:
            if lw.name == name:
                return lw
        return None

    def as_dict(self) -> "OrderedDict[str, List[np.ndarray]]":
        """Layer name -> blobs (first layer of a name wins, as Caffe's loader)."""
        out: "OrderedDict[str, List[np.ndarray]]" = OrderedDict()
        for lw in self:
            out.setdefault(lw.name, lw.blobs)
        return out


def weight_format(path: str) -> str:
    """``caffemodel``, ``safetensors`` or ``pt`` from the file name (content for caffemodels)."""
    low = os.fspath(path).lower()
    if low.endswith(".safetensors"):
        return "safetensors"
    if low.endswith((".pt", ".pth")):
        return "pt"
    if low.endswith(".caffemodel"):
        return "caffemodel"
    if os.path.isfile(path):
        from caffe_compat.io import detect_kind
        if detect_kind(path) == "caffemodel":
            return "caffemodel"
    raise UnsupportedParameter(f"{path}: cannot tell the weight format from the name; "
                               f"use .caffemodel, .safetensors or .pt")


# ------------------------------------------------------------------ reading

def read_weights(path: str) -> WeightSet:
    """The weight layers of a caffemodel (upgraded V0/V1 included), safetensors or .pt file."""
    path = os.fspath(path)
    fmt = weight_format(path)
    if fmt == "caffemodel":
        from caffe_compat.io import read_caffemodel
        model = read_caffemodel(path)
        ws = WeightSet(LayerWeights(lb.name, lb.type, list(lb.blobs)) for lb in model.layers
                       if lb.blobs and lb.type not in ("Split", "SPLIT"))
        ws.legacy = model.format != "V2"
    elif fmt == "safetensors":
        ws = _read_safetensors(path)
    else:
        ws = _read_pt(path)
    ws.source = path
    return ws


def _key_parts(key: str, path: str) -> Tuple[str, int]:
    layer, dot, idx = key.rpartition(".")
    if not dot or not layer:
        raise CaffeFormatError(f"tensor key {key!r} is not '<layer>.<blob index>'", path)
    if idx in _ALIASES:
        return layer, _ALIASES[idx]
    if not idx.isdigit():
        raise CaffeFormatError(f"tensor key {key!r}: blob index {idx!r} is not an integer "
                               f"(nor 'weight'/'bias')", path)
    return layer, int(idx)


def _group(items: Iterable[Tuple[str, np.ndarray]], path: str,
           types: Mapping[str, str]) -> WeightSet:
    by_layer: "OrderedDict[str, Dict[int, np.ndarray]]" = OrderedDict()
    for key, arr in items:
        layer, i = _key_parts(key, path)
        slot = by_layer.setdefault(layer, {})
        if i in slot:
            raise CaffeFormatError(f"blob {i} of layer {layer!r} given twice (key {key!r})", path)
        slot[i] = arr
    ws = WeightSet()
    for layer, slots in by_layer.items():
        if sorted(slots) != list(range(len(slots))):
            raise CaffeFormatError(f"layer {layer!r} has blob indices {sorted(slots)}; expected "
                                   f"0..{len(slots) - 1} with none missing", path)
        ws.append(LayerWeights(layer, types.get(layer, ""), [slots[i] for i in range(len(slots))]))
    return ws


def _read_safetensors(path: str) -> WeightSet:
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(path, framework="numpy") as f:
            meta = f.metadata() or {}
            keys = list(f.keys())
            arrays = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise CaffeFormatError(f"not a readable safetensors file ({e})", path) from None
    for k, a in arrays.items():
        if a.dtype != np.float32:
            raise CaffeFormatError(f"tensor {k!r} has dtype {a.dtype}; caffemodel blobs are float32", path)
    order, types = keys, {}
    if METADATA_KEY in meta:
        try:
            layers = _layer_table(meta[METADATA_KEY], len(keys))
            order = [f"{n}.{i}" for n, _t, c in layers for i in range(int(c))]
            types = {n: str(t) for n, t, _c in layers}
        except (ValueError, TypeError, RecursionError) as e:
            raise CaffeFormatError(f"metadata {METADATA_KEY!r} is not a JSON list of "
                                   f"[name, type, count] ({e})", path) from None
        if sorted(order) != sorted(keys):
            raise CaffeFormatError(f"metadata {METADATA_KEY!r} names tensors "
                                   f"{sorted(set(order) ^ set(keys))[:5]} that the file does not "
                                   f"hold (or the other way round)", path)
    return _group(((k, arrays[k]) for k in order), path, types)


def _layer_table(text: str, n_tensors: int) -> list:
    """The metadata's [[name, type, count], ...], bounded: no deep nesting, counts that fit the file."""
    if len(text) > 64 * max(1, n_tensors) + 4096:
        raise ValueError(f"{len(text)} characters for {n_tensors} tensors")
    depth = most = 0
    for ch in text:   # json.loads recurses once per '[': refuse deep nesting before it does
        if ch in "[{":
            depth += 1
            most = max(most, depth)
            if most > 3:
                raise ValueError("nested deeper than [[name, type, count]]")
        elif ch in "]}":
            depth -= 1
    layers = json.loads(text)
    if not isinstance(layers, list) or not all(isinstance(e, list) and len(e) == 3 for e in layers):
        raise ValueError("not a list of 3-item lists")
    total = 0
    for _n, _t, c in layers:
        if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c <= n_tensors:
            raise ValueError(f"count {str(c)[:20]!r} is not an integer in [0, {n_tensors}]")
        total += c
    if total > n_tensors:
        raise ValueError(f"the counts add up to {total}, more than the {n_tensors} tensors held")
    return layers


def _read_pt(path: str) -> WeightSet:

    import torch
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # noqa: BLE001 - a damaged zip/pickle raises anything (KeyError, ...)
        raise CaffeFormatError(f"not a plain tensor state_dict (loaded with weights_only=True): "
                               f"{(str(e).splitlines() or [type(e).__name__])[0][:300]}", path) from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CaffeFormatError("expected a dict of tensors (a state_dict)", path)
    items = []
    for k, v in sd.items():
        if v.dtype != torch.float32:
            raise CaffeFormatError(f"tensor {k!r} has dtype {v.dtype}; caffemodel blobs are float32", path)
        items.append((str(k), v.detach().contiguous().numpy()))
    return _group(items, path, {})


# ------------------------------------------------------------------ writing

def tensor_dict(ws: Sequence[LayerWeights]) -> "OrderedDict[str, np.ndarray]":
    """``{'<layer>.<i>': array}`` in caffemodel order (the naming scheme above)."""
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for lw in ws:
        for i, a in enumerate(lw.blobs):
            key = f"{lw.name}.{i}"
            if key in out:
                raise UnsupportedParameter(f"layer name {lw.name!r} appears twice; tensor keys "
                                           f"must be unique")
            out[key] = np.ascontiguousarray(a, dtype=np.float32)
    return out


def write_weights(path: str, ws: Sequence[LayerWeights], prototxt: Optional[str] = None) -> int:
    """Write ``ws`` as caffemodel / safetensors / .pt (by extension), atomically; returns bytes."""
    path = os.fspath(path)
    low = path.lower()
    if low.endswith(".safetensors"):
        return _write_safetensors(path, ws)
    if low.endswith((".pt", ".pth")):
        return _write_pt(path, ws)
    if low.endswith(".caffemodel"):
        return write_caffemodel_weights(path, ws, prototxt)
    raise UnsupportedParameter(f"{path}: output must end in .caffemodel, .safetensors or .pt")


def _write_safetensors(path: str, ws: Sequence[LayerWeights]) -> int:
    meta = {METADATA_KEY: json.dumps([[lw.name, lw.type, len(lw.blobs)] for lw in ws])}
    return write_tensors(path, tensor_dict(ws), meta)


def _write_pt(path: str, ws: Sequence[LayerWeights]) -> int:
    return write_tensors(path, tensor_dict(ws))


def write_tensors(path: str, tensors: "Mapping[str, np.ndarray]", metadata: Optional[dict] = None) -> int:
    """A flat name -> array dict as .safetensors (with ``metadata``) or .pt (a torch state_dict),
    by extension, atomically; returns the bytes written."""
    from caffe_compat.files import atomic_output
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import save
        data = save(dict(tensors), metadata=metadata)
        with atomic_output(path) as f:
            f.write(data)
        return len(data)
    import torch
    sd = OrderedDict((k, torch.from_numpy(np.array(a, copy=True))) for k, a in tensors.items())
    with atomic_output(path) as f:
        torch.save(sd, f)
        size = f.tell()
    return size


def write_caffemodel_weights(path: str, ws: Sequence[LayerWeights],
                             prototxt: Optional[str] = None) -> int:
    """A BVLC V2 caffemodel of ``ws``: the full ``prototxt`` net, or weights-only without one."""
    from caffe_compat.binary import write_caffemodel
    from caffe_compat.proto import caffe_pb2

    blobs = OrderedDict((lw.name, lw.blobs) for lw in ws)
    if len(blobs) != len(ws):
        dup = sorted({lw.name for lw in ws if sum(o.name == lw.name for o in ws) > 1})
        raise UnsupportedParameter(f"{path}: layer names used twice: {dup}")
    if prototxt is not None:
        from caffe_compat.io import read_net
        got = read_net(prototxt)
        param = got[0] if isinstance(got, tuple) else got
        names = [lp.name for lp in param.layer]
        missing = [n for n in blobs if n not in names]
        if missing:
            raise UnsupportedParameter(f"{prototxt}: no layer named {', '.join(map(repr, missing))}; "
                                       f"the weights hold those layers")
        return write_caffemodel(path, param, blobs)
    param = caffe_pb2.NetParameter()
    for lw in ws:
        lp = param.layer.add(name=lw.name)
        if lw.type:
            lp.type = lw.type
    return write_caffemodel(path, param, blobs)


def convert(src: str, dst: str, prototxt: Optional[str] = None) -> WeightSet:
    """Read ``src`` and write ``dst`` (formats from the extensions); returns what was moved."""
    ws = read_weights(src)
    write_weights(dst, ws, prototxt)
    return ws


# ------------------------------------------------------------------ torchvision

# Caffe VGG16 (BVLC/Simonyan names) -> torchvision.models.vgg16 module index.
# features: every conv is followed by ReLU (and pools after each block), so
# conv k of the flat list sits at features.<index>; classifier: Linear,
# ReLU, Dropout, Linear, ReLU, Dropout, Linear.
_VGG16_CONVS = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3",
                "conv4_1", "conv4_2", "conv4_3", "conv5_1", "conv5_2", "conv5_3"]


def _vgg16_table() -> "OrderedDict[str, str]":
    table: "OrderedDict[str, str]" = OrderedDict()
    idx = 0
    for i, name in enumerate(_VGG16_CONVS):
        table[name] = f"features.{idx}"
        idx += 2  # conv, relu
        if i + 1 < len(_VGG16_CONVS) and _VGG16_CONVS[i + 1][:5] != name[:5]:
            idx += 1  # max pool closes the block
    table["fc6"], table["fc7"], table["fc8"] = "classifier.0", "classifier.3", "classifier.6"
    return table


VGG16_TORCHVISION = _vgg16_table()


def torchvision_vgg16_keys() -> "OrderedDict[str, Tuple[str, str]]":
    """Caffe ``<layer>.<i>`` -> torchvision vgg16 ``state_dict`` key, for all 32 tensors."""
    out: "OrderedDict[str, Tuple[str, str]]" = OrderedDict()
    for layer, mod in VGG16_TORCHVISION.items():
        out[f"{layer}.0"] = f"{mod}.weight"
        out[f"{layer}.1"] = f"{mod}.bias"
    return out


def to_torchvision_vgg16(ws: Sequence[LayerWeights]) -> "OrderedDict[str, np.ndarray]":
    """Caffe VGG16 weights as a torchvision ``vgg16`` state_dict (numpy arrays).

    Tensors are renamed and legacy 4-D InnerProduct shapes squeezed to 2-D;
    values are unchanged, so the model still expects Caffe's input (BGR,
    0-255, mean-subtracted).  For torchvision's RGB 0-1 normalised input,
    fold the preprocessing into conv1_1 first (``surgery.fold_input_preprocessing``).
    """
    by_name = {lw.name: lw for lw in ws}
    missing = [n for n in VGG16_TORCHVISION if n not in by_name]
    if missing:
        raise UnsupportedParameter(f"not a VGG16 caffemodel: no layer(s) {missing}")
    out: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for layer, mod in VGG16_TORCHVISION.items():
        blobs = by_name[layer].blobs
        if len(blobs) != 2:
            raise ShapeError(f"layer {layer!r}: expected weight and bias, found {len(blobs)} blobs")
        w, b = blobs
        if layer.startswith("fc") and w.ndim == 4:
            w = w.reshape(w.shape[-2], w.shape[-1])
        out[f"{mod}.weight"] = np.ascontiguousarray(w, dtype=np.float32)
        out[f"{mod}.bias"] = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    return out


__all__ = ["LayerWeights", "WeightSet", "read_weights", "write_weights", "write_caffemodel_weights",
           "convert", "tensor_dict", "weight_format", "torchvision_vgg16_keys",
           "to_torchvision_vgg16", "VGG16_TORCHVISION", "METADATA_KEY"]
