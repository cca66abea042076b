"""Image sources for the knowledge-transfer pipeline, and the stored 255x255 images.

* ``list_images(path)``: a folder (searched recursively, sorted, by image
  extension) or a list file (one path per line; a trailing `` <int>`` label, as
  in Caffe's ImageData lists, is dropped; relative paths are taken from the
  list's folder).
* ``prep_stored(images, out)``: every image decoded once (``cv2.IMREAD_COLOR``,
  so grayscale and RGBA files become 3-channel BGR as Caffe reads them),
  shorter side resized to 256 and the centre 255x255 kept
  (``kt.puzzle.stored_image``, after the authors' generate_jps_dataset.cpp),
  appended as raw uint8 HWC BGR to ``out/images.u8``.  ``out/manifest.json``
  names the source of every stored image.  The work is resumable: progress
  goes to ``out/progress.json`` (written atomically after the pixel data is
  flushed), and a rerun truncates any partial tail and continues.
* ``StoredImages(out)``: the result as a read-only ``numpy.memmap``
  (``(n, 255, 255, 3)`` uint8), so the training loop never decodes a JPEG.
* ``ImageFiles(paths)``: the same interface, decoding on every access (the
  slow path, for evaluation on a few files and for benchmarks).
"""
from __future__ import annotations

import hashlib
import os
from typing import Iterable, List, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.files import read_json, write_json
from caffe_compat.data.sources import list_image_paths
from caffe_compat.errors import CaffeFormatError, UnsupportedParameter

from .puzzle import STORED, stored_image

DATA_FILE, MANIFEST, PROGRESS = "images.u8", "manifest.json", "progress.json"
FORMAT = "caffekt-stored-images"
VERSION = 1
IMAGE_BYTES = STORED * STORED * 3


def list_images(path: str) -> List[str]:
    """Image paths of a folder or a list file (``caffe_compat.data.sources.list_image_paths``)."""
    return list_image_paths(path)


def load_stored(path: str) -> np.ndarray:
    """One file -> its 255x255x3 uint8 BGR stored image; an unreadable file raises naming it."""
    from caffe_compat.data.sources import read_image  # cv2.IMREAD_COLOR, typed errors

    img = read_image(path, is_color=True)
    return stored_image(img)


def _inputs_digest(paths: Sequence[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()


def _decode_one(path: str) -> Tuple[Optional[bytes], Optional[str]]:
    try:
        return load_stored(path).tobytes(), None
    except CaffeFormatError as e:
        return None, e.detail
    except Exception as e:  # noqa: BLE001 -- OpenCV raises cv2.error on some corrupt inputs
        return None, f"{type(e).__name__}: {e}"


# Long on purpose: the resumable decode loop (manifest check, progress file, worker pool, skips)
# keeps its state in locals that each step updates.
def prep_stored(images, out: str, *, skip_bad: bool = False, workers: int = 0,
                chunk: int = 256, progress: bool = False) -> dict:
    """Build (or finish building) the stored images of ``images`` (a path or a list of files) in ``out``.

    Returns the manifest.  An unreadable file raises ``CaffeFormatError`` naming
    it, unless ``skip_bad`` (then it is listed under ``skipped``).  A folder
    already holding a different image set is refused.
    """
    paths = list_images(images) if isinstance(images, (str, os.PathLike)) else [os.fspath(p) for p in images]
    digest = _inputs_digest(paths)
    os.makedirs(out, exist_ok=True)
    data_path, prog_path, man_path = (os.path.join(out, n) for n in (DATA_FILE, PROGRESS, MANIFEST))
    if os.path.exists(man_path):
        man = read_json(man_path)
        if man.get("inputs_sha256") != digest:
            raise CaffeFormatError("the folder holds stored images of a different image set; "
                                   "use a new output folder", out)
        return man
    state = {"inputs_sha256": digest, "next": 0, "count": 0, "skipped": [], "stored_index": []}
    if os.path.exists(prog_path):
        old = read_json(prog_path)
        if old.get("inputs_sha256") != digest:
            raise CaffeFormatError("an unfinished preparation of a different image set is here; "
                                   "use a new output folder", out)
        state = old
    count = int(state["count"])
    # drop any tail written after the last recorded progress (a kill mid-chunk)
    with open(data_path, "ab") as f:
        f.truncate(count * IMAGE_BYTES)

    pool = None
    if workers > 0:
        import multiprocessing as mp
        pool = mp.get_context("spawn").Pool(workers)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), initial=int(state["next"]), unit="img", desc="prep")
    try:
        with open(data_path, "ab") as f:
            start = int(state["next"])
            while start < len(paths):
                names = paths[start:start + chunk]
                results = pool.map(_decode_one, names) if pool else [_decode_one(p) for p in names]
                for k, (raw, err) in enumerate(results):
                    if raw is None:
                        if not skip_bad:
                            raise CaffeFormatError(f"cannot be stored: {err} (use --skip-bad to leave "
                                                   f"unreadable files out)", names[k])
                        state["skipped"].append({"path": names[k], "error": err})
                        continue
                    f.write(raw)
                    state["stored_index"].append(start + k)
                    state["count"] += 1
                f.flush()
                os.fsync(f.fileno())
                start += len(names)
                state["next"] = start
                write_json(prog_path, state)
                if bar is not None:
                    bar.update(len(names))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        if bar is not None:
            bar.close()
    man = {"format": FORMAT, "version": VERSION, "data": DATA_FILE, "count": int(state["count"]),
           "shape": [STORED, STORED, 3], "dtype": "uint8", "layout": "HWC BGR",
           "inputs_sha256": digest,
           "sources": [paths[i] for i in state["stored_index"]], "skipped": state["skipped"]}
    write_json(man_path, man)
    os.remove(prog_path)
    return man


class StoredImages:
    """The stored images of ``prep_stored``: ``len``, ``[i]`` -> (255, 255, 3) uint8 BGR (read-only view)."""

    def __init__(self, folder: str):
        man_path = os.path.join(folder, MANIFEST)
        if not os.path.isfile(man_path):
            hint = " (preparation unfinished: rerun prep)" if os.path.exists(os.path.join(folder, PROGRESS)) else ""
            raise CaffeFormatError(f"no {MANIFEST}: not a stored-image folder{hint}", folder)
        man = read_json(man_path)
        if man.get("format") != FORMAT or man.get("version") != VERSION:
            raise CaffeFormatError(f"not a {FORMAT} version {VERSION} manifest", man_path)
        if man.get("shape") != [STORED, STORED, 3] or man.get("dtype") != "uint8":
            raise CaffeFormatError(f"stored images must be {STORED}x{STORED}x3 uint8, the manifest says "
                                   f"{man.get('shape')} {man.get('dtype')}", man_path)
        self.folder, self.manifest = folder, man
        self.count = int(man["count"])
        self.sources = list(man.get("sources", []))
        self.data_path = os.path.join(folder, os.path.basename(man.get("data", DATA_FILE)))
        size = os.path.getsize(self.data_path) if os.path.exists(self.data_path) else -1
        if size != self.count * IMAGE_BYTES or len(self.sources) != self.count:
            raise CaffeFormatError(f"manifest says {self.count} images ({self.count * IMAGE_BYTES} bytes, "
                                   f"{len(self.sources)} sources listed) but the data file has {size} bytes",
                                   self.data_path)
        self._arr = None

    def _array(self) -> np.ndarray:
        if self._arr is None:  # opened lazily so a pickled copy (DataLoader worker) maps its own
            self._arr = (np.memmap(self.data_path, dtype=np.uint8, mode="r",
                                   shape=(self.count, STORED, STORED, 3)) if self.count
                         else np.zeros((0, STORED, STORED, 3), np.uint8))
        return self._arr

    def __getstate__(self):
        d = dict(self.__dict__)
        d["_arr"] = None
        return d

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: int) -> np.ndarray:
        return self._array()[int(i)]

    def subset(self, indices: Iterable[int]) -> "ArrayImages":
        idx = np.asarray(list(indices), dtype=np.int64)
        return ArrayImages(np.asarray(self._array()[idx]), [self.sources[i] for i in idx])


class ArrayImages:
    """Stored images held in memory: an ``(n, 255, 255, 3)`` uint8 array."""

    def __init__(self, array: np.ndarray, sources: Optional[Sequence[str]] = None):
        array = np.asarray(array)
        if array.ndim != 4 or array.shape[1:] != (STORED, STORED, 3) or array.dtype != np.uint8:
            raise UnsupportedParameter(f"expected (n, {STORED}, {STORED}, 3) uint8, got {array.shape} {array.dtype}")
        self.array = array
        self.sources = list(sources) if sources is not None else [f"#{i}" for i in range(len(array))]

    def __len__(self) -> int:
        return len(self.array)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.array[int(i)]


class ImageFiles:
    """Image files decoded and reduced to stored images on every access (no preparation step)."""

    def __init__(self, paths: Sequence[str]):
        self.sources = list(paths)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> np.ndarray:
        return load_stored(self.sources[int(i)])


class LMDBImages:
    """The Datums of a Caffe LMDB (e.g. the authors' jps_dataset) as H x W x 3 uint8 BGR images, in key order."""

    def __init__(self, path: str):
        from caffe_compat.data.sources import LMDBSource
        self.source = LMDBSource(path)
        self.path = path

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> np.ndarray:
        s = self.source.get(int(i))
        img = s.image if s.layout == "HWC" else np.ascontiguousarray(np.asarray(s.image).transpose(1, 2, 0))
        if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
            raise CaffeFormatError(f"record {i} is {img.shape} {img.dtype}; puzzles need 3-channel uint8 images",
                                   self.path)
        return img


def is_lmdb(path: str) -> bool:
    return os.path.isfile(os.path.join(path, "data.mdb"))


def open_images(images: Optional[str] = None, stored: Optional[str] = None, *,
                prep_into: Optional[str] = None, progress: bool = False):
    """``StoredImages(stored)`` (or ``LMDBImages`` when ``stored`` is an LMDB) or
    ``ImageFiles(list_images(images))``; exactly one must be given.  With
    ``prep_into``, ``images`` are first stored there (``prep_stored``, resumable)
    and the stored images are returned."""
    if (images is None) == (stored is None):
        raise UnsupportedParameter("give exactly one of images= (folder or list) and stored= (prep output or LMDB)")
    if stored is not None:
        return LMDBImages(stored) if is_lmdb(stored) else StoredImages(stored)
    if prep_into is not None:
        prep_stored(images, prep_into, progress=progress)
        return StoredImages(prep_into)
    return ImageFiles(list_images(images))


def image_paths(src: str) -> List[str]:
    """Absolute paths of the images a folder (recursive) or a list file names."""
    return [os.path.abspath(p) for p in list_images(src)]
