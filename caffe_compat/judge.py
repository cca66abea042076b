"""Verdicts anchored on float64: is a float32 result within float32 rounding of the exact one?

Two float32 implementations of one graph (ours in PyTorch, OpenCV dnn,
onnxruntime, Caffe) sum in different orders, so they differ by rounding that
grows with the net's depth and fan-in; a fixed tolerance cannot tell that from
a real error.  So every comparison also runs our module in float64 on the
same input (``float64_forward``) and measures both float32 results against
it, relative to the blob's scale (its largest finite float64 magnitude):

    ours  = max|ours32 - f64| / scale      (the rounding our own float32 run shows)
    other = max|other32 - f64| / scale

and the other side agrees when ``other <= floor + slack * ours`` (``floor``
= ``rtol + atol / scale``).  Places where a float32 side is not finite (an
overflow, Caffe's -FLT_MAX in an empty pooling window, NaN) are compared
exactly against our float32 value instead.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Tuple

import numpy as np

DEFAULT_SLACK = 16.0   # other side may show this many times our own float32 rounding (OpenCV's
                       # Winograd 3x3 convolutions reach ~8x on CaffeNet)
DEFAULT_RTOL = 1e-5    # plus this much of the blob's scale: OpenCV's fast 3x3 convolutions reach
                       # 4e-6 of it on a 27-term conv where our own rounding is 1.6e-7
DEFAULT_ATOL = 0.0


@dataclass
class Distances:
    """One blob judged: distances are relative to ``scale``; ``limit`` is what ``other`` may reach."""
    scale: float
    ours: float
    other: float
    limit: float

    @property
    def ok(self) -> bool:
        return bool(self.other <= self.limit)


def float64_forward(net, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every blob of a float64 copy of ``net`` (eval mode) on ``inputs`` (cast to float64).

    The copy holds the same float32 weights exactly; only the arithmetic is wider.
    """
    import torch

    twin = copy.deepcopy(net).double().eval()
    feed = {k: torch.from_numpy(np.asarray(v, dtype=np.float64)) for k, v in inputs.items()}
    with torch.no_grad():
        out = twin.forward_all(**feed)
    return {k: v.detach().cpu().numpy() for k, v in out.items()}


def judge(ours32: np.ndarray, other32: np.ndarray, exact: np.ndarray,
          rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL,
          slack: float = DEFAULT_SLACK) -> Distances:
    """``other32`` against the float64 ``exact``, given the rounding ``ours32`` shows (same shapes)."""
    a = np.asarray(ours32, dtype=np.float64)
    b = np.asarray(other32, dtype=np.float64)
    x = np.asarray(exact, dtype=np.float64)
    finite = np.isfinite(a) & np.isfinite(x)
    # where our float32 value is not finite, or float64 says so, the other must match ours exactly
    special = ~finite
    same = (a == b) | (np.isnan(a) & np.isnan(b))
    if np.any(special & ~same):
        return Distances(_scale(x, finite), 0.0, float("inf"), 0.0)
    scale = _scale(x, finite)
    ours = _dist(a, x, finite, scale)
    with np.errstate(invalid="ignore", over="ignore"):
        other = _dist(b, x, finite, scale) if np.all(np.isfinite(b[finite])) else float("inf")
    limit = rtol + atol / scale + slack * ours
    return Distances(scale, ours, other, limit)


def _scale(x: np.ndarray, finite: np.ndarray) -> float:
    s = float(np.max(np.abs(x[finite]))) if finite.any() else 0.0
    return s if s > 0 else 1.0   # an all-zero blob: distances are absolute


def _dist(y: np.ndarray, x: np.ndarray, where: np.ndarray, scale: float) -> float:
    if not where.any():
        return 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        d = float(np.max(np.abs(y[where] - x[where]))) / scale
    return d if np.isfinite(d) else float("inf")


# layers whose second bottom holds class labels: type -> the LayerParameter field with their axis
LABEL_READERS = {"Accuracy": "accuracy_param", "SoftmaxWithLoss": "softmax_param",
                 "MultinomialLogisticLoss": None, "InfogainLoss": "softmax_param", "HingeLoss": None}


def label_inputs(net) -> Dict[str, int]:
    """Net input -> number of classes, for inputs read as labels (random labels must be classes)."""
    out: Dict[str, int] = {}
    for lp in net.layer_params_proto:
        if lp.type in LABEL_READERS and len(lp.bottom) > 1 and lp.bottom[1] in net.inputs:
            field = LABEL_READERS[lp.type]
            axis = int(getattr(lp, field).axis) if field else 1
            shape = net.blob_shapes.get(lp.bottom[0], ())
            if shape and -len(shape) <= axis < len(shape):
                out[lp.bottom[1]] = max(1, int(shape[axis]))
    return out


def roi_inputs(net) -> Dict[str, str]:
    """Net input -> the input holding the images, for inputs read as ROIs (ROIPooling's bottom[1])."""
    return {lp.bottom[1]: lp.bottom[0] for lp in net.layer_params_proto
            if lp.type == "ROIPooling" and len(lp.bottom) > 1 and lp.bottom[1] in net.inputs}


def _image_size(net, batch: Optional[int]) -> Tuple[int, int, int]:
    """(batch, H, W) of the first 4-axis input: where random ROIs lie."""
    for n in net.inputs:
        s = net.blob_shapes[n]
        if len(s) == 4:
            return (batch or s[0], s[2], s[3])
    return (batch or 1, 1, 1)


def random_inputs(net, seed: int, batch: Optional[int] = None) -> Dict[str, np.ndarray]:
    """Seeded float32 inputs, one per net input: N(0, 1), uniform classes for label inputs,
    boxes inside the image (with a valid batch index) for ROI inputs.

    ``batch`` replaces axis 0 of every input's shape.
    """
    rng = np.random.default_rng(seed)
    labels, rois = label_inputs(net), roi_inputs(net)
    out = {}
    for n in net.inputs:
        shape = tuple(net.blob_shapes[n])
        if batch is not None and shape:
            shape = (batch,) + shape[1:]
        if n in labels:
            out[n] = rng.integers(0, labels[n], size=shape).astype(np.float32)
        elif n in rois and len(shape) >= 1 and int(np.prod(shape)) % 5 == 0:
            out[n] = _random_rois(rng, int(np.prod(shape)) // 5, _image_size(net, batch)).reshape(shape)
        else:
            out[n] = rng.standard_normal(shape).astype(np.float32)
    return out


def _random_rois(rng, k: int, nhw: Tuple[int, int, int]) -> np.ndarray:
    n, h, w = nhw
    idx = rng.integers(0, max(1, n), size=k)
    x1, y1 = rng.uniform(0, w / 2, size=k), rng.uniform(0, h / 2, size=k)
    x2, y2 = x1 + rng.uniform(0, w / 2, size=k), y1 + rng.uniform(0, h / 2, size=k)
    return np.floor(np.stack([idx, x1, y1, x2, y2], 1)).astype(np.float32)


def input_laws(net) -> Dict[str, str]:
    """Input -> the law ``random_inputs`` draws it from."""
    labels, rois = label_inputs(net), roi_inputs(net)
    return {n: f"integer classes U{{0..{labels[n] - 1}}}" if n in labels else
            "boxes (batch index, x1, y1, x2, y2) inside the image" if n in rois else "N(0, 1)"
            for n in net.inputs}


def describe_inputs(inputs: Mapping[str, np.ndarray], law, seed: Optional[int]) -> str:
    """One line per input: its shape, the law it was drawn from, and what it holds."""
    lines = []
    for k, v in inputs.items():
        v = np.asarray(v, dtype=np.float64)
        stats = (f"mean {v.mean():.3g}, std {v.std():.3g}, min {v.min():.3g}, max {v.max():.3g}"
                 if v.size else "empty")
        where = f", seed {seed}" if seed is not None else ""
        lines.append(f"input {k} {'x'.join(map(str, v.shape))}: {law.get(k, 'N(0, 1)') if isinstance(law, dict) else law}"
                     f" float32{where} ({stats})")
    return "\n".join(lines)


__all__ = ["Distances", "float64_forward", "judge", "describe_inputs", "random_inputs", "label_inputs",
           "input_laws",
           "DEFAULT_SLACK", "DEFAULT_RTOL", "DEFAULT_ATOL"]
