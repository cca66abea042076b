"""caffe_compat.wire against protobuf's own encoder (the pb2 classes) as the oracle."""
from __future__ import annotations

import numpy as np
import pytest

from caffe_compat import wire
from caffe_compat.errors import CaffeFormatError, WireFormatError
from caffe_compat.proto import caffe_pb2

VALUES = [0, 1, 127, 128, 300, 16383, 16384, 2**31 - 1, 2**31, 2**32, 2**63 - 1, -1, -2**63]


@pytest.mark.parametrize("v", VALUES)
def test_varint_matches_protobuf(v):
    # BlobShape.dim is a packed int64: its payload is exactly our varint
    pb = caffe_pb2.BlobShape(dim=[v]).SerializeToString()
    ours = wire.field_bytes(1, wire.encode_varint(v))
    assert ours == pb
    assert wire.varint_size(v) == len(wire.encode_varint(v))
    value, end = wire.read_varint(pb, 2, len(pb))
    assert (wire.as_int64(value), end) == (v, len(pb))


def test_int32_and_negative_lengths():
    pb = caffe_pb2.BlobProto(num=-3, channels=2**31 - 1).SerializeToString()
    assert pb == wire.field_varint(1, -3) + wire.field_varint(2, 2**31 - 1)
    assert len(wire.encode_varint(-3)) == 10  # protobuf sign-extends int32 to 64 bits
    fields = list(wire.iter_fields(pb, 0, len(pb)))
    assert [(f[0], f[1], wire.as_int32(f[2])) for f in fields] == [(1, 0, -3), (2, 0, 2**31 - 1)]


def test_iter_fields_all_wire_types_and_offsets():
    msg = caffe_pb2.BlobProto(data=[1.5, 2.5], double_data=[3.0], num=7)
    msg.shape.dim.extend([2, 1])
    pb = msg.SerializeToString()
    fields = list(wire.iter_fields(pb, 0, len(pb)))
    assert [(f[0], f[1]) for f in fields] == [(1, 0), (5, 2), (7, 2), (8, 2)]
    num, data, shape, ddata = fields
    assert num[2] == 7 and num[4] == 0
    assert np.frombuffer(pb[data[2]:data[3]], "<f4").tolist() == [1.5, 2.5]
    assert np.frombuffer(pb[ddata[2]:ddata[3]], "<f8").tolist() == [3.0]
    assert [(g[0], g[1]) for g in wire.iter_fields(pb, shape[2], shape[3])] == [(1, 2)]
    # 32- and 64-bit fields: an unpacked float and a fixed64 record
    raw = wire.encode_tag(5, wire.I32) + b"\x00\x00\x80\x3f" + wire.encode_tag(8, wire.I64) + bytes(8)
    assert [(f[0], f[1], f[2], f[3]) for f in wire.iter_fields(raw, 0, len(raw))] == \
        [(5, 5, 1, 5), (8, 1, 6, 14)]


def _raises(data, match, start=0):
    with pytest.raises(WireFormatError, match=match) as ei:
        list(wire.iter_fields(data, start, len(data), "f.caffemodel"))
    assert isinstance(ei.value, CaffeFormatError) and str(ei.value).startswith("f.caffemodel: byte ")
    return ei.value


@pytest.mark.parametrize("wt", [3, 4, 6, 7])
def test_bad_wire_types_name_byte_and_expectation(wt):
    data = wire.field_varint(1, 5) + wire.encode_tag(9, wt) + b"\x00"
    err = _raises(data, rf"field 9 has wire type {wt} .*expected 0, 1, 2 or 5")
    assert err.where == "byte 2"


def test_truncations_and_overlong():
    _raises(b"\x08", r"byte 1: truncated varint")
    _raises(b"\x08" + b"\xff" * 10 + b"\x01", r"byte 1: varint longer than 10 bytes")
    _raises(b"\x2a\x05abc", r"byte 0: field 5 claims 5 bytes but only 3 are left")
    _raises(b"\x2a" + wire.encode_varint(2**62) + b"x", r"claims 4611686018427387904 bytes but only 1")
    _raises(b"\x2d\x00\x00", r"truncated 32-bit field 5: 2 bytes left")
    _raises(b"\x41" + bytes(7), r"truncated 64-bit field 8: 7 bytes left")
    _raises(b"\x00\x00", r"invalid field number 0")
    # a length that fits the file but not the enclosing message is caught too
    inner = wire.field_bytes(1, b"abcdef")
    assert len(list(wire.iter_fields(inner, 0, len(inner)))) == 1
    with pytest.raises(WireFormatError, match="claims 6 bytes but only 3"):
        list(wire.iter_fields(inner, 0, len(inner) - 3))


def test_fixed_run_counts_unpacked_records():
    vals = np.arange(7, dtype="<f4")
    rec = b"".join(b"\x2d" + v.tobytes() for v in vals)
    data = rec + wire.field_varint(1, 3)
    assert wire.fixed_run(data, 0, len(data), 0x2D, 4) == 7
    assert wire.fixed_run(data, 5, len(data), 0x2D, 4) == 6
    assert wire.fixed_run(data, 0, 12, 0x2D, 4) == 2  # bounded by end


def test_retag_renumbers_only_mapped_fields():
    lp = caffe_pb2.LayerParameter(name="m", type="MergeData")
    lp.merge_data_param.max_substitute = 3
    body = lp.SerializeToString()
    private = 536870001
    out = wire.retag(body, 0, len(body), {private: 140})
    nums = [f[0] for f in wire.iter_fields(out, 0, len(out))]
    assert nums == [1, 2, 140]
    back = wire.retag(out, 0, len(out), {140: private})
    assert back == body
    # a varint field keeps its value
    v = wire.field_varint(3, 300)
    assert wire.retag(v, 0, len(v), {3: 4}) == wire.field_varint(4, 300)


def test_packed_varints_and_strings():
    pb = caffe_pb2.BlobShape(dim=[10, 2**40, 0]).SerializeToString()
    f = next(wire.iter_fields(pb, 0, len(pb)))
    assert wire.packed_varints(pb, f[2], f[3]) == [10, 2**40, 0]
    assert wire.read_string(b"ab\xffc", 0, 4) == "ab\ufffdc"
