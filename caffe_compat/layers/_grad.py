"""Forward value from one expression, gradient from another (export-safe).

Where Caffe's backward is not the exact derivative of its forward (a clamp
inside a log whose gradient Caffe ignores, say), ``straight_through`` keeps
Caffe's forward value while autograd differentiates ``surrogate``.  It is plain
tensor arithmetic, so torch.onnx.export / torch.export see no Python branches.
"""
from __future__ import annotations

import torch


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """``value`` in the forward pass, ``d surrogate`` in the backward pass."""
    return surrogate + (value - surrogate).detach()
