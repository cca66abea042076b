"""Object proposals: selective search (OpenCV contrib) cached per image, or the user's box files.

* ``selective_search``: ``cv2.ximgproc.segmentation`` in ``fast`` or
  ``quality`` mode (Uijlings et al.; the fork uses the MATLAB code's boxes,
  pascal_voc.py:135-147), first ``top_k`` boxes (2000, as pascal_voc.py:43).
  Needs ``opencv-contrib-python-headless`` (``pip install caffekt[detect]``);
  without it a ``ProposalError`` says so.
* ``ProposalCache``: ``<dir>/<id>.npy`` per image (0-based x1, y1, x2, y2,
  float32), each written atomically, so an interrupted run resumes where it
  stopped; tqdm progress.
* ``from_file``: a folder of ``<id>.npy``, an ``.npz`` keyed by image id
  (read with ``allow_pickle=False``), or the fork's ``.mat`` (a ``boxes`` cell
  per image in split order, (y1, x1, y2, x2) 1-based, pascal_voc.py:141-145).

Boxes reaching outside an image are clipped and empty ones dropped, with a
warning naming the image; an image with no proposal is warned about.
"""
from __future__ import annotations

import os
import warnings
from typing import List, Optional

import numpy as np

from caffe_compat.errors import CaffeCompatError

MODES = ("fast", "quality")


class ProposalError(CaffeCompatError):
    """Proposals cannot be computed or read."""


def has_selective_search() -> bool:
    try:
        import cv2
    except ImportError:
        return False
    return hasattr(cv2, "ximgproc") and hasattr(cv2.ximgproc, "segmentation")


def selective_search(image_bgr: np.ndarray, mode: str = "fast", top_k: int = 2000) -> np.ndarray:
    """(N, 4) float32 boxes, 0-based inclusive, in selective search's order."""
    if mode not in MODES:
        raise ProposalError(f"selective search mode must be one of {MODES}, got {mode!r}")
    if not has_selective_search():
        raise ProposalError("selective search needs OpenCV's contrib modules (cv2.ximgproc): "
                            "pip install 'opencv-contrib-python-headless>=4.8,<5' (caffekt[detect]), "
                            "or give precomputed proposals with --proposals")
    import cv2
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(np.ascontiguousarray(image_bgr))
    if mode == "fast":
        ss.switchToSelectiveSearchFast()
    else:
        ss.switchToSelectiveSearchQuality()
    rects = np.asarray(ss.process(), np.float32).reshape(-1, 4)[:top_k]
    # (x, y, w, h) -> inclusive corners
    return np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2] - 1,
                     rects[:, 1] + rects[:, 3] - 1], axis=1).astype(np.float32)


def sanitize(boxes: np.ndarray, width: int, height: int, where: str) -> np.ndarray:
    """Clip to the image, drop empty boxes; warn naming ``where`` when anything changed or nothing is left."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4)
    if not np.isfinite(b).all():
        raise ProposalError(f"{where}: proposals hold NaN or infinite coordinates")
    c = b.copy()
    c[:, 0::2] = np.clip(c[:, 0::2], 0, width - 1)
    c[:, 1::2] = np.clip(c[:, 1::2], 0, height - 1)
    ok = (c[:, 2] >= c[:, 0]) & (c[:, 3] >= c[:, 1]) & (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1])
    moved = int((np.abs(c - b) > 0).any(axis=1).sum())
    if moved or not ok.all():
        warnings.warn(f"{where}: {moved} proposal(s) reach outside the {width}x{height} image (clipped), "
                      f"{int((~ok).sum())} empty one(s) dropped")
    c = c[ok]
    if c.shape[0] == 0:
        warnings.warn(f"{where}: no object proposals for this image")
    return c


def _save_npy(path: str, arr: np.ndarray) -> None:
    from caffe_compat.files import atomic_output
    with atomic_output(path) as f:
        np.save(f, arr, allow_pickle=False)


def _load_npy(path: str) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise ProposalError(f"{path}: not a readable .npy box array ({e})") from None
    if a.ndim != 2 or a.shape[1] != 4:
        if a.size == 0:
            return np.zeros((0, 4), np.float32)
        raise ProposalError(f"{path}: proposals must be an N x 4 array (x1, y1, x2, y2), got shape {a.shape}")
    return a.astype(np.float32)


class ProposalCache:
    """Selective-search boxes per image under ``folder`` (``<id>.npy``), computed once, atomically."""

    def __init__(self, folder: str, mode: str = "fast", top_k: int = 2000):
        self.folder, self.mode, self.top_k = folder, mode, int(top_k)
        os.makedirs(folder, exist_ok=True)

    def path(self, index: str) -> str:
        return os.path.join(self.folder, index + ".npy")

    def get(self, index: str, image_path: str) -> np.ndarray:
        p = self.path(index)
        if os.path.isfile(p):
            return _load_npy(p)
        import cv2
        im = cv2.imread(image_path, cv2.IMREAD_COLOR)
        if im is None:
            raise ProposalError(f"cannot read image {image_path} (image {index!r})")
        boxes = selective_search(im, self.mode, self.top_k)
        _save_npy(p, boxes)
        return boxes

    def all(self, records, progress: bool = True) -> List[np.ndarray]:
        from tqdm import tqdm
        todo = sum(not os.path.isfile(self.path(r.index)) for r in records)
        out = []
        bar = tqdm(records, desc=f"selective search ({self.mode}, {todo} to compute)", disable=not progress,
                   unit="img")
        for r in bar:
            out.append(sanitize(self.get(r.index, r.image), r.width, r.height, f"image {r.index!r} ({r.image})"))
        return out


def from_file(path: str, records) -> List[np.ndarray]:
    """Proposals for ``records`` (in order) from a folder of .npy, an .npz or the fork's .mat."""
    if os.path.isdir(path):
        out = []
        for r in records:
            p = os.path.join(path, r.index + ".npy")
            if not os.path.isfile(p):
                raise ProposalError(f"{path}: no proposal file {r.index}.npy for image {r.index!r}")
            out.append(_load_npy(p))
    elif path.endswith(".npz"):
        try:
            z = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise ProposalError(f"{path}: not a readable .npz ({e})") from None
        out = []
        for r in records:
            if r.index not in z.files:
                raise ProposalError(f"{path}: no proposals for image {r.index!r}")
            out.append(np.asarray(z[r.index], np.float32).reshape(-1, 4))
    elif path.endswith(".mat"):
        out = _from_mat(path, len(records))
    elif not os.path.exists(path):
        raise ProposalError(f"{path}: proposal file or folder not found")
    else:
        raise ProposalError(f"{path}: proposals must be a folder of <id>.npy, an .npz or a .mat file")
    return [sanitize(b, r.width, r.height, f"image {r.index!r} ({r.image})") for b, r in zip(out, records)]


def _from_mat(path: str, n: int) -> List[np.ndarray]:
    import scipy.io as sio
    try:
        raw = sio.loadmat(path)["boxes"].ravel()
    except (KeyError, ValueError, OSError, NotImplementedError) as e:
        raise ProposalError(f"{path}: not a selective-search .mat with a 'boxes' cell ({e})") from None
    if raw.shape[0] != n:
        raise ProposalError(f"{path}: {raw.shape[0]} box sets for {n} images of the split")
    return [np.asarray(b, np.float32).reshape(-1, 4)[:, (1, 0, 3, 2)] - 1 for b in raw]


def proposals_for(records, proposals: Optional[str], cache: Optional[str], mode: str = "fast",
                  progress: bool = True) -> List[np.ndarray]:
    """The user's file when given, else selective search cached under ``cache``."""
    if proposals:
        return from_file(proposals, records)
    if not cache:
        raise ProposalError("give --proposals FILE|DIR or a cache folder for selective search")
    return ProposalCache(cache, mode).all(records, progress)


__all__ = ["selective_search", "has_selective_search", "ProposalCache", "ProposalError", "from_file",
           "proposals_for", "sanitize", "MODES"]


