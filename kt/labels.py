"""Pseudo-label files in the formats the world uses.

* Caffe ImageData lists (``tools/convert_imageset.cpp``, ``image_data_layer.cpp``):
  one ``path label`` per line; the label follows the LAST space, so paths may
  contain spaces.  The released "ImageNet pseudo labels" text files use the
  same ``name label`` line form.
* The jps++ fork's ``labels.bin`` (``caffe-master-jps++/src/caffe/data_reader.cpp``):
  int32 count, then that many int32 labels, in dataset order (little-endian).
"""
from __future__ import annotations

import os
from typing import List, Sequence, Tuple

import numpy as np

from caffe_compat.errors import CaffeFormatError, MissingFile, UnsupportedParameter


def _atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_list(path: str, names: Sequence[str], labels: Sequence[int]) -> None:
    """Write an ImageData list / pseudo-label text file, atomically."""
    if len(names) != len(labels):
        raise UnsupportedParameter(f"{len(names)} names but {len(labels)} labels")
    lines = []
    for n, l in zip(names, labels):
        if "\n" in n:
            raise UnsupportedParameter(f"image name with a newline cannot be listed: {n!r}")
        lines.append(f"{n} {int(l)}\n")
    _atomic_write_bytes(path, "".join(lines).encode())


def read_list(path: str) -> Tuple[List[str], np.ndarray]:
    """Read ``path label`` lines (``caffe_compat.data.parse_image_list``); errors name the file and line."""
    from caffe_compat.data.sources import parse_image_list
    try:
        entries = parse_image_list(path)
    except CaffeFormatError as e:
        if e.where is None:   # unreadable file: keep the OSError kinds callers expect
            if not os.path.exists(path):
                raise MissingFile(2, "No such file or directory", path) from None
            raise
        # this module's messages name the line only (``line N``), not the column
        raise CaffeFormatError(e.detail, path, e.where.split(":")[0]) from None
    return [e.path for e in entries], np.asarray([e.label for e in entries], dtype=np.int64)


def write_labels_bin(path: str, labels: Sequence[int]) -> None:
    """The fork's ``labels.bin``: int32 count, then int32 labels (little-endian)."""
    arr = np.asarray(labels, dtype=np.int64)
    if arr.ndim != 1:
        raise UnsupportedParameter("labels must be one-dimensional")
    if arr.size and (arr.min() < -2**31 or arr.max() >= 2**31):
        raise UnsupportedParameter("labels must fit in int32")
    _atomic_write_bytes(path, np.concatenate([[arr.size], arr]).astype("<i4").tobytes())


def read_labels_bin(path: str) -> np.ndarray:
    size = os.path.getsize(path)
    if size < 4 or size % 4:
        raise CaffeFormatError(f"labels.bin holds int32 values; {size} bytes is not", path)
    raw = np.fromfile(path, dtype="<i4")
    n = int(raw[0])
    if n != raw.size - 1:
        raise CaffeFormatError(f"count says {n} labels but the file holds {raw.size - 1}", path)
    return raw[1:].astype(np.int64)
