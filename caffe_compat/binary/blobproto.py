"""binaryproto files: one BlobProto (mean files)."""
from __future__ import annotations

from typing import Optional

import numpy as np

from .. import wire
from ..files import atomic_output
from ..errors import UnsupportedParameter
from .blobs import (B_CHANNELS, B_DATA, B_HEIGHT, B_NUM, B_WIDTH, CAFFE_MAX_BYTES, F32, _blob_out, _check_size,
                    decode_blob)


# ================================================================ binaryproto (mean files)

def parse_blobproto(buf, path: Optional[str] = None) -> np.ndarray:
    """Decode one ``BlobProto`` into a writable float32 array shaped as Caffe would."""
    arr = decode_blob(buf, 0, len(buf), path, "blob").data
    return arr.copy() if not arr.flags.writeable else arr


def read_blobproto(path: str) -> np.ndarray:
    """Read a ``.binaryproto`` mean file (small: read whole, returned writable)."""
    with open(path, "rb") as f:
        return parse_blobproto(f.read(), path)


def encode_blobproto(array, *, legacy_4d: bool = False) -> bytes:
    """``BlobProto`` bytes for ``array``: ``shape`` + packed ``data``, like ``Blob::ToProto``.

    ``legacy_4d`` writes num/channels/height/width instead (right-aligned,
    padded with 1), the form ``tools/compute_image_mean.cpp`` produces.
    """
    arr = np.ascontiguousarray(array, dtype=F32)
    if not legacy_4d:
        b = _blob_out(arr, "blob")
        return b.head + arr.tobytes() + b.tail
    if arr.ndim > 4:
        raise UnsupportedParameter(f"legacy 4-D blob dims cannot hold shape {list(arr.shape)}")
    dims = (1,) * (4 - arr.ndim) + arr.shape
    out = b"".join(wire.field_varint(k, d) for k, d in zip((B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH), dims))
    return out + (wire.field_bytes(B_DATA, arr.tobytes()) if arr.size else b"")


def write_blobproto(path: str, array, *, legacy_4d: bool = False) -> None:
    """Write one blob (e.g. a mean image) as a ``.binaryproto``, atomically."""
    data = encode_blobproto(array, legacy_4d=legacy_4d)
    _check_size(len(data), path, CAFFE_MAX_BYTES)
    with atomic_output(path) as f:
        f.write(data)
