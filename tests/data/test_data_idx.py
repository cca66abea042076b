"""The IDX reader: crafted good and bad files, and the real Fashion-MNIST files when installed."""
from __future__ import annotations

import gzip
import os
import struct
import tracemalloc

import numpy as np
import pytest

from caffe_compat.data.idx import (IdxCountMismatch, IdxError, IdxMagicError, IdxSizeError, IdxTruncatedError,
                                   read_idx, read_idx_pair)
from caffe_compat.errors import CaffeFormatError

FMNIST = "/usr/share/datasets/fashion-mnist"


def _idx_bytes(arr: np.ndarray, code: int) -> bytes:
    """An IDX file built by hand from the format's description (independent of the reader)."""
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    return head + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, data: bytes, gz: bool) -> str:
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        with open(path, "wb") as f:
            f.write(data)
    return str(path)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype,code", [("u1", 0x08), ("i1", 0x09), ("i2", 0x0B), ("i4", 0x0C), ("f4", 0x0D),
                                        ("f8", 0x0E)])
def test_round_trip_every_type(tmp_path, gz, dtype, code):
    rng = np.random.default_rng(0)
    a = (rng.normal(size=(3, 4, 5)) * 100).astype(dtype)
    p = _write(tmp_path / "a.idx", _idx_bytes(a, code), gz)
    b = read_idx(p)
    assert b.shape == (3, 4, 5) and b.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(a, b)


def test_big_endian_values_are_decoded(tmp_path):
    p = _write(tmp_path / "a.idx", bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">ii", 258, -2),
               False)
    assert read_idx(p).tolist() == [258, -2]


@pytest.mark.parametrize("head", [b"\x00\x01\x08\x01", b"\x00\x00\x07\x01", b"\x00\x00\x08\x00", b"PK\x03\x04"])
def test_wrong_magic(tmp_path, head):
    p = _write(tmp_path / "bad.idx", head + b"\0" * 20, False)
    with pytest.raises(IdxMagicError, match=r"bad\.idx: byte 0: not an IDX file: magic bytes"):
        read_idx(p)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_payload(tmp_path, gz):
    a = np.arange(60, dtype=np.uint8).reshape(3, 4, 5)
    p = _write(tmp_path / "t.idx", _idx_bytes(a, 0x08)[:-7], gz)
    with pytest.raises(IdxTruncatedError, match=r"t\.idx: byte 53: 3x4x5 values of uint8: expected 60 bytes, "
                                                r"the file ends after 53"):
        read_idx(p)


def test_truncated_header_and_cut_gzip_stream(tmp_path):
    p = _write(tmp_path / "h.idx", b"\x00\x00\x08\x03" + b"\0\0\0\x01", False)
    with pytest.raises(IdxTruncatedError, match="3 dimension sizes: expected 12 bytes, the file ends after 4"):
        read_idx(p)
    p = _write(tmp_path / "s.idx", b"\x00\x00", False)
    with pytest.raises(IdxTruncatedError, match="holds 2 bytes"):
        read_idx(p)
    whole = gzip.compress(_idx_bytes(np.zeros((50, 50), np.uint8), 0x08))
    p = _write(tmp_path / "cut.idx.gz", whole[:len(whole) // 2], False)
    with pytest.raises(IdxTruncatedError, match=r"cut\.idx\.gz"):
        read_idx(p)


def test_trailing_data_is_refused(tmp_path):
    p = _write(tmp_path / "x.idx", _idx_bytes(np.zeros(4, np.uint8), 0x08) + b"\1", True)
    with pytest.raises(IdxSizeError, match="data continues past the 4 payload bytes"):
        read_idx(p)


def test_lying_header_allocates_nothing_big(tmp_path):
    """A header claiming 4G x 4G x 255 values over 10 real bytes: refused without allocating the claim."""
    p = _write(tmp_path / "lie.idx", bytes([0, 0, 0x08, 3]) + struct.pack(">III", 2**32 - 1, 2**32 - 1, 255)
               + b"\0" * 10, True)
    with pytest.raises(IdxSizeError, match="over the 2147483648-byte limit"):
        read_idx(p)
    # under the limit but far over the file: read in chunks, so the peak stays near the file's real size
    p = _write(tmp_path / "lie2.idx", bytes([0, 0, 0x08, 1]) + struct.pack(">I", 1 << 30) + b"\0" * 10, False)
    tracemalloc.start()
    with pytest.raises(IdxTruncatedError, match="expected 1073741824 bytes, the file ends after 10"):
        read_idx(p)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_pair_count_mismatch_and_shapes(tmp_path):
    x = _write(tmp_path / "x.idx", _idx_bytes(np.zeros((3, 2, 2), np.uint8), 0x08), False)
    y = _write(tmp_path / "y.idx", _idx_bytes(np.array([1, 2], np.uint8), 0x08), False)
    with pytest.raises(IdxCountMismatch, match=r"x\.idx: 3 images but .*y\.idx holds 2 labels"):
        read_idx_pair(x, y)
    with pytest.raises(IdxError, match="expected N x H x W uint8 images, got 2"):
        read_idx_pair(y, y)
    y3 = _write(tmp_path / "y3.idx", _idx_bytes(np.array([1, 2, 9], np.uint8), 0x08), False)
    xs, ys = read_idx_pair(x, y3)
    assert xs.shape == (3, 2, 2) and ys.dtype == np.int64 and ys.tolist() == [1, 2, 9]


def test_errors_are_caffekt_format_errors(tmp_path):
    assert issubclass(IdxMagicError, CaffeFormatError) and issubclass(IdxCountMismatch, IdxError)
    with pytest.raises(IdxError, match="no such file"):
        read_idx(str(tmp_path / "missing.gz"))


@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")
def test_fashion_mnist_matches_an_offset_reader():
    """Against the reading Fashion-MNIST's own loader does: gunzip, skip 16 (images) / 8 (labels) bytes."""
    x, y = read_idx_pair(f"{FMNIST}/t10k-images-idx3-ubyte.gz", f"{FMNIST}/t10k-labels-idx1-ubyte.gz")
    with gzip.open(f"{FMNIST}/t10k-labels-idx1-ubyte.gz") as f:
        ref_y = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(f"{FMNIST}/t10k-images-idx3-ubyte.gz") as f:
        ref_x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(len(ref_y), 28, 28)
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
    np.testing.assert_array_equal(x, ref_x)
    np.testing.assert_array_equal(y, ref_y)
