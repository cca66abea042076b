"""``CaffeLayer``: what every registered layer implementation looks like.

A layer is built from its ``LayerParameter`` (``lp``), the shapes of its
bottom blobs and the phase, as Caffe's ``Layer::SetUp`` + ``Reshape`` are:

* ``__init__`` reads ``lp.<type>_param``, validates it (raising
  ``UnsupportedParameter``/``ShapeError`` that name the layer), creates the
  learnable blobs in caffemodel order with ``add_blob`` and sets
  ``self.top_shapes`` (one tuple per top).
* ``forward(*bottoms)`` returns one tensor, or a tuple of tensors for several
  tops.  No Python control flow may depend on tensor values (the net must
  export through ``torch.onnx.export``/``torch.export``).
* A layer whose forward depends on set-up values computed from the bottom
  shapes (e.g. Pooling's output size, a loss's divisor) defines
  ``reshape(bottom_shapes)``, Caffe's ``Layer::Reshape``: the net calls it
  when a bottom arrives with another shape than the last one (Fast R-CNN
  feeds a differently sized image and ROI count each iteration).  Layers
  that read every size from their inputs need none.
* A loss layer sets ``is_loss = True``; its first top gets ``loss_weight`` 1 by
  default, as in Caffe.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
from torch import nn

Shape = Tuple[int, ...]


class CaffeLayer(nn.Module):
    caffe_type: str = ""
    bottom_arity = 1
    top_arity = 1
    is_loss: bool = False

    def __init__(self, lp, bottom_shapes: Sequence[Sequence[int]], phase: str = "TEST"):
        super().__init__()
        self.lp = lp
        self.layer_name = lp.name
        self.phase = phase
        self.bottom_shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        self.top_shapes: list[Shape] = []
        # Learnable blobs, in the order Caffe stores them in a caffemodel.
        self.blobs = nn.ParameterList()

    def add_blob(self, shape: Sequence[int], filler=None) -> nn.Parameter:
        """Append a learnable blob of ``shape`` filled by ``filler`` (a FillerParameter or None=zeros)."""
        from .fillers import fill

        from ..budget import check_shape

        shape = tuple(int(d) for d in shape)
        check_shape(shape, f"layer {self.layer_name!r} (type {self.caffe_type}): learnable blob "
                           f"{len(self.blobs)}")
        # every filler writes each value, so skip zeroing first (half the build time of AlexNet)
        data = torch.zeros(shape) if filler is None else torch.empty(shape, dtype=torch.float32)
        if filler is not None:
            fill(data, filler, layer_name=self.layer_name)
        p = nn.Parameter(data)
        self.blobs.append(p)
        return p

    def extra_repr(self) -> str:
        return f"name={self.layer_name!r}, type={self.caffe_type}"
