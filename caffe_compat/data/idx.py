"""IDX files (the MNIST / Fashion-MNIST format), plain or gzip-compressed, read with NumPy.

Layout (LeCun's MNIST page, and Fashion-MNIST's ``utils/mnist_reader.py`` reads
the same): two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
0x0C int32, 0x0D float32, 0x0E float64), a byte giving the number of
dimensions, then one big-endian uint32 per dimension, then the values,
big-endian, row-major.

The reader trusts nothing the header claims: the payload is read in chunks
of at most ``CHUNK`` bytes, so memory grows with the bytes the file really
holds, never with the size its header announces, and a file that ends early
or goes on past its claimed size is refused.  Errors are typed:
``IdxMagicError`` (not an IDX header), ``IdxTruncatedError`` (fewer bytes
than the header promises), ``IdxSizeError`` (more bytes than promised, or
over ``max_bytes``) and ``IdxCountMismatch`` (an images file and its labels
file disagree on the item count).
"""
from __future__ import annotations

import gzip
import os
import struct
import zlib
from typing import Tuple

import numpy as np

from ..errors import CaffeFormatError

DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
CHUNK = 1 << 20
MAX_BYTES = 1 << 31   # 2 GiB: far above any MNIST-family file


class IdxError(CaffeFormatError):
    """An IDX file that cannot be read as one."""


class IdxMagicError(IdxError):
    """The first four bytes are not an IDX magic number (0, 0, type, ndim)."""


class IdxTruncatedError(IdxError):
    """The file ends before the header's dimensions are filled."""


class IdxSizeError(IdxError):
    """The payload is larger than its header says, or larger than the reader allows."""


class IdxCountMismatch(IdxError):
    """An images file and its labels file hold different numbers of items."""


def _open(path: str):
    with open(path, "rb") as f:
        head = f.read(2)
    return gzip.open(path, "rb") if head == b"\x1f\x8b" else open(path, "rb")


def _read_exact(f, n: int, path: str, what: str) -> bytes:
    """``n`` bytes in chunks (so a lying header cannot make us allocate them up front)."""
    parts, got = [], 0
    while got < n:
        b = f.read(min(CHUNK, n - got))
        if not b:
            raise IdxTruncatedError(f"{what}: expected {n} bytes, the file ends after {got}", path,
                                    f"byte {got}")
        parts.append(b)
        got += len(b)
    return b"".join(parts)


def read_idx_header(f, path: str) -> Tuple[np.dtype, Tuple[int, ...]]:
    magic = f.read(4)
    if len(magic) < 4:
        raise IdxTruncatedError(f"file holds {len(magic)} bytes, an IDX header needs at least 4", path)
    if magic[0] or magic[1] or magic[2] not in DTYPES or magic[3] == 0:
        raise IdxMagicError(f"not an IDX file: magic bytes {magic.hex()} (expected 0000 TT NN with type TT in "
                            f"{', '.join(f'{t:02x}' for t in DTYPES)} and NN >= 1 dimensions)", path, "byte 0")
    ndim = magic[3]
    dims = struct.unpack(f">{ndim}I", _read_exact(f, 4 * ndim, path, f"{ndim} dimension sizes"))
    return DTYPES[magic[2]], tuple(int(d) for d in dims)


def read_idx(path: str, *, max_bytes: int = MAX_BYTES) -> np.ndarray:
    """The array in an IDX file (``.gz`` or plain, told apart by content), native byte order."""
    path = os.fspath(path)
    try:
        with _open(path) as f:
            dtype, dims = read_idx_header(f, path)
            n = dtype.itemsize
            for d in dims:   # Python ints: a lying header cannot overflow the count
                n *= d
            if n > max_bytes:
                raise IdxSizeError(f"header claims {'x'.join(map(str, dims))} values ({n} bytes), over the "
                                   f"{max_bytes}-byte limit", path)
            data = _read_exact(f, n, path, f"{'x'.join(map(str, dims))} values of {dtype.name}")
            if f.read(1):
                raise IdxSizeError(f"data continues past the {n} payload bytes that the header "
                                   f"({'x'.join(map(str, dims))} {dtype.name}) announces", path)
    except (OSError, EOFError, zlib.error) as e:   # unreadable, or a corrupt / cut gzip stream
        if isinstance(e, FileNotFoundError):
            raise IdxError("no such file", path) from None
        kind = IdxTruncatedError if isinstance(e, EOFError) else IdxError
        raise kind(f"cannot read ({e})", path) from None
    return np.frombuffer(data, dtype=dtype).astype(dtype.newbyteorder("=")).reshape(dims)


def read_idx_pair(images: str, labels: str, **kw) -> Tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W) uint8, labels (N,) int64) from an MNIST-style pair; the counts must agree."""
    x, y = read_idx(images, **kw), read_idx(labels, **kw)
    if x.ndim != 3 or x.dtype != np.uint8:
        raise IdxError(f"expected N x H x W uint8 images, got {'x'.join(map(str, x.shape))} {x.dtype}", images)
    if y.ndim != 1:
        raise IdxError(f"expected a 1-D label vector, got shape {'x'.join(map(str, y.shape))}", labels)
    if len(x) != len(y):
        raise IdxCountMismatch(f"{len(x)} images but {labels} holds {len(y)} labels", images)
    return x, y.astype(np.int64)


__all__ = ["read_idx", "read_idx_pair", "read_idx_header", "IdxError", "IdxMagicError", "IdxTruncatedError",
           "IdxSizeError", "IdxCountMismatch", "DTYPES"]
