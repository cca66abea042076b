"""A Caffe net as one ``torch.nn.Module``: ``load_net`` and ``Net`` (src/caffe/net.cpp).

What is kept from Caffe's ``Net::Init``:

* **Filtering** (``FilterNet`` / ``StateMeetsRule``): a layer with ``include``
  rules is kept when one rule is met, one with ``exclude`` rules is dropped when
  one is met; a rule is met when its phase, min/max level, every ``stage`` and no
  ``not_stage`` agree with the net state.  Both kinds in one layer is an error.
* **Blobs**: a top named like the bottom at the same index is computed in place;
  any other reuse of a name is "produced by multiple sources".  Internally each
  write is a new version of the blob; ``forward_all`` reports the last one, as
  ``net.blobs`` does after a Caffe forward.  A blob read by several layers needs
  no Split: it is the same tensor and autograd adds the gradients.
* **Outputs**: blobs no layer consumes after their last write, in name order
  (Caffe keeps them in a ``std::set``).
* **Parameters** (``AppendParam``): a ``ParamSpec.name`` seen before makes the
  layer use the owner's ``nn.Parameter`` object (owner = first layer naming it);
  STRICT sharing needs equal shapes, PERMISSIVE equal counts (only equal shapes
  are supported here).  ``learnable_params()`` lists owners only, in net order.
  A learnable param with ``lr_mult: 0`` gets ``requires_grad=False`` (Caffe
  computes no diff for it) unless the net sets ``force_backward``.
* **Loss**: ``loss_weight`` given once per top or not at all; a loss layer's
  first top defaults to weight 1.  ``net.loss(outputs)`` = sum of weight * sum(top).
* ``propagate_down: false`` on a bottom stops the gradient into that bottom.
* **Reshape** (``Net::Forward`` calls ``Layer::Reshape`` before each layer):
  inputs may change shape between calls; a layer with shape-derived set-up
  (``reshape(bottom_shapes)``) is re-set-up when its bottoms' shapes change.

Data layers (Data, ImageData, HDF5Data, MemoryData, WindowData, Input) become
named inputs of ``forward`` (see ``caffe_compat.layers.input``).
"""
from __future__ import annotations

import os
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .budget import blob_shape_string, check_shape
from .errors import (CaffeCompatError, CaffeFormatError, ShapeError, UnknownLayerType, UnsupportedParameter,
                     name_file)
from .files import sniff_text
from .netstate import PHASE_NAMES, PHASES, filter_layers, state_meets_rule  # noqa: F401  (API: net.filter_layers, ...)
from .proto import caffe_pb2

_PYTHON_MODES = ("refuse", "as_input")


def _eager() -> bool:
    # shapes are fixed while tracing/compiling; reshape only runs eagerly
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


# --------------------------------------------------------------------------- reading

def _read_param(prototxt, path_hint: Optional[str] = None):
    """(NetParameter, path) from a path or a message; files go through ``io.read_net`` (upgraded)."""
    if isinstance(prototxt, caffe_pb2.NetParameter):
        return prototxt, path_hint
    from .io import read_net

    path = os.fspath(prototxt)
    return read_net(path), path


# --------------------------------------------------------------------------- the module

@dataclass
class _Step:
    key: str                      # module key in Net.layer_modules
    bottoms: List[str]            # versioned blob keys read
    tops: List[str]               # versioned blob keys written
    stop_grad: List[bool]         # propagate_down: false per bottom
    names: List[str] = field(default_factory=list)  # Caffe names of the tops
    feeds: bool = False           # tops come from forward()'s inputs
    loss: List[Tuple[int, float]] = field(default_factory=list)  # (top index, weight != 0)
    reshapes: bool = False        # the module has reshape(): call it when bottom shapes change


def _module_key(name: str, taken: set) -> str:
    key = name.replace(".", "_") or "layer"
    base, i = key, 1
    while key in taken:
        i += 1
        key = f"{base}__{i}"
    taken.add(key)
    return key


def _swap_param(module: nn.Module, old: nn.Parameter, new: nn.Parameter) -> None:
    # A layer may hold a blob both in ``blobs`` and as an attribute: replace every slot.
    for m in module.modules():
        for k, v in list(m._parameters.items()):
            if v is old:
                m._parameters[k] = new


class _Wiring:
    """Net::AppendBottom / AppendTop bookkeeping: blob versions (in-place tops get a new key),
    which blobs are still unconsumed (the net's outputs), and every key's shape."""

    def __init__(self, path: Optional[str]):
        self.path = path
        self.version: Dict[str, int] = {}      # Caffe blob name -> versions written so far
        self.available: Dict[str, str] = {}    # Caffe name -> versioned key, written and not consumed since
        self.current: Dict[str, str] = {}      # Caffe name -> latest versioned key
        self.shapes: Dict[str, Tuple[int, ...]] = {}  # versioned key -> shape

    def bottoms(self, lp, where: str) -> List[str]:
        keys = []
        for bi, b in enumerate(lp.bottom):
            if b not in self.current:
                raise CaffeFormatError(f"unknown bottom blob {b!r} (layer {lp.name!r}, bottom index {bi})",
                                       self.path, where)
            keys.append(self.current[b])
            self.available.pop(b, None)  # consumed: no longer a net output
        return keys

    def tops(self, lp, where: str) -> List[str]:
        keys = []
        for ti, t in enumerate(lp.top):
            inplace = ti < len(lp.bottom) and lp.bottom[ti] == t
            if not inplace and t in self.version:
                raise CaffeFormatError(f"top blob {t!r} produced by multiple sources", self.path, where)
            v = self.version.get(t, -1) + 1
            self.version[t] = v
            keys.append(t if v == 0 else f"{t}#{v}")
        return keys

    def produced(self, top: str, key: str, shape) -> Tuple[int, ...]:
        self.shapes[key] = tuple(int(d) for d in shape)
        self.available[top] = key
        self.current[top] = key
        return self.shapes[key]


def _layer_class(lp, python_layers: str):
    """The registered class of ``lp``'s type (a bottomless Python layer may become a named input)."""
    from . import layers as L
    from .layers.input import PythonAsInput
    if lp.type == "Python" and python_layers == "as_input" and not len(lp.bottom):
        return PythonAsInput
    try:
        return L.get(lp.type, lp.name)
    except UnknownLayerType as e:
        if lp.type == "Python" and not len(lp.bottom):
            raise UnknownLayerType(f"{e}; or build with python_layers='as_input' to make "
                                   f"its tops {list(lp.top)} named inputs") from None
        raise


def _loss_weights(lp, module, path: Optional[str], where: str) -> List[Tuple[int, float]]:
    """(top index, weight) of the tops that count in the loss (Layer::SetLossWeights; a loss layer's
    top 0 defaults to 1)."""
    if len(lp.loss_weight) and len(lp.loss_weight) != len(lp.top):
        raise CaffeFormatError(f"loss_weight must be unspecified or specified once per top "
                               f"blob ({len(lp.top)} tops, {len(lp.loss_weight)} weights)", path, where)
    weights = list(lp.loss_weight) or ([1.0] + [0.0] * (len(lp.top) - 1)
                                       if getattr(module, "is_loss", False) and len(lp.top) else [])
    return [(i, float(w)) for i, w in enumerate(weights) if w != 0]


class Net(nn.Module):
    """A Caffe net; build with ``load_net``.  ``forward(**inputs)`` -> ``{output blob: tensor}``."""

    def __init__(self, param, phase: str = "TEST", stages: Sequence[str] = (), level: int = 0,
                 input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
                 python_layers: str = "refuse", path: Optional[str] = None):
        super().__init__()

        t0 = time.perf_counter()
        if phase not in PHASES:
            raise UnsupportedParameter(f"phase must be 'TRAIN' or 'TEST', got {phase!r}")
        if python_layers not in _PYTHON_MODES:
            raise UnsupportedParameter(f"python_layers must be one of {_PYTHON_MODES}, got {python_layers!r}")
        self.path = path
        self.name = param.name
        self.phase = phase
        # Net(file, phase, level, stages): the file's stages are kept, the arguments added.
        self.stages = list(param.state.stage) + [s for s in stages]
        self.level = int(level)
        self.force_backward = bool(param.force_backward)
        input_shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}

        kept = filter_layers(param, PHASES[phase], self.level, self.stages, path)
        self.layer_modules = nn.ModuleDict()
        self.layer_names: List[str] = []
        self.layer_types: List[str] = []
        self.bottom_names: "OrderedDict[str, List[str]]" = OrderedDict()
        self.top_names: "OrderedDict[str, List[str]]" = OrderedDict()
        self.inputs: List[str] = []
        self.loss_weights: "OrderedDict[str, float]" = OrderedDict()
        self.blob_shapes: "OrderedDict[str, Tuple[int, ...]]" = OrderedDict()
        self._steps: List[_Step] = []
        self.layer_params_proto: List = []   # the kept LayerParameters, in net order
        self.given_input_shapes = dict(input_shapes)
        self._layer_params: List[List[nn.Parameter]] = []
        self._learnable: List[nn.Parameter] = []
        self.param_info: List[dict] = []  # one per learnable param: layer, index, name, lr/decay
        owners: Dict[str, Tuple[int, int, int]] = {}  # ParamSpec.name -> (layer, index, learnable id)
        wiring = _Wiring(path)
        taken: set = set()
        used_input_shapes: set = set()
        for lp in kept:
            self._add_layer(lp, wiring, owners, taken, input_shapes, used_input_shapes, python_layers)
        unused = sorted(set(input_shapes) - used_input_shapes)
        if unused:
            raise ShapeError(f"input_shapes names {unused}, which are not inputs of this net "
                             f"(phase {phase}); its inputs are {self.inputs}")
        self.outputs: List[str] = sorted(wiring.available)
        self._output_keys = [wiring.available[n] for n in self.outputs]
        self._current_keys = OrderedDict((n, wiring.current[n]) for n in self.blob_shapes)
        self._last_loss_terms: List[Tuple[float, torch.Tensor]] = []
        self._finish_params()
        self.build_seconds = time.perf_counter() - t0

    def _add_layer(self, lp, wiring: "_Wiring", owners, taken: set, input_shapes, used_input_shapes: set,
                   python_layers: str) -> None:
        """One layer of Net::Init: class, wiring, module, top shapes, loss weights, params, step."""
        from . import layers as L
        from .layers.input import NetInput
        path, phase = self.path, self.phase
        where = f"layer {lp.name!r} (type {lp.type})"
        cls = _layer_class(lp, python_layers)
        L.check_arity(cls, lp.name, len(lp.bottom), len(lp.top))
        if len(lp.propagate_down) and len(lp.propagate_down) != len(lp.bottom):
            raise CaffeFormatError(f"propagate_down must be given either 0 or bottom_size "
                                   f"({len(lp.bottom)}) times, got {len(lp.propagate_down)}",
                                   path, where)
        bkeys, tkeys = wiring.bottoms(lp, where), wiring.tops(lp, where)
        bottom_shapes = [wiring.shapes[k] for k in bkeys]
        lay_phase = PHASE_NAMES.get(lp.phase, phase) if lp.HasField("phase") else phase
        if issubclass(cls, NetInput):
            mine = {t: input_shapes[t] for t in lp.top if t in input_shapes}
            used_input_shapes.update(mine)
            module = cls(lp, bottom_shapes, lay_phase, input_shapes=mine)
        else:
            module = cls(lp, bottom_shapes, lay_phase)
        if len(module.top_shapes) != len(lp.top):
            raise ShapeError(f"{where}: the implementation gave {len(module.top_shapes)} top "
                             f"shapes for {len(lp.top)} tops")
        for t, key, s in zip(lp.top, tkeys, module.top_shapes):
            check_shape(s, f"{where}: top {t!r}")   # before a forward pass allocates it
            self.blob_shapes[t] = wiring.produced(t, key, s)
        feeds = bool(getattr(module, "feeds_net", False))
        if feeds:
            self.inputs.extend(lp.top)
        loss = _loss_weights(lp, module, path, where)
        for i, w in loss:
            self.loss_weights[lp.top[i]] = w
        key = _module_key(lp.name, taken)
        self._append_params(lp, module, owners, where)
        self._append_layer(key, lp, module)
        stop = [not bool(p) for p in lp.propagate_down] if len(lp.propagate_down) else [False] * len(bkeys)
        self._steps.append(_Step(key, bkeys, tkeys, stop, list(lp.top), feeds, loss,
                                 callable(getattr(module, "reshape", None))))

    def _append_layer(self, key: str, lp, module) -> None:
        self.layer_modules[key] = module
        self.layer_names.append(lp.name)
        self.layer_params_proto.append(lp)
        self.layer_types.append(lp.type)
        self.bottom_names.setdefault(lp.name, list(lp.bottom))
        self.top_names.setdefault(lp.name, list(lp.top))

    # ------------------------------------------------------------------ params
    def _append_params(self, lp, module, owners, where) -> None:
        """Net::AppendParam for every blob of ``module``: own it, or share the named owner's."""
        blobs = list(module.blobs)
        if len(lp.param) > len(blobs):
            raise UnsupportedParameter(f"{where}: too many params specified for layer {lp.name!r} "
                                       f"({len(lp.param)} param specs, {len(blobs)} blobs)")
        layer_id = len(self._layer_params)
        mine: List[nn.Parameter] = []
        for i, p in enumerate(blobs):
            spec = lp.param[i] if i < len(lp.param) else caffe_pb2.ParamSpec()
            name = spec.name
            if not name or name not in owners:
                lid = len(self._learnable)
                if name:
                    owners[name] = (layer_id, i, lid)
                self._learnable.append(p)
                self.param_info.append({
                    "layer": lp.name, "index": i, "name": name,
                    "lr_mult": float(spec.lr_mult), "decay_mult": float(spec.decay_mult),
                    "has_lr_mult": spec.HasField("lr_mult"), "has_decay_mult": spec.HasField("decay_mult")})
                mine.append(p)
                continue
            o_layer, o_index, lid = owners[name]
            owner = self._layer_params[o_layer][o_index]
            o_name = self.layer_names[o_layer]
            if spec.share_mode == caffe_pb2.ParamSpec.PERMISSIVE:
                if owner.numel() != p.numel():
                    raise ShapeError(
                        f"{where}: cannot share param {name!r} owned by layer {o_name!r} with layer "
                        f"{lp.name!r}; count mismatch.  Owner layer param shape is "
                        f"{blob_shape_string(owner.shape)}; sharing layer shape is {blob_shape_string(p.shape)}")
                if tuple(owner.shape) != tuple(p.shape):
                    raise UnsupportedParameter(
                        f"{where}: PERMISSIVE sharing of param {name!r} between different shapes "
                        f"({blob_shape_string(owner.shape)} vs {blob_shape_string(p.shape)}) is not supported")
            elif tuple(owner.shape) != tuple(p.shape):
                raise ShapeError(
                    f"{where}: cannot share param {name!r} owned by layer {o_name!r} with layer "
                    f"{lp.name!r}; shape mismatch.  Owner layer param shape is "
                    f"{blob_shape_string(owner.shape)}; sharing layer expects shape {blob_shape_string(p.shape)}")
            info = self.param_info[lid]
            for what in ("lr_mult", "decay_mult"):
                if spec.HasField(what):
                    if info[f"has_{what}"] and float(getattr(spec, what)) != info[what]:
                        raise UnsupportedParameter(f"{where}: shared param {name!r} has mismatched {what}")
                    info[f"has_{what}"] = True
                    info[what] = float(getattr(spec, what))
            _swap_param(module, p, owner)
            mine.append(owner)
        self._layer_params.append(mine)

    def _finish_params(self) -> None:
        for p, info in zip(self._learnable, self.param_info):
            p.requires_grad_(self.force_backward or info["lr_mult"] != 0)

    def learnable_params(self) -> List[nn.Parameter]:
        """Caffe's ``learnable_params_``: each owned blob once, layers in net order, blobs in layer order."""
        return list(self._learnable)

    @property
    def layers(self) -> List[nn.Module]:
        return list(self.layer_modules.values())

    @property
    def blobs_by_layer(self) -> "OrderedDict[str, List[nn.Parameter]]":
        """Layer name -> its blobs (shared ones are the owner's objects); first layer of a name wins."""
        out: "OrderedDict[str, List[nn.Parameter]]" = OrderedDict()
        for name, ps in zip(self.layer_names, self._layer_params):
            out.setdefault(name, ps)
        return out

    @property
    def params(self) -> "OrderedDict[str, List[nn.Parameter]]":
        """Like pycaffe's ``net.params``: only layers that have blobs."""
        return OrderedDict((k, v) for k, v in self.blobs_by_layer.items() if v)

    def layer(self, name: str) -> nn.Module:
        """The first layer module called ``name``."""
        try:
            i = self.layer_names.index(name)
        except ValueError:
            raise KeyError(f"net has no layer {name!r}") from None
        return self._steps_module(i)

    def _steps_module(self, i: int) -> nn.Module:
        return self.layer_modules[self._steps[i].key]

    # ------------------------------------------------------------------ running
    def _bind(self, args, inputs) -> Dict[str, torch.Tensor]:
        vals: Dict[str, torch.Tensor] = {}
        if len(args) > len(self.inputs):
            raise TypeError(f"net takes {len(self.inputs)} input(s) {self.inputs}, got {len(args)} positional")
        for name, a in zip(self.inputs, args):
            vals[name] = a
        for name, a in inputs.items():
            if name not in self.inputs:
                raise TypeError(f"{name!r} is not an input of this net; inputs: {self.inputs}")
            if name in vals:
                raise TypeError(f"input {name!r} given twice")
            vals[name] = a
        missing = [n for n in self.inputs if n not in vals]
        if missing:
            raise TypeError(f"missing net input(s) {missing}; this net's inputs are {self.inputs}")
        return vals

    def _run(self, args, inputs) -> Dict[str, torch.Tensor]:
        given = self._bind(args, inputs)
        vals: Dict[str, torch.Tensor] = {}
        terms: List[Tuple[float, torch.Tensor]] = []
        for step in self._steps:
            module = self.layer_modules[step.key]
            if step.feeds:
                out = module(*[given[n] for n in step.names])
            else:
                bottoms = [vals[k].detach() if stop else vals[k] for k, stop in zip(step.bottoms, step.stop_grad)]
                if step.reshapes and _eager():
                    shapes = [tuple(b.shape) for b in bottoms]
                    if shapes != module.bottom_shapes:
                        module.reshape(shapes)   # Net::Forward -> Layer::Reshape on new input sizes
                out = module(*bottoms)
            if isinstance(out, torch.Tensor):
                out = (out,)
            for k, t in zip(step.tops, out):
                vals[k] = t
            for i, w in step.loss:
                terms.append((w, out[i]))
        if not torch.compiler.is_compiling():
            self._last_loss_terms = terms
        return vals

    def forward(self, *args, **inputs) -> Dict[str, torch.Tensor]:
        """Run the net; inputs by blob name (or positionally, in ``net.inputs`` order).

        Returns the net's output blobs (those no layer consumes) by name, in name order.
        """
        vals = self._run(args, inputs)
        return {n: vals[k] for n, k in zip(self.outputs, self._output_keys)}

    def forward_all(self, *args, **inputs) -> "OrderedDict[str, torch.Tensor]":
        """Every blob by its Caffe name, holding its last value (what ``net.blobs`` holds)."""
        vals = self._run(args, inputs)
        return OrderedDict((n, vals[k]) for n, k in self._current_keys.items())

    def loss(self, outputs: Optional[Mapping[str, torch.Tensor]] = None) -> torch.Tensor:
        """Caffe's total loss: sum over loss-weighted tops of weight * sum(top).

        Takes the tops from ``outputs`` (``forward``'s result) when they are there,
        else the values recorded by the last forward (a loss top later consumed).
        """
        if not self.loss_weights:
            raise CaffeCompatError("this net has no loss: no top has a non-zero loss_weight")
        if outputs is not None and all(n in outputs for n in self.loss_weights):
            total = None
            for n, w in self.loss_weights.items():
                term = w * outputs[n].sum()
                total = term if total is None else total + term
            return total
        if not self._last_loss_terms:
            raise CaffeCompatError(f"loss tops {list(self.loss_weights)} are not in the outputs given "
                                   f"and no forward has run")
        total = None
        for w, t in self._last_loss_terms:
            term = w * t.sum()
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, phase={self.phase}, inputs={self.inputs}, "
                f"outputs={self.outputs}, layers={len(self.layer_names)}")


def load_net(prototxt, weights=None, phase: str = "TEST", stages: Sequence[str] = (), level: int = 0,
             input_shapes: Optional[Mapping[str, Sequence[int]]] = None, strict: bool = True,
             python_layers: str = "refuse", tower: Optional[int] = None) -> Net:
    """Build the Caffe net ``prototxt`` (a path or a NetParameter) as a ``Net`` module.

    ``phase``/``stages``/``level``: the NetState deciding include/exclude rules.
    ``input_shapes``: blob name -> shape for net inputs (needed for Data/HDF5Data
    layers, overrides Input shapes).  ``weights``: a caffemodel path (or a list
    applied in order, like ``caffe train --weights a,b``), loaded with
    ``copy_trained_layers(strict=strict)``.  ``python_layers="as_input"`` turns
    bottomless ``Python`` layers (e.g. Fast R-CNN's data layer) into named inputs.
    ``tower=N`` loads tower N of a multi-tower training snapshot (``conv1_sN`` -> ``conv1``).
    """
    try:
        param, path = _read_param(prototxt)
    except CaffeCompatError as e:
        p = os.fspath(prototxt) if isinstance(prototxt, (str, os.PathLike)) else None
        if p is not None and sniff_text(p) is False:
            e.args = (f"{e} (this is a binary file, not a text prototxt; did you swap NET and WEIGHTS?)",)
        raise
    try:
        net = Net(param, phase=phase, stages=stages, level=level, input_shapes=input_shapes,
                  python_layers=python_layers, path=path)
    except CaffeCompatError as e:
        raise name_file(e, path)
    if weights is not None:
        from .weights import copy_trained_layers
        for w in ([weights] if isinstance(weights, (str, os.PathLike)) else list(weights)):
            try:
                copy_trained_layers(net, w, strict=strict, tower=tower)
            except CaffeCompatError as e:
                wp = os.fspath(w) if isinstance(w, (str, os.PathLike)) else None
                if wp is not None and sniff_text(wp):
                    e.args = (f"{e} (this is a text prototxt; did you swap NET and WEIGHTS?)",)
                raise name_file(e, wp)
    return net


__all__ = ["Net", "load_net", "state_meets_rule", "filter_layers", "PHASES"]
