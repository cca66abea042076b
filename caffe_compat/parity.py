"""Numerical parity of our nets against independent implementations.

Backends (each returns ``{caffe blob name: array}`` for one forward pass):

- ``opencv``: OpenCV 4.x ``cv2.dnn.readNetFromCaffe`` in this process.
- ``caffe``: the real pycaffe, in a subprocess run with the oracle's Python
  (``caffe_compat/_caffe_driver.py``); caffe is never imported here.
- ``onnxruntime``: our module exported with ``torch.onnx.export``.

Nothing heavy is imported at module import: cv2, torch and onnxruntime are
imported by the backend that needs them.
"""
from __future__ import annotations

import os
import tempfile
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .caffe_oracle import to_ceil_mode_text
from .errors import UnsupportedParameter
from .prototxt import format_text, parse_net_text

# ---------------------------------------------------------------- OpenCV dnn

# What OpenCV's Caffe importer does differently from Caffe (checked against
# the real Caffe in tests): shown next to the numbers so a mismatch that is
# OpenCV's is not read as ours.
OPENCV_DEVIATIONS = {
    "lrn_k": "OpenCV's LRN ignores lrn_param.k (uses k = 1)",
    "empty_window": ("a ceil-mode MAX pooling window lies wholly past the image: "
                     "Caffe gives -FLT_MAX there, OpenCV 0"),
}


def _final_writers(net) -> Dict[str, Tuple[int, int]]:
    """blob -> (layer index, top index) of the last layer writing it (in-place aware)."""
    last: Dict[str, Tuple[int, int]] = {}
    for li, lp in enumerate(net.layer):
        for ti, top in enumerate(lp.top):
            last[top] = (li, ti)
    return last


def opencv_forward(prototxt_text: str, caffemodel_path: str,
                   inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Every blob's final value after one OpenCV dnn forward pass.

    In-place layers (``top == bottom``) overwrite a blob, so a blob's value is
    read from the last layer that writes it.  OpenCV can only return a
    layer's first output, so a blob that is another top of its last writer is
    read through an appended identity ``Power`` layer.  Fusion is disabled so
    that every intermediate result is a real layer output.  Blobs OpenCV
    drops or renames beyond recognition are absent from the result.
    """
    import cv2  # only this backend needs it

    net, _info = parse_net_text(prototxt_text)
    if len(net.layers):
        raise UnsupportedParameter("opencv backend: legacy V1 'layers' net; upgrade it first "
                                   "(caffekt upgrade)")
    writers = _final_writers(net)
    probes: Dict[str, str] = {}
    by_layer: Dict[int, List[str]] = {}
    for blob, (li, ti) in writers.items():
        if ti > 0:
            by_layer.setdefault(li, []).append(blob)
    fed = type(net)()
    fed.CopyFrom(net)
    del fed.layer[:]
    for li, lp in enumerate(net.layer):
        fed.layer.add().CopyFrom(lp)
        for blob in by_layer.get(li, []):
            probe = fed.layer.add()
            probe.name = probes[blob] = f"{blob}__caffekt_probe"
            probe.type = "Power"
            probe.bottom.append(blob)
            probe.top.append(probe.name)
    text = to_ceil_mode_text(format_text(fed))

    with tempfile.TemporaryDirectory(prefix="caffekt-cv-") as d:
        path = os.path.join(d, "net.prototxt")
        with open(path, "w") as f:
            f.write(text)
        cvnet = cv2.dnn.readNetFromCaffe(path, caffemodel_path)
    cvnet.enableFusion(False)
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    for name, a in inputs.items():
        cvnet.setInput(np.ascontiguousarray(a, dtype=np.float32), name)

    known = set(cvnet.getLayerNames())
    wanted: List[Tuple[str, str]] = []  # (caffe blob, opencv layer)
    for blob, (li, ti) in writers.items():
        lp = net.layer[li]
        if lp.type == "Input":
            continue
        if ti > 0:
            cv_name = probes[blob]
        elif lp.name in known:
            cv_name = lp.name
        elif lp.top[0] in known:  # the importer names some layers after their top
            cv_name = lp.top[0]
        else:
            continue
        if cv_name in known:
            wanted.append((blob, cv_name))
    outs = cvnet.forward([cv for _, cv in wanted]) if wanted else []
    result = {name: np.asarray(a, dtype=np.float32).copy() for name, a in inputs.items()}
    for (blob, _cv), arr in zip(wanted, outs):
        result[blob] = np.asarray(arr).copy()
    return result


def opencv_deviation_notes(prototxt_text: str, shapes: Mapping[str, Sequence[int]]) -> Dict[str, str]:
    """Layer name -> why OpenCV is expected to differ there (see ``OPENCV_DEVIATIONS``).

    ``shapes`` gives each blob's shape (from our own forward pass), needed to
    find pooling windows that ceil rounding places wholly past the image.
    """
    net, _ = parse_net_text(prototxt_text)
    notes: Dict[str, str] = {}
    for lp in net.layer:
        if lp.type == "LRN" and lp.lrn_param.k != 1.0:
            notes[lp.name] = OPENCV_DEVIATIONS["lrn_k"] + f" (k = {lp.lrn_param.k:g})"
        elif lp.type == "Pooling" and lp.bottom and lp.bottom[0] in shapes:
            if _has_empty_window(lp.pooling_param, shapes[lp.bottom[0]]):
                notes[lp.name] = OPENCV_DEVIATIONS["empty_window"]
    return notes


def _has_empty_window(pp, shape: Sequence[int]) -> bool:
    """Whether Caffe's ceil rounding leaves a MAX window wholly past the image end.

    pooling_layer.cpp only drops the last window when there is padding, so
    with ``pad: 0`` and stride > kernel a window can start at or after the
    end; Caffe's max over nothing is -FLT_MAX, OpenCV's is 0.
    """
    if pp.global_pooling or len(shape) != 4 or pp.round_mode != pp.CEIL or pp.pool != pp.MAX:
        return False
    k_hw = (pp.kernel_h or pp.kernel_size, pp.kernel_w or pp.kernel_size)
    s_hw = (pp.stride_h or pp.stride, pp.stride_w or pp.stride)
    p_hw = (pp.pad_h or pp.pad, pp.pad_w or pp.pad)
    for size, k, st, p in zip(shape[2:], k_hw, s_hw, p_hw):
        n = -(-(size + 2 * p - k) // st) + 1
        if p and (n - 1) * st >= size + p:  # Caffe drops this window itself
            n -= 1
        if (n - 1) * st - p >= size:
            return True
    return False
