"""caffemodel files: NetParameter with blobs, V0/V1/V2, read zero-copy and written streaming."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .. import wire
from ..files import atomic_output
from ..errors import BadPayload, UnsupportedParameter, WireFormatError
from ..proto import caffe_pb2
from ..wire import LEN, VARINT
from .blobs import (CAFFE_MAX_BYTES, MERGE_DATA_ON_DISK, MERGE_DATA_PRIVATE, NET_LAYER, NET_LAYERS_V1, POOL_FIELD13,
                    V0_BLOBS, V0_NAME, V0_TYPE, V1_BLOBS, V1_NAME, V1_POOLING, V1_TYPE, V1_V0, V2_BLOBS, V2_NAME,
                    V2_POOLING, V2_TYPE, _BlobOut, _blob_out, _check_size, map_file, release_map, _write_blob,
                    count_nonfinite, decode_blob)


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
        release_map(buf)

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
    buf = map_file(path)
    try:
        return parse_caffemodel(buf, path, check_finite=check_finite, with_diff=with_diff)
    except BaseException:
        release_map(buf)
        raise


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
        from ..prototxt import fold_pool_dialect  # the one place the two dialects are reconciled
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
