"""A line-by-line NumPy port of the two per-image loops of src/caffe/data_transformer.cpp.

The independent oracle for ``caffe_compat.data.DataTransformer``: plain index
arithmetic, one element at a time, with the crop offsets and the mirror flag
injected (no randomness).  ``dtype`` is the arithmetic type: float32 is
Caffe's own ``Dtype`` (results must match bit for bit), float64 a wider check.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


def _mean_values(mean_values: Sequence[float], channels: int, dtype) -> list:
    vals = [dtype(v) for v in mean_values]
    if len(vals) == 1:
        vals = vals * channels   # Caffe replicates a single mean_value
    return vals


def datum_path(data: np.ndarray, crop: int, h_off: int, w_off: int, mirror: bool,
               mean: Optional[np.ndarray], mean_values: Sequence[float], scale: float,
               dtype=np.float64) -> np.ndarray:
    """``Transform(const Datum&, Dtype*)``: ``data`` is C x H x W (uint8 or float)."""
    C, H, W = data.shape
    flat = data.reshape(-1)
    mflat = None if mean is None else np.asarray(mean).reshape(-1)
    height, width = (crop, crop) if crop else (H, W)
    mv = _mean_values(mean_values, C, dtype)
    out = np.zeros(C * height * width, dtype=dtype)
    s = dtype(scale)
    for c in range(C):
        for h in range(height):
            for w in range(width):
                data_index = (c * H + h_off + h) * W + w_off + w
                if mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                e = dtype(flat[data_index])
                if mflat is not None:
                    out[top_index] = (e - dtype(mflat[data_index])) * s
                elif mv:
                    out[top_index] = (e - mv[c]) * s
                else:
                    out[top_index] = e * s
    return out.reshape(C, height, width)


def mat_path(img: np.ndarray, crop: int, h_off: int, w_off: int, mirror: bool,
             mean: Optional[np.ndarray], mean_values: Sequence[float], scale: float,
             dtype=np.float64) -> np.ndarray:
    """``Transform(const cv::Mat&, Blob*)``: ``img`` is H x W x C uint8, read row by row as ``ptr<uchar>``."""
    if img.ndim == 2:
        img = img[:, :, None]
    H, W, C = img.shape
    mflat = None if mean is None else np.asarray(mean).reshape(-1)
    height, width = (crop, crop) if crop else (H, W)
    mv = _mean_values(mean_values, C, dtype)
    out = np.zeros(C * height * width, dtype=dtype)
    s = dtype(scale)
    for h in range(height):
        row = img[h_off + h].reshape(-1)          # the cropped row's pixels, channels interleaved
        img_index = w_off * C
        for w in range(width):
            for c in range(C):
                if mirror:
                    top_index = (c * height + h) * width + (width - 1 - w)
                else:
                    top_index = (c * height + h) * width + w
                pixel = dtype(row[img_index])
                img_index += 1
                if mflat is not None:
                    mean_index = (c * H + h_off + h) * W + w_off + w
                    out[top_index] = (pixel - dtype(mflat[mean_index])) * s
                elif mv:
                    out[top_index] = (pixel - mv[c]) * s
                else:
                    out[top_index] = pixel * s
    return out.reshape(C, height, width)
