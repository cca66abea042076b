"""Caffe's data side: DataTransformer, image/LMDB sources, and the DataLoader glue.

Names load lazily, so ``caffe_compat.data.transformer`` and ``.sources`` work
without torch; only ``loader`` imports it.
"""
from __future__ import annotations

from .._lazy import lazy_getattr

_API = {
    "DataTransformer": "transformer", "Draw": "transformer", "decode_image": "transformer",
    "Sample": "sources", "ListEntry": "sources", "read_image": "sources",
    "parse_image_list": "sources", "ImageListSource": "sources", "ImageFolderSource": "sources",
    "LMDBSource": "sources", "write_lmdb": "sources", "write_lmdb_records": "sources",
    "image_to_datum_bytes": "sources",
    "CaffeDataset": "loader", "CaffeLoader": "loader", "EpochSampler": "loader",
    "make_loader": "loader", "sample_rng": "loader", "epoch_order": "loader",
}

__all__ = sorted(_API)


__getattr__ = lazy_getattr(__name__, _API, globals())
