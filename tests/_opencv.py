"""OpenCV dnn as a second, independent oracle for Caffe nets.

``opencv_forward(prototxt_text, caffemodel_path, inputs) -> {blob: array}``
runs ``cv2.dnn.readNetFromCaffe`` (opencv-python-headless 4.x) and returns
every blob's final value; it lives in ``caffe_compat.parity`` because
``caffekt parity --backend opencv`` uses the same code.

Known deviations of OpenCV from Caffe (do not compare these blindly; the
test suite pins each one against the real Caffe):

- LRN: ``lrn_param.k`` is ignored (OpenCV always uses k = 1).
- Pooling, ceil rounding with ``pad: 0`` and stride > kernel: the last
  window can start past the image end.  Caffe's MAX over that empty window
  is -FLT_MAX (-3.4028235e38), OpenCV's is 0.
- OpenCV's Caffe schema has no ``round_mode``: the text is rewritten to the
  ``ceil_mode: true|false`` spelling before it is fed to OpenCV.
- Only a layer's first top can be read; other tops are read through an
  appended identity ``Power`` layer.
"""
from __future__ import annotations

import pytest

from caffe_compat.parity import (OPENCV_DEVIATIONS, opencv_deviation_notes,  # noqa: F401
                                 opencv_forward)


def require_opencv():
    """The cv2 module, or a skip when the test extra is not installed."""
    return pytest.importorskip("cv2")
