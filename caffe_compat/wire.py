"""The protobuf wire format, by hand: the one module that knows varints and tags.

Caffe's binary files are protobuf messages (``caffe.proto``).  Blob payloads
are huge packed float runs, so instead of handing whole files to protobuf we
walk the wire format here and let ``binary.py`` point NumPy at the payloads.
Everything works on any buffer that indexes to ints (``bytes``, ``mmap``,
``memoryview``) with absolute byte offsets, so errors can name the byte.

Reading never trusts a length or count written in the file: every claimed
length is checked against the bytes that are actually left before it is used.
Every problem is a ``WireFormatError`` naming the file, the byte offset and
what was expected.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Optional, Tuple

import numpy as np

from .errors import WireFormatError

# wire types (protobuf encoding spec)
VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5
WIRE_TYPE_NAMES = {VARINT: "varint", I64: "64-bit", LEN: "length-delimited",
                   SGROUP: "start-group", EGROUP: "end-group", I32: "32-bit"}

MASK64 = (1 << 64) - 1
MAX_FIELD_NUMBER = (1 << 29) - 1
_MAX_VARINT_BYTES = 10

# One walked field: (number, wire_type, a, b, tag_offset).  For VARINT ``a`` is
# the value and ``b`` the offset after it; for I32/I64/LEN ``[a, b)`` is the
# payload.  ``tag_offset`` is where the field (its tag) starts.
Field = Tuple[int, int, int, int, int]


def _err(msg: str, path: Optional[str], offset: int) -> WireFormatError:
    return WireFormatError(msg, path, f"byte {offset}")


# ---------------------------------------------------------------- decoding

def read_varint(buf, pos: int, end: int, path: Optional[str] = None) -> Tuple[int, int]:
    """Decode the varint at ``pos``; return ``(value & 2**64-1, next_pos)``."""
    start = pos
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise _err("truncated varint: expected another byte before the end of the message",
                       path, start)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & MASK64, pos
        shift += 7
        if shift >= 7 * _MAX_VARINT_BYTES:
            raise _err("varint longer than 10 bytes", path, start)


def as_int64(v: int) -> int:
    """A decoded varint read as a signed int64 (two's complement)."""
    return v - (1 << 64) if v >= (1 << 63) else v


def as_int32(v: int) -> int:
    """A decoded varint read as protobuf int32 (low 32 bits, signed)."""
    v &= 0xFFFFFFFF
    return v - (1 << 32) if v >= (1 << 31) else v


def read_field(buf, pos: int, end: int, path: Optional[str] = None) -> Field:
    """Decode the one field starting at ``pos`` (see ``Field``); it ends at offset ``b``.

    Groups (wire types 3/4) are refused: caffe.proto declares none, so they
    only appear in corrupt data.  Wire types 6 and 7 do not exist.
    """
    tag_at = pos
    key, pos = read_varint(buf, pos, end, path)
    number, wt = key >> 3, key & 7
    if number == 0 or number > MAX_FIELD_NUMBER:
        raise _err(f"invalid field number {number} (expected 1..{MAX_FIELD_NUMBER})", path, tag_at)
    if wt == VARINT:
        value, pos = read_varint(buf, pos, end, path)
        return number, wt, value, pos, tag_at
    if wt == LEN:
        n, p = read_varint(buf, pos, end, path)
        if n > end - p:
            raise _err(f"field {number} claims {n} bytes but only {end - p} are left "
                       f"in the enclosing message", path, tag_at)
        return number, wt, p, p + n, tag_at
    if wt == I32 or wt == I64:
        width = 4 if wt == I32 else 8
        if width > end - pos:
            raise _err(f"truncated {width * 8}-bit field {number}: {end - pos} bytes left", path, tag_at)
        return number, wt, pos, pos + width, tag_at
    what = WIRE_TYPE_NAMES.get(wt, "nonexistent")
    raise _err(f"field {number} has wire type {wt} ({what}); expected 0, 1, 2 or 5 "
               f"(caffe.proto uses no groups)", path, tag_at)


def iter_fields(buf, start: int, end: int, path: Optional[str] = None) -> Iterator[Field]:
    """Walk the fields of one message occupying ``buf[start:end]``."""
    pos = start
    while pos < end:
        f = read_field(buf, pos, end, path)
        pos = f[3]
        yield f


def fixed_run(buf, pos: int, end: int, tag: int, width: int) -> int:
    """How many consecutive ``tag`` + ``width``-byte records start at ``pos``.

    Unpacked repeated floats are one single-byte tag per value; walking them one
    by one in Python is slow, so the records are checked with NumPy as a
    strided view.  ``tag`` must be a single-byte key (field number < 16).
    """
    rec = width + 1
    n = (end - pos) // rec
    if n <= 0:
        return 0
    tags = np.frombuffer(buf, dtype=np.uint8, count=n * rec, offset=pos)[::rec]
    bad = np.flatnonzero(tags != tag)
    return int(bad[0]) if bad.size else n


def packed_varints(buf, start: int, end: int, path: Optional[str] = None) -> list:
    """The values of a packed run of varints (raw, unsigned 64-bit)."""
    out = []
    pos = start
    while pos < end:
        v, pos = read_varint(buf, pos, end, path)
        out.append(v)
    return out


def read_string(buf, start: int, end: int) -> str:
    """A length-delimited payload as text (undecodable bytes replaced: for names in messages)."""
    return bytes(buf[start:end]).decode("utf-8", "replace")


# ---------------------------------------------------------------- encoding

def encode_varint(value: int) -> bytes:
    """Varint of ``value``; negatives are written as 10-byte two's complement, as protobuf does."""
    value &= MASK64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def varint_size(value: int) -> int:
    """Bytes ``encode_varint(value)`` would take."""
    value &= MASK64
    return max(1, (value.bit_length() + 6) // 7)


def encode_tag(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def field_varint(number: int, value: int) -> bytes:
    return encode_tag(number, VARINT) + encode_varint(int(value))


def len_header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited field whose payload follows separately."""
    return encode_tag(number, LEN) + encode_varint(length)


def len_field_size(number: int, length: int) -> int:
    """Total bytes of a length-delimited field with a ``length``-byte payload."""
    return varint_size(number << 3) + varint_size(length) + length


def field_bytes(number: int, payload: bytes) -> bytes:
    return len_header(number, len(payload)) + bytes(payload)


def encode_packed_varints(values: Iterable[int]) -> bytes:
    return b"".join(encode_varint(int(v)) for v in values)


def retag(buf, start: int, end: int, mapping: Mapping[int, int], path: Optional[str] = None) -> bytes:
    """Copy a message's top-level fields, renumbering those whose number is in ``mapping``.

    Used for fork fields that share a number with a BVLC field: the schema keeps
    them at a private number, the files at the shared one.
    """
    out = bytearray()
    for number, wt, a, b, tag_at in iter_fields(buf, start, end, path):
        if number in mapping:
            out += encode_tag(mapping[number], wt)
            if wt == VARINT:
                out += encode_varint(a)
            elif wt == LEN:
                out += encode_varint(b - a)
                out += buf[a:b]
            else:
                out += buf[a:b]
        else:
            stop = b
            out += buf[tag_at:stop]
    return bytes(out)
