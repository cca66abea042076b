"""Blobs on the wire: zero-copy decoding (Blob::FromProto), file mapping, and the blob writers."""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import wire
from ..files import atomic_output
from ..budget import fmt_count, fmt_shape
from ..errors import BadPayload, UnsupportedParameter, WireFormatError
from ..proto import PRIVATE_FIELD_NUMBERS, caffe_pb2
from ..wire import I32, I64, LEN, VARINT


F32 = np.dtype("<f4")
CAFFE_MAX_BYTES = 2 ** 31 - 1  # kProtoReadBytesLimit in src/caffe/util/io.cpp

# NetParameter / layer field numbers (caffe.proto)
NET_LAYERS_V1, NET_LAYER = 2, 100
V2_NAME, V2_TYPE, V2_BLOBS, V2_POOLING = 1, 2, 7, 121
V1_V0, V1_NAME, V1_TYPE, V1_BLOBS, V1_POOLING = 1, 4, 5, 6, 19
V0_NAME, V0_TYPE, V0_BLOBS = 1, 2, 50
POOL_FIELD13 = 13                      # BVLC round_mode; the forks' ceil_mode
MERGE_DATA_ON_DISK = 140               # Jigsaw++ merge_data_param; BVLC elu_param
MERGE_DATA_PRIVATE = PRIVATE_FIELD_NUMBERS["LayerParameter.merge_data_param"]
# BlobProto
B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH = 1, 2, 3, 4
B_DATA, B_DIFF, B_SHAPE, B_DDATA, B_DDIFF, B_RAW_TYPE, B_RAW = 5, 6, 7, 8, 9, 10, 12
_RAW = caffe_pb2.BlobProto
_RAW_DTYPES = {_RAW.FLOAT16: np.dtype("<f2"), _RAW.FLOAT: F32, _RAW.DOUBLE: np.dtype("<f8")}


# ================================================================ blobs

class _Runs:
    """Where one logical float array lives in the buffer, run by run."""

    __slots__ = ("parts", "count")

    def __init__(self):
        self.parts: List[Tuple[str, int, int]] = []  # (encoding, offset, n values)
        self.count = 0

    def add(self, kind: str, offset: int, n: int) -> None:
        if n:
            self.parts.append((kind, offset, n))
            self.count += n


# encoding -> (dtype, record stride in bytes; 0 = packed)
_RUN_KINDS = {"f4": (F32, 0), "f4u": (F32, 5), "f8": (np.dtype("<f8"), 0), "f8u": (np.dtype("<f8"), 9)}


def _add_run(runs: _Runs, buf, f, end: int, path, what: str) -> int:
    """Record the float field ``f`` (packed or unpacked); return where walking resumes."""
    number, wt, a, b, tag_at = f
    width = 8 if what.startswith("double") else 4
    if wt == LEN:
        if (b - a) % width:
            raise WireFormatError(f"packed {what} has {b - a} bytes, not a multiple of {width}",
                                  path, f"byte {tag_at}")
        runs.add("f8" if width == 8 else "f4", a, (b - a) // width)
        return b
    if wt == (I64 if width == 8 else I32) and buf[tag_at] == ((number << 3) | wt):
        n = wire.fixed_run(buf, tag_at, end, buf[tag_at], width)
        runs.add("f8u" if width == 8 else "f4u", tag_at, n)
        return tag_at + n * (width + 1)
    raise WireFormatError(f"{what} (field {number}) has wire type {wt}; expected 2 (packed) "
                          f"or {I64 if width == 8 else I32}", path, f"byte {tag_at}")


def _materialize(buf, runs: _Runs) -> np.ndarray:
    """One float32 array from the runs: a view when it is a single packed float run."""
    if len(runs.parts) == 1 and runs.parts[0][0] == "f4":
        _, off, n = runs.parts[0]
        return np.frombuffer(buf, dtype=F32, count=n, offset=off)
    out = np.empty(runs.count, dtype=np.float32)  # bounded: every value was seen in the buffer
    i = 0
    for kind, off, n in runs.parts:
        dt, stride = _RUN_KINDS[kind]
        if stride:
            rec = np.frombuffer(buf, dtype=np.uint8, count=n * stride, offset=off).reshape(n, stride)
            out[i:i + n] = rec[:, 1:].copy().view(dt).ravel()
        else:
            with np.errstate(over="ignore"):  # doubles beyond float32 become inf, as in Caffe's cast
                out[i:i + n] = np.frombuffer(buf, dtype=dt, count=n, offset=off)
        i += n
    return out


@dataclass
class DecodedBlob:
    """One ``BlobProto``: float32 ``data`` shaped as Caffe would, ``diff`` when asked for."""

    data: np.ndarray
    legacy_shape: bool                 # shape came from num/channels/height/width
    diff: Optional[np.ndarray] = None


# Long on purpose: one pass over a BlobProto's wire fields, each case a few lines; split up, the
# buffer would be walked again or the state passed around.
def decode_blob(buf, start: int, end: int, path: Optional[str] = None, where: str = "blob",
                with_diff: bool = False) -> DecodedBlob:
    """Decode the ``BlobProto`` in ``buf[start:end]`` (see the module docstring for the rules)."""
    legacy: Dict[int, int] = {}
    dims: List[int] = []
    data, ddata, diff, ddiff = _Runs(), _Runs(), _Runs(), _Runs()
    raw = raw_type = None
    pos = start
    while pos < end:
        f = wire.read_field(buf, pos, end, path)
        number, wt, a, b, tag_at = f
        pos = b
        if number in (B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH, B_RAW_TYPE):
            if wt != VARINT:
                raise WireFormatError(f"{where}: BlobProto field {number} has wire type {wt}; "
                                      "expected 0 (varint)", path, f"byte {tag_at}")
            if number == B_RAW_TYPE:
                raw_type = wire.as_int32(a)
            else:
                legacy[number] = wire.as_int32(a)
        elif number == B_DATA:
            pos = _add_run(data, buf, f, end, path, "data")
        elif number == B_DDATA:
            pos = _add_run(ddata, buf, f, end, path, "double_data")
        elif number in (B_DIFF, B_DDIFF):
            pos = _add_run(diff if number == B_DIFF else ddiff, buf, f, end, path,
                           "diff" if number == B_DIFF else "double_diff")
        elif number in (B_SHAPE, B_RAW):
            if wt != LEN:
                raise WireFormatError(f"{where}: BlobProto field {number} has wire type {wt}; "
                                      "expected 2 (length-delimited)", path, f"byte {tag_at}")
            if number == B_RAW:
                raw = (a, b)  # optional bytes: the last one wins
            else:  # a repeated shape field merges: its dims append
                for g in wire.iter_fields(buf, a, b, path):
                    if g[0] != 1:
                        continue
                    if g[1] == LEN:
                        dims += [wire.as_int64(v) for v in wire.packed_varints(buf, g[2], g[3], path)]
                    elif g[1] == VARINT:
                        dims.append(wire.as_int64(g[2]))
                    else:
                        raise WireFormatError(f"{where}: BlobShape.dim has wire type {g[1]}; "
                                              "expected 0 or 2", path, f"byte {g[4]}")
        # any other field is unknown to us and skipped, as protobuf would

    if legacy:
        shape = tuple(legacy.get(k, 0) for k in (B_NUM, B_CHANNELS, B_HEIGHT, B_WIDTH))
    else:
        shape = tuple(dims)
    if any(d < 0 for d in shape):
        raise BadPayload(f"{where}: negative dimension in shape {fmt_shape(shape)}", path)
    count = math.prod(shape)

    if ddata.count:
        arr, what, n = _materialize(buf, ddata), "double_data", ddata.count
    elif data.count or raw is None:
        arr, what, n = None, "data", data.count
    else:
        arr, what, n = _decode_raw(buf, raw, raw_type, path, where), "raw_data", None
        n = arr.size
    if count != n:
        raise BadPayload(f"{where}: shape {fmt_shape(shape)} holds {fmt_count(count)} values but "
                         f"{what} has {n}", path)
    if arr is None:
        arr = _materialize(buf, data)
    arr = arr.reshape(shape)

    d = None
    if with_diff and (diff.count or ddiff.count):
        src = ddiff if ddiff.count else diff
        if src.count != count:
            raise BadPayload(f"{where}: shape {fmt_shape(shape)} holds {fmt_count(count)} values but "
                             f"diff has {src.count}", path)
        d = _materialize(buf, src).reshape(shape)
    return DecodedBlob(arr, bool(legacy), d)


def _decode_raw(buf, span, raw_type, path, where) -> np.ndarray:
    a, b = span
    dt = _RAW_DTYPES.get(raw_type if raw_type is not None else -1)
    if dt is None:
        name = _RAW.Type.Name(raw_type) if raw_type in _RAW.Type.values() else str(raw_type)
        raise BadPayload(f"{where}: raw_data of type {name}; expected FLOAT16, FLOAT or DOUBLE", path)
    if (b - a) % dt.itemsize:
        raise BadPayload(f"{where}: raw_data has {b - a} bytes, not a multiple of {dt.itemsize}", path)
    with np.errstate(over="ignore"):
        return np.frombuffer(buf, dtype=dt, count=(b - a) // dt.itemsize, offset=a).astype(np.float32)


def count_nonfinite(arr: np.ndarray) -> int:
    """Number of NaN/Inf values, without allocating an array-sized mask in the usual case."""
    with np.errstate(over="ignore", invalid="ignore"):
        total = arr.sum() if arr.size else 0.0
    if np.isfinite(total):
        return 0  # a NaN or Inf anywhere makes the sum non-finite (an overflow is recounted below)
    flat = arr.reshape(-1)
    step = 1 << 20
    return sum(int(flat[i:i + step].size - np.count_nonzero(np.isfinite(flat[i:i + step])))
               for i in range(0, flat.size, step))


# ================================================================ opening files

def map_file(path: str):
    """Read-only mapping of ``path`` (``b""`` for an empty file, which cannot be mapped)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def release_map(buf) -> None:
    """Close a mapping unless NumPy views still use it (then they keep it alive until freed)."""
    if isinstance(buf, mmap.mmap):
        try:
            buf.close()
        except BufferError:
            pass


# ================================================================ writing



def _blob_header(shape: Sequence[int], count: int) -> Tuple[bytes, bytes]:
    """The bytes around a blob's float payload: (data field header, shape field).

    Field order is by number as Caffe's serializer emits it (data=5, then
    shape=7); an empty blob has no data field, and the shape field is always
    there, as ``Blob::ToProto`` creates it.
    """
    dims = wire.encode_packed_varints(shape)
    shape_msg = wire.field_bytes(1, dims) if dims else b""
    head = wire.len_header(B_DATA, 4 * count) if count else b""
    return head, wire.field_bytes(B_SHAPE, shape_msg)


class _BlobOut(NamedTuple):
    head: bytes
    payload: object     # the caller's array (converted only while writing), or serialized bytes
    tail: bytes
    size: int           # bytes of the BlobProto message


def _blob_out(a, where: str) -> _BlobOut:
    """Plan one blob from its shape alone: nothing array-sized is made before the size check."""
    arr = np.asarray(a)
    if arr.dtype.kind not in "fiub":
        raise UnsupportedParameter(f"{where}: dtype {arr.dtype} cannot be stored as float32")
    count = int(arr.size)
    head, tail = _blob_header(arr.shape, count)
    return _BlobOut(head, arr, tail, len(head) + 4 * count + len(tail))


def _write_blob(f, b: _BlobOut) -> None:
    f.write(wire.len_header(V2_BLOBS, b.size))
    _write_blob_body(f, b)


def _write_blob_body(f, b: _BlobOut) -> None:
    f.write(b.head)
    if isinstance(b.payload, np.ndarray):
        arr = np.ascontiguousarray(b.payload, dtype=F32)  # a copy only if not already <f4, C order
        f.write(memoryview(arr.reshape(-1)).cast("B"))
    else:
        f.write(b.payload)
    f.write(b.tail)


def _check_size(total: int, path: str, max_bytes: int) -> None:
    if total > max_bytes:
        raise UnsupportedParameter(
            f"{path}: the file would be {total} bytes; Caffe reads at most {max_bytes} "
            f"(2 GB - 1, kProtoReadBytesLimit in src/caffe/util/io.cpp); nothing was written")


def _write_blobs_file(path: str, pieces: Sequence, max_bytes: int) -> int:
    """Write a message made of raw byte pieces and (field number, _BlobOut) blobs, atomically."""
    total = sum(len(p) if isinstance(p, bytes) else wire.len_field_size(p[0], p[1].size)
                for p in pieces)
    _check_size(total, path, max_bytes)
    with atomic_output(path) as f:
        for p in pieces:
            if isinstance(p, bytes):
                f.write(p)
            else:
                number, b = p
                f.write(wire.len_header(number, b.size))
                _write_blob_body(f, b)
    return total
