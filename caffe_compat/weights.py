"""Loading and saving a ``Net``'s weights by Caffe's rules (Net::CopyTrainedLayersFrom, net.cpp).

For each layer of the source, in source order, the *first* target layer with
the same name receives its blobs; types are not compared.  Source layers with
no target are ignored (reported), target layers with no source keep their
filler values.  The blob count must match and every blob must have the
target's shape, legacy (num, channels, height, width) blobs of V0/V1 files
comparing right-aligned as ``Blob::ShapeEquals`` does (1x1xNxK equals NxK).
Split layers in a caffemodel (Caffe's own bookkeeping) are skipped.

``tower=N`` reads one tower of a multi-tower (Siamese) training snapshot,
e.g. the authors' 9-tower Jigsaw train_val, whose tower layers are named
``conv1_s1`` ... ``fc6_s9`` (ours: ``conv1`` for tower 1, ``conv1_t2`` ...):
source layer ``X_sN`` / ``X_tN`` is copied as ``X``, the other towers'
layers are ignored, and the report lists every rename.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .budget import blob_shape_string
from .errors import ShapeError

_SPLIT_TYPES = ("Split", "SPLIT")


@dataclass
class LoadReport:
    """What ``copy_trained_layers`` did."""

    source: Optional[str]
    copied: List[str] = field(default_factory=list)          # target layers that got blobs
    ignored: List[str] = field(default_factory=list)         # source layers without a target
    splits_skipped: List[str] = field(default_factory=list)  # source Split layers
    mismatched: List[Tuple[str, str]] = field(default_factory=list)  # (layer, why), strict=False
    untouched: List[str] = field(default_factory=list)       # target layers with blobs, not loaded
    renamed: List[Tuple[str, str]] = field(default_factory=list)  # (source, target) with tower=N

    @property
    def ok(self) -> bool:
        return not self.mismatched

    def __str__(self) -> str:
        lines = [f"weights from {self.source}: {len(self.copied)} layer(s) copied"]
        if self.renamed:
            lines.append(f"  tower layers renamed: {', '.join(f'{a} -> {b}' for a, b in self.renamed)}")
        if self.mismatched:
            lines.append(f"  not copied (mismatch): {', '.join(n for n, _ in self.mismatched)}")
        if self.untouched:
            lines.append(f"  keeping filler values: {', '.join(self.untouched)}")
        if self.ignored:
            lines.append(f"  ignored source layers: {', '.join(self.ignored)}")
        return "\n".join(lines)


def shape_equals(target_shape: Sequence[int], source_shape: Sequence[int], legacy: bool) -> bool:
    """Blob::ShapeEquals: legacy source dims compare with the target's shape right-aligned, padded by 1."""
    t = tuple(int(d) for d in target_shape)
    s = tuple(int(d) for d in source_shape)
    if not legacy:
        return t == s
    if len(t) > 4:
        return False
    return (1,) * (4 - len(t)) + t == (1,) * (4 - len(s)) + s


def _source_layers(source):
    """(path, [(name, type, [arrays])], legacy) from a path, a CaffeModel or a NetParameter."""
    from .binary import CaffeModel, read_caffemodel
    from .proto import caffe_pb2

    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        model = read_caffemodel(path)
        return path, [(lb.name, lb.type, lb.blobs) for lb in model.layers], model.format != "V2"
    if isinstance(source, CaffeModel):
        return source.path, [(lb.name, lb.type, lb.blobs) for lb in source.layers], source.format != "V2"
    if isinstance(source, caffe_pb2.NetParameter):
        layers, legacy = [], bool(len(source.layers))
        for lp in list(source.layer) + list(source.layers):
            arrays = []
            for b in lp.blobs:
                lg = any(b.HasField(f) for f in ("num", "channels", "height", "width"))
                legacy |= lg
                shape = (b.num, b.channels, b.height, b.width) if lg else tuple(b.shape.dim)
                vals = b.double_data if len(b.double_data) else b.data
                arrays.append(np.asarray(vals, dtype=np.float32).reshape(shape))
            layers.append((lp.name, lp.type, arrays))
        return None, layers, legacy
    raise TypeError(f"copy_trained_layers: expected a caffemodel path, CaffeModel or NetParameter, "
                    f"got {type(source).__name__}")


def _copy_into(p: torch.nn.Parameter, a: np.ndarray) -> None:
    with torch.no_grad():
        if p.device.type == "cpu" and p.dtype == torch.float32 and p.is_contiguous():
            p.data.numpy()[...] = np.asarray(a, dtype=np.float32).reshape(p.shape)
        else:
            p.copy_(torch.from_numpy(np.array(a, dtype=np.float32)).reshape(p.shape))


_TOWER = re.compile(r"(.+)_[st](\d+)\Z")


def tower_of(name: str) -> Optional[Tuple[str, int]]:
    """``("conv1", 3)`` for ``conv1_s3`` (the authors' names) or ``conv1_t3`` (ours); None otherwise."""
    m = _TOWER.match(name)
    return (m.group(1), int(m.group(2))) if m else None


def _pick_tower(layers, tower: int, report: LoadReport):
    """Source layers of tower ``tower`` under their deploy names; other towers' layers dropped."""
    suffixed = {tower_of(n)[0] for n, _, _ in layers if tower_of(n) and tower_of(n)[1] == tower}
    have = sorted({tower_of(n)[1] for n, _, _ in layers if tower_of(n)})
    # caffekt's own 9-tower nets name tower 1 plainly (conv1) and the others conv1_t2 ...
    plain_first = tower == 1 and have and 1 not in have
    if not suffixed and not plain_first:
        raise ShapeError(f"{report.source or 'weights'}: no layer of tower {tower} (named like conv1_s{tower} "
                         f"or conv1_t{tower}); towers found: {have or 'none'}")
    out = []
    for name, ltype, arrays in layers:
        t = tower_of(name)
        if t is not None:
            if t[1] != tower:
                report.ignored.append(name)
                continue
            if len(arrays):
                report.renamed.append((name, t[0]))
            out.append((t[0], ltype, arrays))
        elif t is None and name in suffixed:
            report.ignored.append(name)   # tower 1's plain name when tower N is asked for
        else:
            out.append((name, ltype, arrays))
    return out


def copy_trained_layers(net, source, strict: bool = True, tower: Optional[int] = None) -> LoadReport:
    """Net::CopyTrainedLayersFrom(source) into ``net``; returns a ``LoadReport``.

    ``strict=True``: a blob-count or shape mismatch raises ``ShapeError``
    naming the layer, the param index and both shapes.  ``strict=False``:
    mismatched layers are left as they are and listed in ``report.mismatched``.
    ``tower``: load that tower of a multi-tower snapshot (see the module docstring).
    """
    path, layers, legacy = _source_layers(source)
    report = LoadReport(path)
    if tower is not None:
        layers = _pick_tower(layers, int(tower), report)
    targets = net.blobs_by_layer  # first layer of a name wins, as the C++ search does
    loaded = set()
    for name, ltype, arrays in layers:
        if ltype in _SPLIT_TYPES:
            report.splits_skipped.append(name)
            continue
        if name not in targets:
            report.ignored.append(name)
            continue
        blobs = targets[name]
        problem = None
        if len(blobs) != len(arrays):
            problem = (f"incompatible number of blobs for layer {name!r}: source has {len(arrays)}, "
                       f"target has {len(blobs)}")
        else:
            for j, (p, a) in enumerate(zip(blobs, arrays)):
                if not shape_equals(p.shape, a.shape, legacy):
                    problem = (f"cannot copy param {j} weights from layer {name!r}; shape mismatch.  "
                               f"Source param shape is {blob_shape_string(a.shape)}; target param shape is "
                               f"{blob_shape_string(p.shape)}.  To learn this layer's parameters from scratch "
                               f"rather than copying from a saved net, rename the layer.")
                    hint = stride_hint(net, name, a.shape)
                    if hint:
                        problem += " " + hint
                    break
        if problem is not None:
            where = f"{path}: " if path else ""
            if strict:
                raise ShapeError(where + problem)
            report.mismatched.append((name, problem))
            continue
        for p, a in zip(blobs, arrays):
            _copy_into(p, a)
        if arrays:  # blob-less layers match trivially; not worth listing
            report.copied.append(name)
            loaded.add(name)
    report.untouched = [n for n, ps in targets.items() if ps and n not in loaded]
    return report


def _first_inner_product(net) -> Optional[int]:
    seen_conv = False
    for i, t in enumerate(net.layer_types):
        if t == "Convolution":
            seen_conv = True
        elif t == "InnerProduct":
            return i if seen_conv else None
    return None


def _conv1_index(net) -> Optional[int]:
    if "conv1" in net.layer_names and net.layer_types[net.layer_names.index("conv1")] == "Convolution":
        return net.layer_names.index("conv1")
    return net.layer_types.index("Convolution") if "Convolution" in net.layer_types else None


def _bottom_shape_with_stride(net, ip_index: int, conv_index: int, stride: int):
    """Shape reaching layer ``ip_index`` when conv ``conv_index`` has ``stride`` (a trial build)."""
    from .proto import caffe_pb2
    Net = type(net)   # the net's own class: weights never imports net (net.load_net imports weights)

    trial = caffe_pb2.NetParameter()
    for lp in net.layer_params_proto[:ip_index]:
        trial.layer.add().CopyFrom(lp)
    cp = trial.layer[conv_index].convolution_param
    cp.ClearField("stride_h")
    cp.ClearField("stride_w")
    del cp.stride[:]
    cp.stride.append(stride)
    for lp in trial.layer:  # shapes only: skip the (random) fill work
        for f in ("weight_filler", "bias_filler"):
            for sub in ("convolution_param", "inner_product_param"):
                if lp.HasField(sub):
                    getattr(lp, sub).ClearField(f)
    shapes = {k: v for k, v in net.given_input_shapes.items()}
    for name in net.inputs:
        shapes.setdefault(name, net.blob_shapes[name])
    try:
        t = Net(trial, phase=net.phase, stages=(), level=net.level, input_shapes=shapes)
    except Exception:
        return None
    bottom = net.bottom_names[net.layer_names[ip_index]][0]
    return t.blob_shapes.get(bottom)


def stride_hint(net, layer_name: str, source_shape) -> Optional[str]:
    """The explanation for an fc6-style mismatch caused by conv1's stride, or None."""
    ip = _first_inner_product(net)
    if ip is None or net.layer_names[ip] != layer_name:
        return None
    conv = _conv1_index(net)
    if conv is None:
        return None
    cp = net.layer_params_proto[conv].convolution_param
    stride = int(cp.stride[0]) if len(cp.stride) else int(cp.stride_h or 1)
    src_in = int(source_shape[-1])  # IP weight is (num_output, K), legacy (1, 1, N, K)
    bottom = net.blob_shapes[net.bottom_names[layer_name][0]]
    tgt_in = math.prod(bottom[1:])
    if src_in == tgt_in:
        return None
    fits = [s for s in range(1, 9) if s != stride and
            (lambda sh: sh is not None and math.prod(sh[1:]) == src_in)(
                _trial(net, ip, conv, s))]
    conv_name = net.layer_names[conv]
    msg = (f"Hint: {layer_name!r} is the first InnerProduct after the convolutions; its input here is "
           f"{' x '.join(str(d) for d in bottom[1:])} = {tgt_in} values but the source's takes {src_in}. "
           f"{conv_name!r} has stride {stride}")
    if fits:
        msg += f", and stride {fits[0]} would give the source's size"
    msg += (f": the conv1 stride changes the {layer_name} input size.  The convolution layers alone "
            f"transfer: load with strict=False, or use the conv-only deploy "
            f"(e.g. caffekt.prototxt 'alexnet_s4_conv_deploy').")
    return msg


def _trial(net, ip, conv, stride):
    with torch.random.fork_rng():
        return _bottom_shape_with_stride(net, ip, conv, stride)


def save_caffemodel(net, path: str) -> int:
    """Write ``net``'s layers and blobs as a BVLC V2 caffemodel (atomically); returns its size."""
    from .binary import write_caffemodel
    from .proto import caffe_pb2

    param = caffe_pb2.NetParameter(name=net.name)
    for lp in net.layer_params_proto:
        out = param.layer.add()
        out.CopyFrom(lp)
        out.ClearField("blobs")
    blobs = {}
    for name, ps in net.blobs_by_layer.items():
        if ps:
            blobs[name] = [p.detach().cpu().numpy() for p in ps]
    return write_caffemodel(path, param, blobs)


__all__ = ["LoadReport", "copy_trained_layers", "save_caffemodel", "shape_equals", "stride_hint"]
