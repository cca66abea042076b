"""The feature file: rows of float32 (``.npy`` or raw ``.f32``) plus ``OUTPUT.json``, its manifest,
written resumably and sharded over torchrun ranks (what ``kt features`` and ``kt hog`` produce)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from caffe_compat.files import read_json, write_json
from caffe_compat.errors import BadPayload, CaffeCompatError, CaffeFormatError

FORMAT, VERSION = "caffekt-features", 1


# ---------------------------------------------------------------- files


def manifest_path(out: str) -> str:
    return out + ".json"


def write_manifest(path: str, doc: dict) -> None:
    write_json(path, doc, sort_keys=True)


def read_manifest(path: str) -> dict:
    doc = read_json(path, "feature manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CaffeFormatError(f"not a {FORMAT} manifest", path)
    return doc


def file_layout(out: str) -> str:
    if out.endswith(".npy"):
        return "npy"
    if out.endswith(".f32"):
        return "f32"
    raise CaffeCompatError(f"{out}: feature files end in .npy or .f32")


def open_rows(out: str, n: int, dim: int, create: bool) -> np.ndarray:
    """The (n, dim) float32 memory map of ``out``; its size is checked against the request, never trusted."""
    if create:
        if file_layout(out) == "npy":
            return np.lib.format.open_memmap(out, mode="w+", dtype="<f4", shape=(n, dim))
        return np.memmap(out, dtype="<f4", mode="w+", shape=(n, dim))
    if not os.path.isfile(out):
        raise CaffeFormatError("feature file named by the manifest is missing", out)
    if file_layout(out) == "npy":
        arr = np.lib.format.open_memmap(out, mode="r+")
        if arr.shape != (n, dim) or arr.dtype != np.dtype("<f4"):
            raise CaffeFormatError(f"holds {arr.shape} {arr.dtype}, the manifest says ({n}, {dim}) float32", out)
        return arr
    size = os.path.getsize(out)
    if size != n * dim * 4:
        raise CaffeFormatError(f"{size} bytes, the manifest says {n} x {dim} float32 ({n * dim * 4} bytes)", out)
    return np.memmap(out, dtype="<f4", mode="r+", shape=(n, dim))


def load_features(path: str, mmap: bool = True) -> Tuple[np.ndarray, dict]:
    """(rows, manifest) of a finished feature file; an unfinished one is refused."""
    man_path = manifest_path(path)
    if os.path.isfile(man_path):
        man = read_manifest(man_path)
        if not man.get("complete"):
            raise CaffeFormatError(f"feature extraction unfinished ({man.get('rows_done')} of "
                                   f"{len(man.get('images', []))} rows): rerun it to resume", path)
        arr = open_rows(path, len(man["images"]), int(man["dim"]), create=False)
        return (arr if mmap else np.array(arr)), man
    if path.endswith(".npy") and os.path.isfile(path):  # a bare .npy from elsewhere
        arr = np.load(path, mmap_mode="r" if mmap else None)
        if arr.ndim != 2:
            raise CaffeFormatError(f"features must be 2-D (images x dim), got shape {arr.shape}", path)
        return arr, {"images": [f"#{i}" for i in range(len(arr))], "dim": int(arr.shape[1])}
    raise CaffeFormatError(f"no manifest {os.path.basename(man_path)} beside the feature file", path)


# ---------------------------------------------------------------- the resumable writer


@dataclass
class Request:
    """What a feature file is made from; every field but ``batch_size`` must match to resume."""
    images: List[str]
    source: Dict                       # model / weights / blob, or the HOG parameters
    options: Dict = field(default_factory=dict)

    def keys(self) -> Dict:
        return {"images": self.images, **{f"source.{k}": v for k, v in self.source.items()},
                **{f"options.{k}": v for k, v in self.options.items()}}


def check_same_request(have: dict, want: Request, path: str) -> None:
    old = Request(have.get("images", []), have.get("source", {}), have.get("options", {})).keys()
    for k, v in want.keys().items():
        if json.loads(json.dumps(v)) != old.get(k):
            if k == "images":
                a, b = old.get(k) or [], v
                i = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                detail = f"{len(a)} images there, {len(b)} here; first difference at row {i}"
            else:
                detail = f"{old.get(k)!r} there, {v!r} here"
            raise CaffeCompatError(f"{path}: the existing manifest does not match this request: key {k!r} "
                                   f"({detail}); use the same options or delete the file to start over")
    extra = set(old) - set(want.keys())
    if extra:
        k = sorted(extra)[0]
        raise CaffeCompatError(f"{path}: the existing manifest does not match this request: key {k!r} "
                               f"is set there ({old[k]!r}) but not here; delete the file to start over")


# Long on purpose: the resumable, sharded writer loop (manifest, batches, progress, atomic close).
def write_rows(out: str, req: Request, rows: Callable[[np.ndarray], np.ndarray], *, batch_size: int = 64,
               progress: bool = True, on_batch: Optional[Callable[[int], None]] = None,
               desc: str = "features") -> np.ndarray:
    """Fill ``out`` with ``rows(indices)`` for every image, resuming from its manifest; returns the memmap.

    ``on_batch(rows_done)`` runs after each batch is on disk (tests use it
    to interrupt a run).  Non-finite rows raise ``BadPayload`` naming the image.
    """
    file_layout(out)
    if batch_size <= 0:
        raise CaffeCompatError(f"batch size must be positive, got {batch_size}")
    n = len(req.images)
    if n == 0:
        raise CaffeCompatError(f"{out}: no images to extract features from")
    man_p = manifest_path(out)
    arr, done, dim = None, 0, None
    if os.path.isfile(man_p):
        man = read_manifest(man_p)
        check_same_request(man, req, man_p)
        done, dim = int(man.get("rows_done", 0)), man.get("dim")
        if dim is not None:
            arr = open_rows(out, n, int(dim), create=False)
        if man.get("complete") and done == n:
            return arr
    doc = {"format": FORMAT, "version": VERSION, "data": os.path.basename(out), "layout": file_layout(out),
           "images": list(req.images), "source": req.source, "options": req.options,
           "dtype": "float32", "dim": dim, "rows_done": done, "complete": False}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=n, initial=done, desc=desc, unit="img", leave=False)
    try:
        for s in range(done, n, batch_size):
            idx = np.arange(s, min(n, s + batch_size))
            block = np.asarray(rows(idx), dtype=np.float32)
            if block.ndim != 2 or len(block) != len(idx):
                raise CaffeCompatError(f"row function gave shape {block.shape} for {len(idx)} images")
            bad = ~np.isfinite(block).all(axis=1)
            if bad.any():
                i = int(idx[bad.argmax()])
                raise BadPayload(f"features of image {req.images[i]!r} (row {i}) contain NaN/Inf "
                                 f"({desc}); the model or its input is broken", out)
            if arr is None:
                dim = int(block.shape[1])
                arr = open_rows(out, n, dim, create=True)
                doc["dim"] = dim
            elif block.shape[1] != arr.shape[1]:
                raise CaffeCompatError(f"{out}: rows are {block.shape[1]}-dim but the file holds {arr.shape[1]}")
            arr[idx[0]:idx[-1] + 1] = block
            arr.flush()
            doc["rows_done"] = int(idx[-1] + 1)
            write_manifest(man_p, doc)
            if bar is not None:
                bar.update(len(idx))
            if on_batch is not None:
                on_batch(doc["rows_done"])
    finally:
        if bar is not None:
            bar.close()
    doc["complete"] = True
    write_manifest(man_p, doc)
    return arr


def env_shard() -> Optional[Tuple[int, int]]:
    """(rank, world) under torchrun (``RANK``/``WORLD_SIZE``), or None in a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    return (int(os.environ.get("RANK", "0") or 0), world) if world > 1 else None


def shard_path(out: str, rank: int, world: int) -> str:
    stem, ext = os.path.splitext(out)
    return f"{stem}.shard{rank}of{world}{ext}"


def write_sharded(out: str, req: Request, rows: Callable[[np.ndarray], np.ndarray], rank: int, world: int, *,
                  wait_s: float = 3600.0, **kw) -> Optional[np.ndarray]:
    """``write_rows`` split over ``world`` processes: rank r writes the contiguous rows
    [r*n/world, (r+1)*n/world) to its own resumable shard file; rank 0 waits for every shard, joins them
    into ``out`` (with the one manifest a single process would write) and removes them.  Only rank 0
    returns the rows; the others return None."""
    import time
    if not 0 <= rank < world:
        raise CaffeCompatError(f"rank {rank} is outside a world of {world} processes")
    n = len(req.images)
    cuts = [r * n // world for r in range(world + 1)]
    lo, hi = cuts[rank], cuts[rank + 1]
    part = Request(req.images[lo:hi], req.source, {**req.options, "shard": [rank, world]})
    if hi > lo:
        write_rows(shard_path(out, rank, world), part, lambda idx: rows(idx + lo), **kw)
    if rank != 0:
        return None
    man_p = manifest_path(out)
    if os.path.isfile(man_p):
        man = read_manifest(man_p)
        check_same_request(man, req, man_p)
        if man.get("complete"):
            return open_rows(out, n, int(man["dim"]), create=False)
    deadline = time.monotonic() + wait_s
    todo = [r for r in range(world) if cuts[r + 1] > cuts[r]]
    while True:
        waiting = [r for r in todo if not (os.path.isfile(manifest_path(shard_path(out, r, world)))
                                           and read_manifest(manifest_path(shard_path(out, r, world))).get("complete"))]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise CaffeCompatError(f"{out}: shards of ranks {waiting} did not finish within {wait_s:.0f}s")
        time.sleep(0.5)
    shards = [(r, load_features(shard_path(out, r, world))[0]) for r in todo]
    dim = int(shards[0][1].shape[1])
    arr = open_rows(out, n, dim, create=True)
    for r, x in shards:
        arr[cuts[r]:cuts[r + 1]] = x
    arr.flush()
    write_manifest(man_p, {"format": FORMAT, "version": VERSION, "data": os.path.basename(out),
                        "layout": file_layout(out), "images": list(req.images), "source": req.source,
                        "options": req.options, "dtype": "float32", "dim": dim, "rows_done": n,
                        "complete": True, "shards": world})
    for r, _ in shards:
        os.remove(shard_path(out, r, world))
        os.remove(manifest_path(shard_path(out, r, world)))
    return arr


def write_features(out, req, rows, shard, **kw):
    return write_rows(out, req, rows, **kw) if shard is None else write_sharded(out, req, rows, *shard, **kw)
