"""Caffe's binary files: caffemodel, solverstate, binaryproto (mean) and Datum.

Readers map the file read-only and walk the wire format (``wire.py``) so that a
blob stored the way Caffe writes it (one packed run of ``BlobProto.data``)
becomes a zero-copy ``np.frombuffer`` view of the mapping; every other encoding
(unpacked floats, several runs, ``double_data``, OpenCV/NVCaffe ``raw_data``)
costs one float32 copy.  Layer parameters other than blobs are small and are
handed to the schema (``caffe_pb2``).  Readers return the raw net: upgrading
V0/V1 is ``upgrade.py``'s job.

Blob shape mirrors ``Blob::FromProto`` (src/caffe/blob.cpp): if any of the
legacy ``num/channels/height/width`` is present the shape is those four (an
absent one is 0, the proto default), else ``shape.dim``; no dims = a scalar.
The number of values must equal the shape's product (``CHECK_EQ`` there).

Writers stream to a temp file beside the target and ``os.replace`` it in, so
a failed write leaves nothing behind, and compute the size first so a file
over Caffe's read limit (``kProtoReadBytesLimit = INT_MAX``,
src/caffe/util/io.cpp) is refused before anything is written.
"""
from __future__ import annotations

import math
import mmap
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from . import wire
from .files import atomic_output
from .budget import fmt_count, fmt_shape
from .errors import BadPayload, UnsupportedParameter, WireFormatError
from .proto import PRIVATE_FIELD_NUMBERS, caffe_pb2
from .wire import I32, I64, LEN, VARINT

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

def _map_file(path: str):
    """Read-only mapping of ``path`` (``b""`` for an empty file, which cannot be mapped)."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size == 0:
            return b""
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)


def _release(buf) -> None:
    """Close a mapping unless NumPy views still use it (then they keep it alive until freed)."""
    if isinstance(buf, mmap.mmap):
        try:
            buf.close()
        except BufferError:
            pass


# ================================================================ caffemodel

class LayerBlobs(NamedTuple):
    """One layer of a caffemodel, in file order: its name, raw type and blobs."""

    name: str
    type: str          # V2 type string, V1 enum name (``"CONVOLUTION"``), V0 type string
    blobs: List[np.ndarray]


@dataclass
class CaffeModel:
    """What ``read_caffemodel`` found.  Arrays may be read-only views of the mapped file."""

    path: Optional[str]
    net: "caffe_pb2.NetParameter"       # raw (not upgraded), without blob data
    layers: List[LayerBlobs]
    format: str                         # "V0", "V1", "V2", or "V1+V2" (upgrade_net refuses it)
    nbytes: int
    nonfinite: Optional[List[Tuple[str, int, int]]]  # (layer, blob index, count); None = unchecked
    pooling_field13: Dict[str, int] = field(default_factory=dict)  # layer -> raw value of field 13
    fork_fields: List[Tuple[str, str, int]] = field(default_factory=list)  # (layer, field, value)
    diffs: Optional[List[List[Optional[np.ndarray]]]] = None  # aligned with layers, if asked
    _buf: object = None

    @property
    def blobs(self) -> Dict[str, List[np.ndarray]]:
        """Layer name -> blobs (layers without blobs left out; the first of duplicate names wins)."""
        out: Dict[str, List[np.ndarray]] = {}
        for lb in self.layers:
            if lb.blobs and lb.name not in out:
                out[lb.name] = lb.blobs
        return out

    def close(self) -> None:
        """Drop our arrays and unmap; arrays the caller still holds keep the mapping alive."""
        buf, self._buf = self._buf, None
        self.layers = [LayerBlobs(lb.name, lb.type, []) for lb in self.layers]
        self.diffs = None
        _release(buf)

    def __enter__(self) -> "CaffeModel":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _v1_type_name(v: int) -> str:
    try:
        return caffe_pb2.V1LayerParameter.LayerType.Name(v)
    except ValueError:
        return str(v)


class _LayerScan(NamedTuple):
    name: str
    type: str
    blob_spans: List[Tuple[int, int]]
    params: bytes                       # the layer's other fields, ready for ParseFromString
    pool13: Optional[int]


def _pool13(buf, a: int, b: int, path) -> Optional[int]:
    """Raw value of field 13 inside a PoolingParameter payload, if present (last wins)."""
    val = None
    for g in wire.iter_fields(buf, a, b, path):
        if g[0] == POOL_FIELD13 and g[1] == VARINT:
            val = wire.as_int32(g[2])
    return val


def _scan_v2(buf, a: int, b: int, path) -> _LayerScan:
    name = ltype = ""
    blobs, other = [], []
    pool13 = None
    for f in wire.iter_fields(buf, a, b, path):
        number, wt, x, y, tag_at = f
        if number == V2_BLOBS and wt == LEN:
            blobs.append((x, y))
            continue
        if number == V2_NAME and wt == LEN:
            name = wire.read_string(buf, x, y)
        elif number == V2_TYPE and wt == LEN:
            ltype = wire.read_string(buf, x, y)
        elif number == V2_POOLING and wt == LEN:
            v = _pool13(buf, x, y, path)
            pool13 = v if v is not None else pool13
        other.append(f)
    parts = []
    for number, wt, x, y, tag_at in other:
        if number == MERGE_DATA_ON_DISK and ltype == "MergeData":
            parts.append(wire.encode_tag(MERGE_DATA_PRIVATE, wt) +
                         (wire.encode_varint(x) if wt == VARINT else
                          wire.encode_varint(y - x) + bytes(buf[x:y]) if wt == LEN else bytes(buf[x:y])))
        else:
            parts.append(bytes(buf[tag_at:y]))
    return _LayerScan(name, ltype, blobs, b"".join(parts), pool13)


def _scan_v1(buf, a: int, b: int, path) -> Tuple[_LayerScan, bool]:
    """A V1 layer; its V0 ``layer`` (field 1), if any, has its blobs at field 50."""
    name = ltype = ""
    blobs, parts = [], []
    pool13, has_v0 = None, False
    for number, wt, x, y, tag_at in wire.iter_fields(buf, a, b, path):
        if number == V1_BLOBS and wt == LEN:
            blobs.append((x, y))
            continue
        if number == V1_V0 and wt == LEN:
            has_v0 = True
            v0_parts = []
            for n0, wt0, x0, y0, t0 in wire.iter_fields(buf, x, y, path):
                if n0 == V0_BLOBS and wt0 == LEN:
                    blobs.append((x0, y0))
                    continue
                if n0 == V0_NAME and wt0 == LEN and not name:
                    name = wire.read_string(buf, x0, y0)
                elif n0 == V0_TYPE and wt0 == LEN:
                    ltype = ltype or wire.read_string(buf, x0, y0)
                v0_parts.append(bytes(buf[t0:y0]))
            parts.append(wire.field_bytes(V1_V0, b"".join(v0_parts)))
            continue
        if number == V1_NAME and wt == LEN:
            name = wire.read_string(buf, x, y)
        elif number == V1_TYPE and wt == VARINT:
            ltype = _v1_type_name(wire.as_int32(x))
        elif number == V1_POOLING and wt == LEN:
            v = _pool13(buf, x, y, path)
            pool13 = v if v is not None else pool13
        parts.append(bytes(buf[tag_at:y]))
    return _LayerScan(name, ltype, blobs, b"".join(parts), pool13), has_v0


def _parse_into(msg, data: bytes, path, where: str) -> None:
    try:
        msg.MergeFromString(data)
    except Exception as e:  # protobuf's DecodeError and friends: the bytes, not our code, are bad
        raise WireFormatError(f"{where}: cannot decode as {msg.DESCRIPTOR.name}: {e}", path) from None


def parse_caffemodel(buf, path: Optional[str] = None, *, check_finite: Optional[bool] = None,
                     with_diff: bool = False) -> CaffeModel:
    """Decode a caffemodel held in ``buf`` (bytes, mmap, memoryview); see ``read_caffemodel``."""
    n = len(buf)
    header, layers, diffs, v1, v2 = [], [], [], False, False
    net = caffe_pb2.NetParameter()
    fork: List[Tuple[str, str, int]] = []
    pool13: Dict[str, int] = {}
    nonfinite: Optional[list] = None if check_finite is False else []
    any_v0 = False
    for number, wt, a, b, tag_at in wire.iter_fields(buf, 0, n, path):
        if number == NET_LAYER and wt == LEN:
            scan, msg, v2 = _scan_v2(buf, a, b, path), net.layer.add(), True
        elif number == NET_LAYERS_V1 and wt == LEN:
            (scan, has_v0), msg, v1 = _scan_v1(buf, a, b, path), net.layers.add(), True
            any_v0 |= has_v0
        else:
            header.append(bytes(buf[tag_at:b]))
            continue
        label = f"layer '{scan.name}'" if scan.name else f"layer #{len(layers)} (byte {tag_at})"
        _parse_into(msg, scan.params, path, label)
        if scan.pool13 is not None:
            pool13[scan.name] = scan.pool13
            fork.append((scan.name, "pooling_param.13", scan.pool13))
        if scan.type == "MergeData" and number == NET_LAYER and msg.HasField("merge_data_param"):
            fork.append((scan.name, "merge_data_param@140", 1))
        arrays, layer_diffs = [], []
        for i, (x, y) in enumerate(scan.blob_spans):
            where = f"{label} blob {i}"
            blob = decode_blob(buf, x, y, path, where, with_diff)
            if nonfinite is not None:
                bad = count_nonfinite(blob.data)
                if bad:
                    if check_finite:
                        raise BadPayload(f"{where}: {bad} NaN/Inf values of {blob.data.size}", path)
                    nonfinite.append((scan.name, i, bad))
            arrays.append(blob.data)
            layer_diffs.append(blob.diff)
        layers.append(LayerBlobs(scan.name, scan.type, arrays))
        diffs.append(layer_diffs)
    _parse_into(net, b"".join(header), path, "net header")
    fmt = "V1+V2" if (v1 and v2) else "V0" if any_v0 else "V1" if v1 else "V2"
    return CaffeModel(path, net, layers, fmt, n, nonfinite, pool13, fork,
                      diffs if with_diff else None, buf)


def read_caffemodel(path: str, *, check_finite: Optional[bool] = None,
                    with_diff: bool = False) -> CaffeModel:
    """Map ``path`` and decode it as a NetParameter with weights.

    ``check_finite``: ``None`` (default) counts NaN/Inf per blob into
    ``.nonfinite``; ``True`` raises ``BadPayload`` on the first; ``False``
    skips the scan, so pages are only read when the arrays are touched.
    ``with_diff`` also decodes ``diff``/``double_diff`` into ``.diffs``.
    Use as a context manager (or ``close()``) to unmap early.
    """
    buf = _map_file(path)
    try:
        return parse_caffemodel(buf, path, check_finite=check_finite, with_diff=with_diff)
    except BaseException:
        _release(buf)
        raise


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


def _split_at_blobs(data: bytes, after: int) -> int:
    """Offset of the first top-level field numbered above ``after`` (where blobs go)."""
    for number, _wt, _a, _b, tag_at in wire.iter_fields(data, 0, len(data)):
        if number > after:
            return tag_at
    return len(data)


def _layer_pieces(layer, arrays, path) -> Tuple[bytes, List[_BlobOut], bytes]:
    lp = caffe_pb2.LayerParameter()
    lp.CopyFrom(layer)
    keep = [b.SerializeToString() for b in lp.blobs] if arrays is None else None
    lp.ClearField("blobs")
    if lp.HasField("pooling_param") and lp.pooling_param.HasField("ceil_mode"):
        from .prototxt import fold_pool_dialect  # the one place the two dialects are reconciled
        tmp = caffe_pb2.NetParameter()
        tmp.layer.add().CopyFrom(lp)
        fold_pool_dialect(tmp, path)
        lp = tmp.layer[0]
    body = lp.SerializeToString()
    if lp.HasField("merge_data_param"):
        if lp.type != "MergeData" or lp.HasField("elu_param"):
            raise UnsupportedParameter(
                f"layer '{lp.name}': merge_data_param is stored at field 140 (elu_param's number), "
                f"so it can only be written for a layer of type MergeData without elu_param", path)
        body = wire.retag(body, 0, len(body), {MERGE_DATA_PRIVATE: MERGE_DATA_ON_DISK})
    cut = _split_at_blobs(body, V2_BLOBS)
    if keep is not None:
        blobs = [_BlobOut(b"", k, b"", len(k)) for k in keep]
    else:
        blobs = [_blob_out(a, f"layer '{lp.name}' blob {i}") for i, a in enumerate(arrays)]
    return body[:cut], blobs, body[cut:]


def _layer_size(pre: bytes, blobs: List[_BlobOut], post: bytes) -> int:
    return len(pre) + len(post) + sum(wire.len_field_size(V2_BLOBS, b.size) for b in blobs)


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


def write_caffemodel(path: str, net, blobs: Optional[Mapping[str, Sequence[np.ndarray]]] = None,
                     *, max_bytes: int = CAFFE_MAX_BYTES) -> int:
    """Write ``net`` (V2 ``layer``s) with weights as a BVLC caffemodel; return its size.

    ``blobs``: layer name -> arrays (stored as float32, shape = array shape);
    layers not named keep the ``blobs`` already in ``net``.  ``net`` may also
    be a ``CaffeModel`` (its blobs are the default).  Pooling's fork
    ``ceil_mode`` is written as BVLC ``round_mode``.  Refuses, before writing
    anything, a file larger than ``max_bytes``.
    """
    if isinstance(net, CaffeModel):
        blobs = net.blobs if blobs is None else blobs
        net = net.net
    if not isinstance(net, caffe_pb2.NetParameter):
        raise TypeError(f"write_caffemodel: expected a NetParameter, got {type(net).__name__}")
    if len(net.layers):
        raise UnsupportedParameter(f"{path}: net has {len(net.layers)} V1 'layers'; "
                                   "write_caffemodel writes V2 only (run upgrade_net first)")
    blobs = dict(blobs or {})
    names = [lp.name for lp in net.layer]
    unknown = sorted(set(blobs) - set(names))
    if unknown:
        raise UnsupportedParameter(f"{path}: blobs given for layers not in the net: {unknown}")
    dup = sorted({n for n in blobs if names.count(n) > 1})
    if dup:
        raise UnsupportedParameter(f"{path}: blobs given for layer names used twice in the net: {dup}")

    head = caffe_pb2.NetParameter()
    head.CopyFrom(net)  # keeps unknown (fork) fields too
    head.ClearField("layer")
    head_bytes = head.SerializeToString()
    layers = [_layer_pieces(lp, blobs.get(lp.name), path) for lp in net.layer]
    sizes = [_layer_size(*p) for p in layers]
    total = len(head_bytes) + sum(wire.len_field_size(NET_LAYER, s) for s in sizes)
    _check_size(total, path, max_bytes)
    with atomic_output(path) as f:
        f.write(head_bytes)
        for (pre, bl, post), size in zip(layers, sizes):
            f.write(wire.len_header(NET_LAYER, size))
            f.write(pre)
            for b in bl:
                _write_blob(f, b)
            f.write(post)
    return total


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


# ================================================================ solverstate

SS_ITER, SS_LEARNED_NET, SS_HISTORY, SS_CURRENT_STEP = 1, 2, 3, 4


@dataclass
class SolverState:
    """``SolverState`` (caffe.proto): iteration, weights file, per-param history, lr step."""

    iter: int = 0
    learned_net: str = ""
    history: List[np.ndarray] = field(default_factory=list)
    current_step: int = 0


def parse_solverstate(buf, path: Optional[str] = None) -> SolverState:
    """Decode a binary SolverState; ``history`` arrays may be read-only views of ``buf``."""
    st = SolverState()
    for number, wt, a, b, tag_at in wire.iter_fields(buf, 0, len(buf), path):
        expect = {SS_ITER: VARINT, SS_CURRENT_STEP: VARINT, SS_LEARNED_NET: LEN, SS_HISTORY: LEN}.get(number)
        if expect is None:
            continue  # unknown field: skipped, as protobuf does
        if wt != expect:
            raise WireFormatError(f"SolverState field {number} has wire type {wt}; expected {expect}",
                                  path, f"byte {tag_at}")
        if number == SS_ITER:
            st.iter = wire.as_int32(a)
        elif number == SS_CURRENT_STEP:
            st.current_step = wire.as_int32(a)
        elif number == SS_LEARNED_NET:
            st.learned_net = wire.read_string(buf, a, b)
        else:
            st.history.append(decode_blob(buf, a, b, path, f"history blob {len(st.history)}").data)
    return st


def read_solverstate(path: str) -> SolverState:
    """Read a ``.solverstate`` written by Caffe's SGD-family solvers (binary proto form)."""
    return parse_solverstate(_map_file(path), path)


def write_solverstate(path: str, state: SolverState, *, max_bytes: int = CAFFE_MAX_BYTES) -> int:
    """Write ``state`` atomically; all four fields are written, as Caffe's snapshot sets them all."""
    pieces: list = [wire.field_varint(SS_ITER, state.iter),
                    wire.field_bytes(SS_LEARNED_NET, state.learned_net.encode("utf-8"))]
    pieces += [(SS_HISTORY, _blob_out(h, f"history blob {i}")) for i, h in enumerate(state.history)]
    pieces.append(wire.field_varint(SS_CURRENT_STEP, state.current_step))
    return _write_blobs_file(path, pieces, max_bytes)


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


# ================================================================ sniffing

# message -> {field number: allowed wire types}; enough to tell Caffe's binary kinds apart
_SHAPES = {
    "caffemodel": {1: {LEN}, 2: {LEN}, 3: {LEN}, 4: {VARINT, LEN}, 5: {VARINT}, 6: {LEN},
                   7: {VARINT}, 8: {LEN}, 100: {LEN}},
    "solverstate": {1: {VARINT}, 2: {LEN}, 3: {LEN}, 4: {VARINT}},
    "binaryproto": {1: {VARINT}, 2: {VARINT}, 3: {VARINT}, 4: {VARINT}, 5: {LEN, I32},
                    6: {LEN, I32}, 7: {LEN}, 8: {LEN, I64}, 9: {LEN, I64}, 10: {VARINT}, 12: {LEN}},
    "datum": {1: {VARINT}, 2: {VARINT}, 3: {VARINT}, 4: {LEN}, 5: {VARINT}, 6: {LEN, I32},
              7: {VARINT}},
}
# fields that, when present, single a kind out
_DECISIVE = {"caffemodel": {100, 2}, "solverstate": {3}, "binaryproto": {5, 7, 8}, "datum": {4}}


def sniff_binary(buf, max_fields: int = 64) -> List[str]:
    """Which Caffe binary kinds the top-level fields of ``buf`` are consistent with.

    Looks at up to ``max_fields`` fields (no payload is decoded) and returns
    the consistent kinds, most likely first: a kind whose decisive field
    (caffemodel 100/2, solverstate 3, binaryproto 5/7/8, datum 4) is present
    ranks first.  ``[]`` means not a Caffe protobuf at all; several entries
    mean the bytes are ambiguous (an empty file is every kind).
    """
    seen: Dict[int, set] = {}
    try:
        for i, (number, wt, *_rest) in enumerate(wire.iter_fields(buf, 0, len(buf))):
            seen.setdefault(number, set()).add(wt)
            if i + 1 >= max_fields:
                break
    except WireFormatError:
        return []
    kinds = [k for k, shape in _SHAPES.items()
             if all(n in shape and wts <= shape[n] for n, wts in seen.items())]
    return sorted(kinds, key=lambda k: (not (_DECISIVE[k] & set(seen)), list(_SHAPES).index(k)))
