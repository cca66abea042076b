"""Layers whose tops come from outside the graph: net inputs, and DummyData.

Caffe's data layers read databases, image lists or HDF5 files in a prefetch
thread.  In caffekt their tops are *named inputs* of the net instead: the
caller feeds tensors by blob name (``net(data=x, label=y)``) and the reading is
done by the data pipeline (``caffekt.kt``), not by the graph.  Only the shapes
are taken from the layer, as each Caffe layer's ``DataLayerSetUp`` would set them:

* ``Input`` (input_layer.cpp): ``input_param.shape``, once or once per top.
* ``Data`` (data_layer.cpp): (batch_size, C, crop, crop) with crop from
  ``transform_param.crop_size``; C (and H, W without a crop) live in the
  database, so ``input_shapes`` must give them.  The Jigsaw++ fork's variant
  (``transform_param.siamese_size``/``patch_size``) yields
  (batch_size, siamese_size*C, patch, patch).  Label: (batch_size,).
* ``ImageData`` (image_data_layer.cpp): (batch_size, 3 if is_color else 1,
  crop or new_height, crop or new_width); label (batch_size,).
* ``WindowData`` (window_data_layer.cpp): (batch_size, 3, crop, crop); label (batch_size,).
* ``MemoryData`` (memory_data_layer.cpp): (batch_size, channels, height, width); label (batch_size,).
* ``HDF5Data`` (hdf5_data_layer.cpp): shapes are in the files -> ``input_shapes``.
* ``Python`` with ``load_net(..., python_layers="as_input")``: shapes from ``input_shapes``.

``input_shapes`` (blob name -> shape) always wins over what the layer says.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from ..errors import ShapeError, UnsupportedParameter
from ._registry import register
from .base import CaffeLayer
from .fillers import fill

Shape = Tuple[int, ...]


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


class NetInput(CaffeLayer):
    """A layer whose tops the caller feeds; ``forward`` passes the fed tensors through.

    Subclasses implement ``declared_shapes()``: one entry per top, a full shape
    tuple, or a tuple with ``None`` where the layer cannot know a dimension,
    or ``None`` when it knows nothing.
    """

    feeds_net = True  # the net builder turns these tops into named inputs

    def __init__(self, lp, bottom_shapes, phase="TEST", input_shapes: Optional[Mapping[str, Sequence[int]]] = None):
        super().__init__(lp, bottom_shapes, phase)
        given = dict(input_shapes or {})
        declared = self.declared_shapes()
        shapes: List[Shape] = []
        missing: Dict[str, str] = {}
        for i, top in enumerate(lp.top):
            if top in given:
                shape = tuple(int(d) for d in given[top])
                if any(d < 0 for d in shape):
                    raise ShapeError(f"layer {self.layer_name!r} (type {self.caffe_type}): "
                                     f"input_shapes[{top!r}] = {list(shape)} has a negative dimension")
                shapes.append(shape)
                continue
            d = declared[i] if i < len(declared) else None
            if d is None or any(x is None for x in d):
                missing[top] = _fmt(["?" if x is None else x for x in d]) if d is not None else "(...)"
                continue
            shapes.append(tuple(int(x) for x in d))
        if missing:
            want = ", ".join(f"{k!r}: {v}" for k, v in missing.items())
            raise ShapeError(
                f"layer {self.layer_name!r} (type {self.caffe_type}) becomes a net input, and the "
                f"shape of its top(s) {', '.join(repr(k) for k in missing)} cannot be told from the "
                f"prototxt{self.shape_hint()}: pass input_shapes={{{want}}} with the '?' filled in")
        self.top_shapes = shapes

    def declared_shapes(self) -> List[Optional[tuple]]:
        return []

    def shape_hint(self) -> str:
        return ""

    def forward(self, *tensors):
        return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _with_label(lp, data_shape: tuple, batch) -> List[Optional[tuple]]:
    # Caffe's data layers give the label top the shape (batch_size,).
    out: List[Optional[tuple]] = [data_shape]
    if len(lp.top) > 1:
        out.append((batch,))
    return out


@register("Input", bottoms=0, tops=(1, None))
class Input(NetInput):
    """Input (input_layer.cpp): top[i] has shape input_param.shape[0 if one shape else i]."""

    def declared_shapes(self):
        shapes = list(self.lp.input_param.shape)
        n = len(self.lp.top)
        if len(shapes) not in (0, 1, n):
            raise UnsupportedParameter(
                f"layer {self.layer_name!r} (type Input): input_param.shape must be given once, "
                f"once per top blob, or not at all: {n} tops vs. {len(shapes)} shapes")
        if not shapes:
            return [None] * n
        return [tuple(int(d) for d in shapes[0 if len(shapes) == 1 else i].dim) for i in range(n)]


@register("Data", bottoms=0, tops=(1, 2))
class Data(NetInput):
    """Data (data_layer.cpp): (batch_size, C, crop, crop), C and uncropped H, W from the database."""

    def declared_shapes(self):
        tp, dp = self.lp.transform_param, self.lp.data_param
        batch = int(dp.batch_size) or None
        siamese = int(getattr(tp, "siamese_size", 1) or 1)
        patch = int(getattr(tp, "patch_size", 0) or 0)
        if siamese > 1 or patch > 0:  # Jigsaw++ fork: stacked tiles
            side = patch or int(tp.crop_size) or None
            return _with_label(self.lp, (batch, None, side, side), batch)
        crop = int(tp.crop_size) or None
        return _with_label(self.lp, (batch, None, crop, crop), batch)

    def shape_hint(self):
        tp = self.lp.transform_param
        siamese = int(getattr(tp, "siamese_size", 1) or 1)
        if siamese > 1:
            return (f" (the channels are siamese_size {siamese} x the database's channels, "
                    f"e.g. {3 * siamese} for colour tiles)")
        return " (the channels, and H, W without crop_size, live in the database)"


@register("ImageData", bottoms=0, tops=(1, 2))
class ImageData(NetInput):
    """ImageData (image_data_layer.cpp): (batch, 3|1, crop or new_height, crop or new_width)."""

    def declared_shapes(self):
        p, tp = self.lp.image_data_param, self.lp.transform_param
        batch = int(p.batch_size) or None
        c = 3 if p.is_color else 1
        crop = int(tp.crop_size)
        h = crop or int(p.new_height) or None
        w = crop or int(p.new_width) or None
        return _with_label(self.lp, (batch, c, h, w), batch)


@register("WindowData", bottoms=0, tops=(1, 2))
class WindowData(NetInput):
    """WindowData (window_data_layer.cpp): (batch_size, 3, crop_size, crop_size)."""

    def declared_shapes(self):
        batch = int(self.lp.window_data_param.batch_size) or None
        crop = int(self.lp.transform_param.crop_size) or None
        return _with_label(self.lp, (batch, 3, crop, crop), batch)


@register("MemoryData", bottoms=0, tops=(1, 2))
class MemoryData(NetInput):
    """MemoryData (memory_data_layer.cpp): (batch_size, channels, height, width)."""

    def declared_shapes(self):
        p = self.lp.memory_data_param
        batch = int(p.batch_size) or None
        dims = (batch, int(p.channels) or None, int(p.height) or None, int(p.width) or None)
        return _with_label(self.lp, dims, batch)


@register("HDF5Data", bottoms=0, tops=(1, None))
class HDF5Data(NetInput):
    """HDF5Data (hdf5_data_layer.cpp): top i is dataset ``top[i]``; shapes live in the files."""

    def declared_shapes(self):
        batch = int(self.lp.hdf5_data_param.batch_size) or None
        return [(batch, None)] * len(self.lp.top)

    def shape_hint(self):
        return " (HDF5Data shapes live in the .h5 files)"


class PythonAsInput(NetInput):
    """A ``Python`` layer without bottoms, turned into named inputs (``python_layers="as_input"``)."""

    caffe_type = "Python"
    bottom_arity = 0
    top_arity = (1, None)

    def declared_shapes(self):
        return [None] * len(self.lp.top)

    def shape_hint(self):
        p = self.lp.python_param
        return f" (Python layer {p.module}.{p.layer} computes them at run time)"


@register("DummyData", bottoms=0, tops=(1, None))
class DummyData(CaffeLayer):
    """DummyData (dummy_data_layer.cpp): top i ~ data_filler[0 or i] over shape[0 or i] (or legacy dims).

    A constant filler is applied once (a buffer); any other filler draws anew at
    every forward, as Caffe's ``refill_`` does.
    """

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.dummy_data_param
        n = len(lp.top)
        where = f"layer {self.layer_name!r} (type DummyData)"
        nf = len(p.data_filler)
        if nf not in (0, 1, n):
            raise UnsupportedParameter(f"{where}: number of data fillers must be 0, 1 or equal to "
                                       f"the number of tops: {n}; you specified {nf} data fillers")
        legacy = len(p.num) or len(p.channels) or len(p.height) or len(p.width)
        shapes: List[Shape] = []
        if legacy:
            if len(p.shape):
                raise UnsupportedParameter(f"{where}: both shape and legacy fields were specified")
            fields = {}
            for f in ("num", "channels", "height", "width"):
                vals = list(getattr(p, f))
                if len(vals) not in (1, n):
                    raise UnsupportedParameter(f"{where}: must specify {f!r} once, or once per top "
                                               f"blob ({n}); specified {len(vals)}")
                fields[f] = vals
            for i in range(n):
                shapes.append(tuple(int(fields[f][0 if len(fields[f]) == 1 else i])
                                    for f in ("num", "channels", "height", "width")))
        else:
            if len(p.shape) not in (1, n):
                raise UnsupportedParameter(f"{where}: must specify 'shape' once, or once per top "
                                           f"blob ({n}); specified {len(p.shape)}")
            for i in range(n):
                shapes.append(tuple(int(d) for d in p.shape[0 if len(p.shape) == 1 else i].dim))
        self.top_shapes = shapes
        self._fillers = [p.data_filler[0 if nf == 1 else i] if nf else None for i in range(n)]
        self._constant = []
        for i, (shape, fp) in enumerate(zip(shapes, self._fillers)):
            const = fp is None or fp.type == "constant"
            self._constant.append(const)
            t = torch.zeros(shape)
            if fp is not None and const:
                fill(t, fp, layer_name=self.layer_name)
            self.register_buffer(f"top{i}", t, persistent=False)

    def forward(self):
        outs = []
        for i, shape in enumerate(self.top_shapes):
            if self._constant[i]:
                outs.append(getattr(self, f"top{i}"))
            else:
                outs.append(fill(torch.empty(shape), self._fillers[i], layer_name=self.layer_name))
        return outs[0] if len(outs) == 1 else tuple(outs)
