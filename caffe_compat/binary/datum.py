"""Datum records (the values of a Caffe LMDB): raw C x H x W bytes or an encoded image."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .. import wire
from ..errors import BadPayload, UnsupportedParameter, WireFormatError
from ..wire import I32, LEN, VARINT
from .blobs import F32, _add_run, _materialize, _Runs


# ================================================================ Datum

D_CHANNELS, D_HEIGHT, D_WIDTH, D_DATA, D_LABEL, D_FLOAT, D_ENCODED = 1, 2, 3, 4, 5, 6, 7


@dataclass
class Datum:
    """One ``Datum`` (the LMDB/LevelDB record of Caffe's data layers)."""

    channels: int = 0
    height: int = 0
    width: int = 0
    data: bytes = b""                 # raw uint8 C*H*W, or an encoded image when ``encoded``
    label: Optional[int] = None
    float_data: Optional[np.ndarray] = None
    encoded: bool = False

    def to_array(self) -> np.ndarray:
        """The pixels as C x H x W: uint8 from ``data``, else float32 from ``float_data``.

        Mirrors DataTransformer's reading order (src/caffe/data_transformer.cpp):
        ``data`` if non-empty, otherwise ``float_data``.  Encoded images must
        be decoded by the caller (e.g. ``cv2.imdecode``).
        """
        if self.encoded:
            raise UnsupportedParameter("Datum holds an encoded image; decode its bytes (cv2.imdecode)")
        shape = (self.channels, self.height, self.width)
        n = math.prod(shape)
        src = np.frombuffer(self.data, dtype=np.uint8) if self.data else (
            self.float_data if self.float_data is not None else np.zeros(0, np.float32))
        if src.size != n or min(shape) < 0:
            raise BadPayload(f"Datum is {self.channels}x{self.height}x{self.width} ({n} values) "
                             f"but holds {src.size}")
        return src.reshape(shape)


def encode_datum(data, label: Optional[int] = None, *, encoded: bool = False,
                 shape: Optional[Tuple[int, int, int]] = None) -> bytes:
    """Serialize a Datum byte-for-byte as protobuf would.

    ``data``: a C x H x W uint8 array (stored in ``data``), a float array
    (stored in unpacked ``float_data``, as caffe.proto declares it), or bytes
    with ``encoded=True`` (an image file passed through; ``shape`` optional).
    """
    out = []
    if encoded or isinstance(data, (bytes, bytearray, memoryview)):
        payload = bytes(data)
        dims = shape
    else:
        arr = np.asarray(data)
        if arr.ndim != 3:
            raise UnsupportedParameter(f"Datum needs a C x H x W array, got shape {list(arr.shape)}")
        dims = arr.shape
        payload = np.ascontiguousarray(arr).tobytes() if arr.dtype == np.uint8 else None
        floats = None if payload is not None else np.ascontiguousarray(arr, dtype=F32).reshape(-1)
    if dims is not None:
        out += [wire.field_varint(k, d) for k, d in zip((D_CHANNELS, D_HEIGHT, D_WIDTH), dims)]
    if payload is not None:
        out.append(wire.field_bytes(D_DATA, payload))
    if label is not None:
        out.append(wire.field_varint(D_LABEL, label))
    if payload is None:
        # unpacked repeated float: a 1-byte tag before every value, built without a Python loop
        rec = np.empty((floats.size, 5), dtype=np.uint8)
        rec[:, 0] = (D_FLOAT << 3) | I32
        rec[:, 1:] = floats.view(np.uint8).reshape(-1, 4)
        out.append(rec.tobytes())
    if encoded:
        out.append(wire.field_varint(D_ENCODED, 1))
    return b"".join(out)


def decode_datum(buf, path: Optional[str] = None) -> Datum:
    """Parse Datum bytes (as stored in an LMDB value)."""
    d = Datum()
    floats = _Runs()
    pos, end = 0, len(buf)
    while pos < end:
        f = wire.read_field(buf, pos, end, path)
        number, wt, a, b, tag_at = f
        pos = b
        if number == D_FLOAT:
            pos = _add_run(floats, buf, f, end, path, "float_data")
        elif number == D_DATA:
            if wt != LEN:
                raise WireFormatError(f"Datum.data has wire type {wt}; expected 2", path, f"byte {tag_at}")
            d.data = bytes(buf[a:b])
        elif number in (D_CHANNELS, D_HEIGHT, D_WIDTH, D_LABEL, D_ENCODED):
            if wt != VARINT:
                raise WireFormatError(f"Datum field {number} has wire type {wt}; expected 0",
                                      path, f"byte {tag_at}")
            v = wire.as_int32(a)
            if number == D_ENCODED:
                d.encoded = bool(a)
            else:
                setattr(d, {D_CHANNELS: "channels", D_HEIGHT: "height", D_WIDTH: "width",
                            D_LABEL: "label"}[number], v)
    if floats.count:
        d.float_data = _materialize(buf, floats).copy()
    return d
