"""Fast R-CNN-ready caffemodels from self-supervised (Jigsaw / CC) weights.

``export_frcnn`` maps the source's weight layers onto the target net's
learnable layers by name (after optional tower extraction and ``--map``
renames), fills what the source lacks, checks every blob against the target
exactly as ``Net::CopyTrainedLayersFrom`` (net.cpp) would -- same blob count,
``Blob::ShapeEquals`` shapes -- and only then writes the caffemodel.

Rules:

* **Towers.**  A 9-tower pretext net names its towers ``conv1_s1`` ..
  ``conv1_s9`` (the authors' prototxt) or ``conv1``, ``conv1_t2`` ..
  ``conv1_t9`` (caffekt's ``jigsaw_cfn_pretext_9tower``); all towers share
  their parameters, and a caffemodel stores them under every tower layer.
  ``tower=k`` keeps tower k's layers under their base names (``conv1_s1`` ->
  ``conv1``) and ignores the other towers.
* **Copied**: a source layer whose blobs fit the target layer exactly.
  Conv weights do not depend on conv1's stride, so a stride-2 pretext conv
  stack transfers unchanged into the stride-4 Fast R-CNN net.
* **Re-initialised**: an InnerProduct whose source shape differs (fc6 after a
  stride-2 tower takes 3x3x256, Fast R-CNN's takes 6x6x256 from ROI pooling)
  -- said so in the report -- and, with ``conv_only``, every InnerProduct
  (the Jigsaw recipe: "copy only the weights of the convolutional layers").
  A mismatched convolution is an error: it cannot be explained by the stride.
* **Initialised** (no source): with the target's own fillers when its
  prototxt gives a ``weight_filler`` (Fast R-CNN's cls_score N(0, 0.01) and
  bbox_pred N(0, 0.001)), else by the Jigsaw transfer recipe: Gaussian
  weights N(0, ``fc_std`` = 0.001) and constant bias ``fc_bias`` = 0.1 (the
  paper's "mean 0.1" read as the bias; both are options).  ``fills``
  overrides per layer.  A convolution with no source is an error.

The written caffemodel holds the target's weight layers only (their full
BVLC LayerParameters and blobs), so it carries neither the Python data layer
nor the fork's ROIPooling fields: BVLC Caffe, the Fast R-CNN fork and
caffekt all load it by layer name.
"""
from __future__ import annotations

import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import MissingFile, ShapeError, UnsupportedParameter

from .convert import LayerWeights, WeightSet, read_weights
from .surgery import ReinitSpec, fill_blob

BUILTIN_TARGETS = ("caffenet", "vgg16")
JIGSAW_FC_STD = 0.001
JIGSAW_FC_BIAS = 0.1
_SAME_SHAPE_LOSSES = ("SmoothL1Loss", "EuclideanLoss")
_TOWER = re.compile(r"^(?P<base>.+)_(?P<kind>[st])(?P<k>\d+)$")


# ------------------------------------------------------------------ built-in targets

def _shipped(name: str):
    from caffe_compat.io import read_net
    from caffekt.prototxt import path
    got = read_net(path(name))
    return got[0] if isinstance(got, tuple) else got


def frcnn_target(kind: str, num_classes: int = 21):
    """The Fast R-CNN test net for ``caffenet`` or ``vgg16`` as a NetParameter.

    Built from the shipped deploys' conv stacks (layer names of the Fast
    R-CNN models): CaffeNet gets Fast R-CNN's conv1 pad 5 and pool1/pool2
    pad 1, VGG16 drops pool5; then ROIPooling (6x6 / 7x7 at 1/16), fc6, fc7
    (4096, ReLU, dropout 0.5), cls_score (num_classes, N(0, 0.01)), bbox_pred
    (4 * num_classes, N(0, 0.001)) and cls_prob.  Inputs: data (1x3xSxS)
    and rois (1x5: batch index, x1, y1, x2, y2).
    """
    from caffe_compat.proto import caffe_pb2

    if kind not in BUILTIN_TARGETS:
        raise UnsupportedParameter(f"unknown built-in target {kind!r}; expected one of "
                                   f"{', '.join(BUILTIN_TARGETS)} or a prototxt path")
    src = _shipped("alexnet_s4_deploy" if kind == "caffenet" else "vgg16_deploy")
    size, pooled = (227, 6) if kind == "caffenet" else (224, 7)
    net = caffe_pb2.NetParameter(name="CaffeNet" if kind == "caffenet" else "VGG_ILSVRC_16_layers")
    inp = net.layer.add(name="input", type="Input")
    inp.top.extend(["data", "rois"])
    inp.input_param.shape.add().dim.extend([1, 3, size, size])
    inp.input_param.shape.add().dim.extend([1, 5])
    last = "data"
    for lp in src.layer:
        if lp.type == "Input":
            continue
        if lp.name == "pool5":
            break
        out = net.layer.add()
        out.CopyFrom(lp)
        if kind == "caffenet" and lp.name == "conv1":
            del out.convolution_param.pad[:]
            out.convolution_param.pad.append(5)
        if kind == "caffenet" and lp.name in ("pool1", "pool2"):
            out.pooling_param.pad = 1
        last = out.top[0]
    roi = net.layer.add(name="roi_pool5", type="ROIPooling")
    roi.bottom.extend([last, "rois"])
    roi.top.append("pool5")
    roi.roi_pooling_param.pooled_h = roi.roi_pooling_param.pooled_w = pooled
    roi.roi_pooling_param.spatial_scale = 0.0625
    bottom = "pool5"
    for fc in ("fc6", "fc7"):
        _ip(net, fc, bottom, 4096)
        n = fc[-1]
        net.layer.add(name=f"relu{n}", type="ReLU", bottom=[fc], top=[fc])
        drop = net.layer.add(name=f"drop{n}", type="Dropout", bottom=[fc], top=[fc])
        drop.dropout_param.dropout_ratio = 0.5
        bottom = fc
    _ip(net, "cls_score", "fc7", num_classes, std=0.01)
    _ip(net, "bbox_pred", "fc7", 4 * num_classes, std=0.001)
    net.layer.add(name="cls_prob", type="Softmax", bottom=["cls_score"], top=["cls_prob"])
    return net


def _ip(net, name: str, bottom: str, n: int, std: Optional[float] = None) -> None:
    lp = net.layer.add(name=name, type="InnerProduct", bottom=[bottom], top=[name])
    for lr, decay in ((1, 1), (2, 0)):
        lp.param.add(lr_mult=lr, decay_mult=decay)
    lp.inner_product_param.num_output = n
    if std is not None:
        lp.inner_product_param.weight_filler.type = "gaussian"
        lp.inner_product_param.weight_filler.std = std
        lp.inner_product_param.bias_filler.type = "constant"
        lp.inner_product_param.bias_filler.value = 0


# ------------------------------------------------------------------ target shapes

def _python_input_shapes(layers) -> Dict[str, Tuple[int, ...]]:
    """Shapes for a bottomless Python data layer's tops, enough to size the weights.

    Weight shapes do not depend on the image size (ROI pooling fixes fc6's
    input), so ``data`` gets 1x3x224x224, ``rois`` 1x5, a top that meets an
    InnerProduct's output in a same-shape loss (SmoothL1Loss's bbox targets
    and weights) that output's shape, and anything else (labels) shape (1,).
    """
    ip_out = {lp.top[0]: int(lp.inner_product_param.num_output) for lp in layers
              if lp.type == "InnerProduct" and len(lp.top)}
    shapes: Dict[str, Tuple[int, ...]] = {}
    for lp in layers:
        if lp.type != "Python" or len(lp.bottom):
            continue
        for t in lp.top:
            if t == "data":
                shapes[t] = (1, 3, 224, 224)
            elif t == "rois":
                shapes[t] = (1, 5)
            else:
                shapes[t] = (1,)
                for user in layers:
                    if (user.type in _SAME_SHAPE_LOSSES and t in user.bottom[1:]
                            and user.bottom[0] in ip_out):
                        shapes[t] = (1, ip_out[user.bottom[0]])
    return shapes


def target_layers(param, phase: str = "TRAIN", input_shapes=None, path: Optional[str] = None
                  ) -> "OrderedDict[str, Tuple[object, List[Tuple[int, ...]]]]":
    """Learnable target layers: name -> (LayerParameter, blob shapes), first of a name, net order.

    The net is built on torch's ``meta`` device (shapes only, nothing
    allocated), with bottomless Python layers taken as inputs.
    """
    import torch

    from caffe_compat.net import Net, filter_layers, PHASES

    kept = filter_layers(param, PHASES[phase], 0, list(param.state.stage), path)
    shapes = _python_input_shapes(kept)
    shapes.update(input_shapes or {})
    with torch.device("meta"):
        net = Net(param, phase=phase, input_shapes=shapes, python_layers="as_input", path=path)
    out: "OrderedDict[str, Tuple[object, List[Tuple[int, ...]]]]" = OrderedDict()
    protos = {}
    for lp in net.layer_params_proto:
        protos.setdefault(lp.name, lp)
    for name, ps in net.blobs_by_layer.items():
        if ps:
            out[name] = (protos[name], [tuple(int(d) for d in p.shape) for p in ps])
    return out


# ------------------------------------------------------------------ towers

def select_tower(ws: Sequence[LayerWeights], tower: int) -> Tuple[WeightSet, List[Tuple[str, str]], List[str]]:
    """(tower k's layers under base names + the shared layers, renames, other towers' layers)."""
    tagged = {}
    for lw in ws:
        m = _TOWER.match(lw.name)
        if m:
            tagged[lw.name] = (m["base"], m["kind"], int(m["k"]))
    found = sorted({k for _b, _kind, k in tagged.values()} |
                   ({1} if any(kind == "t" for _b, kind, _k in tagged.values()) else set()))
    if tower not in found:
        raise UnsupportedParameter(
            f"the source has no tower {tower}: " +
            (f"its towers are {found}" if found else
             "no layer names carry a tower suffix (_s<k> or _t<k>)"))
    bases_t = {b for b, kind, _k in tagged.values() if kind == "t"}
    keep, renames, dropped = WeightSet(), [], []
    for lw in ws:
        if lw.name in tagged:
            base, kind, k = tagged[lw.name]
            if k == tower:
                keep.append(LayerWeights(base, lw.type, lw.blobs))
                renames.append((lw.name, base))
            else:
                dropped.append(lw.name)
        elif lw.name in bases_t and tower != 1:
            dropped.append(lw.name)  # caffekt naming: the bare name is tower 1
        else:
            keep.append(lw)
    keep.source = getattr(ws, "source", None)
    return keep, renames, dropped


def has_towers(ws: Sequence[LayerWeights]) -> bool:
    return any(_TOWER.match(lw.name) for lw in ws)


# ------------------------------------------------------------------ the export

@dataclass
class FrcnnReport:
    """What ``export_frcnn`` did, layer by layer."""

    source: str
    target: str
    out: Optional[str]
    tower: Optional[int] = None
    copied: List[str] = field(default_factory=list)
    renamed: List[Tuple[str, str]] = field(default_factory=list)
    initialised: List[Tuple[str, str]] = field(default_factory=list)   # (layer, how and why)
    ignored: List[str] = field(default_factory=list)
    nbytes: int = 0
    deploy_out: Optional[str] = None
    rescale: Optional[object] = None    # a rescale.RescaleReport when --rescale ran

    def __str__(self) -> str:
        lines = [f"Fast R-CNN export: {self.source} -> {self.target}"]
        if self.tower is not None:
            lines.append(f"tower {self.tower} extracted")
        if self.renamed:
            lines.append("renamed: " + ", ".join(f"{a} -> {b}" for a, b in self.renamed))
        lines.append(f"copied ({len(self.copied)}): {', '.join(self.copied) or '-'}")
        for name, how in self.initialised:
            lines.append(f"initialised {name}: {how}")
        lines.append(f"ignored source layers ({len(self.ignored)}): {', '.join(self.ignored) or '-'}")
        if self.rescale is not None:
            lines.append(str(self.rescale))
        if self.out:
            lines.append(f"wrote {self.out} ({self.nbytes} bytes)")
        if self.deploy_out:
            lines.append(f"wrote {self.deploy_out}")
        return "\n".join(lines)


def _read_target(target: str):
    if target in BUILTIN_TARGETS:
        return frcnn_target(target), f"built-in {target}", None
    from caffe_compat.io import read_net
    if not os.path.exists(target) and not target.endswith((".prototxt", ".pt", ".txt")):
        raise UnsupportedParameter(f"--target {target!r}: not a built-in target ({', '.join(BUILTIN_TARGETS)}) "
                                   f"and no such prototxt file")
    got = read_net(target)
    return (got[0] if isinstance(got, tuple) else got), target, os.fspath(target)


def _filler_desc(fp) -> str:
    kind = fp.type or "constant"
    if kind == "gaussian":
        return f"gaussian(mean {fp.mean:g}, std {fp.std:g})"
    if kind == "constant":
        return f"constant {fp.value:g}"
    return kind


def _init_layer(lp, shapes, spec: Optional[ReinitSpec], fc_std: float, fc_bias: float
                ) -> Tuple[List[np.ndarray], str]:
    from caffe_compat.proto import caffe_pb2

    sub = lp.inner_product_param if lp.type == "InnerProduct" else lp.convolution_param
    if spec is not None:
        wf = spec.filler_param()
        bf = caffe_pb2.FillerParameter(type="constant", value=spec.bias)
        why = "as requested"
    elif sub.HasField("weight_filler"):
        wf = sub.weight_filler
        bf = sub.bias_filler if sub.HasField("bias_filler") else caffe_pb2.FillerParameter()
        why = "the target's own fillers"
    else:
        wf = caffe_pb2.FillerParameter(type="gaussian", std=fc_std)
        bf = caffe_pb2.FillerParameter(type="constant", value=fc_bias)
        why = "Jigsaw transfer recipe"
    blobs = [fill_blob(shapes[0], wf, lp.name)]
    if len(shapes) > 1:
        blobs.append(fill_blob(shapes[1], bf, lp.name))
    if len(shapes) > 2:
        raise UnsupportedParameter(f"target layer {lp.name!r} has {len(shapes)} blobs; only "
                                   f"weight + bias layers can be initialised")
    return blobs, f"weights {_filler_desc(wf)}, bias {_filler_desc(bf)} ({why})"


def _parse_source(source: str) -> Tuple[Optional[str], str]:
    """``PROTOTXT:WEIGHTS`` or a weights file alone."""
    if os.path.exists(source):
        return None, source
    head, sep, tail = source.rpartition(":")
    if sep and head.endswith(".prototxt"):
        if not os.path.exists(head):
            raise MissingFile(f"source prototxt {head} does not exist")
        return head, tail
    raise MissingFile(f"source {source}: no such file (give WEIGHTS or PROTOTXT:WEIGHTS)")


def _check_source_prototxt(prototxt: str, ws: Sequence[LayerWeights]) -> None:
    """The source weights must belong to the source prototxt (every layer defined there)."""
    from caffe_compat.io import read_net
    got = read_net(prototxt)
    param = got[0] if isinstance(got, tuple) else got
    names = {lp.name for lp in param.layer}
    unknown = [lw.name for lw in ws if lw.name not in names]
    if unknown:
        raise UnsupportedParameter(f"{prototxt}: the weights hold layers this prototxt does not "
                                   f"define: {unknown[:8]}")


def export_frcnn(source: str, target: str, out: Optional[str],
                 mapping: Optional[Mapping[str, str]] = None, tower: Optional[int] = None,
                 fc_std: float = JIGSAW_FC_STD, fc_bias: float = JIGSAW_FC_BIAS,
                 fills: Sequence[ReinitSpec] = (), conv_only: bool = False, seed: int = 0,
                 phase: str = "TRAIN", deploy_out: Optional[str] = None, rescale=None,
                 rescale_mode: str = "both", rescale_options: Optional[Mapping] = None) -> FrcnnReport:
    """Build the Fast R-CNN caffemodel ``out`` from ``source`` for ``target``; see the module doc.

    ``source``: a weights file (caffemodel / safetensors / .pt) or
    ``PROTOTXT:WEIGHTS``.  ``target``: ``caffenet``, ``vgg16`` or a prototxt
    (built in ``phase`` to size its blobs).  ``out=None`` checks only.
    ``rescale``: images (folder, list file or paths) for the data-dependent
    rescaling of ``converters.rescale`` in ``rescale_mode`` (within / between
    / both), within-layer on the layers initialised here unless
    ``rescale_options`` says ``layers="all"`` (other keys: those of
    ``rescale_blobs``).  ``deploy_out``: the target's test net (for a
    prototxt target its ``deploy_form.deploy_form``).
    Every error is raised before anything is written.
    """
    import torch

    src_proto, weights = _parse_source(source)
    ws = read_weights(weights)
    legacy = ws.legacy   # the file's, before tower/mapping make new weight sets
    if src_proto:
        _check_source_prototxt(src_proto, ws)
    param, target_desc, tpath = _read_target(target)
    report = FrcnnReport(source, target_desc, out)
    if tower is None and has_towers(ws):
        tower = 1
    if tower is not None:
        ws, renames, others = select_tower(ws, tower)
        report.tower = tower
        report.renamed += renames
        report.ignored += others
    tl = target_layers(param, phase=phase, path=tpath)
    ws = _apply_mapping(ws, mapping or {}, tl, target_desc, report)
    fill_for = {s.layer: s for s in fills}
    bad = [n for n in fill_for if n not in tl]
    if bad:
        raise UnsupportedParameter(f"--fill: target {target_desc} has no learnable layer(s) {bad}")
    torch.manual_seed(seed)
    blobs = _target_blobs(tl, ws, legacy, fill_for, set((mapping or {}).values()), conv_only, fc_std,
                          fc_bias, target_desc, report)
    if rescale is not None:
        from .rescale import rescale_blobs
        opts = {"layers": "initialised", "seed": seed, **(rescale_options or {})}
        report.rescale = rescale_blobs(param, blobs, rescale, rescale_mode, path=tpath,
                                       initialised=[n for n, _ in report.initialised], **opts)
    deploy = None
    if deploy_out is not None:
        from .deploy_form import deploy_form
        deploy = param if target in BUILTIN_TARGETS else deploy_form(param, tpath)
    if out is not None:
        report.nbytes = write_frcnn_caffemodel(out, tl, blobs)
    if deploy is not None:
        from caffe_compat.prototxt import write_prototxt
        write_prototxt(deploy, deploy_out)
        report.deploy_out = deploy_out
    return report


def _apply_mapping(ws, mapping: Mapping[str, str], tl, target_desc: str, report: FrcnnReport):
    """``--map SRC=DST``: source layers renamed onto target layers (checked first)."""
    if not mapping:
        return ws
    for src, dst in mapping.items():
        if ws.get(src) is None:
            raise UnsupportedParameter(f"--map {src}={dst}: the source has no weight layer "
                                       f"{src!r} (it has: {', '.join(ws.names())})")
        if dst not in tl:
            raise UnsupportedParameter(f"--map {src}={dst}: target {target_desc} has no "
                                       f"learnable layer {dst!r} (it has: {', '.join(tl)})")
    # a source layer already called like a map destination gives way to the mapped one
    displaced = [lw.name for lw in ws if lw.name in set(mapping.values()) and lw.name not in mapping]
    ws = WeightSet(lw for lw in ws if lw.name not in displaced)
    report.ignored += displaced
    for lw in ws:
        if lw.name in mapping:
            report.renamed.append((lw.name, mapping[lw.name]))
            lw.name = mapping[lw.name]
    return ws


def _copy_problem(name: str, arrays, shapes, legacy: bool) -> Optional[str]:
    """Why the source blobs of ``name`` cannot be copied (CopyTrainedLayersFrom's checks), or None."""
    from caffe_compat.budget import blob_shape_string
    from caffe_compat.weights import shape_equals
    if len(arrays) != len(shapes):
        return (f"incompatible number of blobs for layer {name!r}: source has "
                f"{len(arrays)}, target has {len(shapes)}")
    for j, (a, s) in enumerate(zip(arrays, shapes)):
        if not shape_equals(s, a.shape, legacy):
            return (f"cannot copy param {j} weights from layer {name!r}; shape "
                    f"mismatch.  Source param shape is {blob_shape_string(a.shape)}; "
                    f"target param shape is {blob_shape_string(s)}")
    return None


def _target_blobs(tl, ws, legacy: bool, fill_for, explicit, conv_only: bool, fc_std: float, fc_bias: float,
                  target_desc: str, report: FrcnnReport) -> "OrderedDict[str, List[np.ndarray]]":
    """Every learnable target layer's blobs: copied from the source when they fit, else initialised."""
    blobs: "OrderedDict[str, List[np.ndarray]]" = OrderedDict()
    src = ws.as_dict()
    for name, (lp, shapes) in tl.items():
        arrays = src.get(name)
        reason = None
        if arrays is not None and name not in fill_for:
            problem = _copy_problem(name, arrays, shapes, legacy)
            if problem is None and not (conv_only and lp.type == "InnerProduct"):
                blobs[name] = [np.asarray(a, dtype=np.float32).reshape(s) for a, s in zip(arrays, shapes)]
                report.copied.append(name)
                continue
            if problem is not None and (lp.type != "InnerProduct" or name in explicit):
                raise ShapeError(f"{problem} (target {target_desc})")
            if problem is not None:
                reason = (f"source {'x'.join(map(str, arrays[0].shape))} does not fit target "
                          f"{'x'.join(map(str, shapes[0]))}: an InnerProduct's input size changes with "
                          f"conv1's stride, the pooled size or the towers' concat; re-initialised")
            else:
                reason = "conv_only: InnerProduct layers are not copied (Jigsaw recipe)"
        elif arrays is None and lp.type != "InnerProduct" and name not in fill_for:
            raise UnsupportedParameter(
                f"target layer {name!r} ({lp.type}) has no source blobs; map one with --map "
                f"SRC={name} or initialise it with --fill {name}:gaussian:STD")
        new, how = _init_layer(lp, shapes, fill_for.get(name), fc_std, fc_bias)
        blobs[name] = new
        report.initialised.append((name, how + (f"; {reason}" if reason else "")))
    report.ignored += [n for n in src if n not in tl]
    return blobs


def write_frcnn_caffemodel(path: str, tl, blobs: Mapping[str, Sequence[np.ndarray]]) -> int:
    """The weight layers (full LayerParameters of the target) with their blobs, BVLC V2, atomic."""
    from caffe_compat.binary import write_caffemodel
    from caffe_compat.proto import caffe_pb2

    net = caffe_pb2.NetParameter()
    for name, (lp, _shapes) in tl.items():
        out = net.layer.add()
        out.CopyFrom(lp)
        out.ClearField("blobs")
        del out.include[:]
        del out.exclude[:]
    return write_caffemodel(path, net, blobs)


__all__ = ["export_frcnn", "frcnn_target", "target_layers", "select_tower", "has_towers",
           "write_frcnn_caffemodel", "FrcnnReport", "BUILTIN_TARGETS", "JIGSAW_FC_STD",
           "JIGSAW_FC_BIAS"]
