"""Teacher features: any blob of any net, for every image, into a resumable memory-mapped file.

Output: ``OUT`` (``.npy`` through ``np.lib.format.open_memmap``, or raw
little-endian float32 ``.f32``) of shape (images, dim), and ``OUT.json``, the
manifest: the image list, model, weights, blob, options, ``dim`` and
``rows_done``.  Rows are written batch by batch and ``rows_done`` is updated
(atomically, after the data is flushed) only when a batch is on disk, so an
interrupted run started again with the same request continues at the first
missing row; with the same batching the result is byte-identical to a run
that was never interrupted.  A manifest that does not match the request is
refused, naming the first key that differs.

Per-row post-processing, in this order: spatial average pooling to a
``pool_grid`` x ``pool_grid`` grid (``adaptive_avg_pool2d``), PCA (+ whitening)
fitted on a seeded sample of the pooled rows (numpy SVD; the transform is
kept in ``OUT.pca.npz``), then L2 normalisation.  With PCA the pooled rows
go to ``OUT.raw.npy`` first and the projected rows to ``OUT``.

The row computation is a callable ``rows(indices) -> (n, dim) float32`` so
HOG (``kt.hog``) and nets share the writer.  Under torchrun (``WORLD_SIZE`` >
1) rank r computes the contiguous rows [r*n/world, (r+1)*n/world) into its
own resumable shard file and rank 0 joins the shards into ``OUT``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.files import atomic_output, read_json, write_json
from caffe_compat.errors import BadPayload, CaffeCompatError, CaffeFormatError

FORMAT, VERSION = "caffekt-features", 1
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)
PCA_EPS = 1e-5          # added to the eigenvalues before whitening, so flat directions stay finite


# ---------------------------------------------------------------- files


def manifest_path(out: str) -> str:
    return out + ".json"


def _write_manifest(path: str, doc: dict) -> None:
    write_json(path, doc, sort_keys=True)


def _read_manifest(path: str) -> dict:
    doc = read_json(path, "feature manifest")
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CaffeFormatError(f"not a {FORMAT} manifest", path)
    return doc


def _layout(out: str) -> str:
    if out.endswith(".npy"):
        return "npy"
    if out.endswith(".f32"):
        return "f32"
    raise CaffeCompatError(f"{out}: feature files end in .npy or .f32")


def _open_rows(out: str, n: int, dim: int, create: bool) -> np.ndarray:
    """The (n, dim) float32 memory map of ``out``; its size is checked against the request, never trusted."""
    if create:
        if _layout(out) == "npy":
            return np.lib.format.open_memmap(out, mode="w+", dtype="<f4", shape=(n, dim))
        return np.memmap(out, dtype="<f4", mode="w+", shape=(n, dim))
    if not os.path.isfile(out):
        raise CaffeFormatError("feature file named by the manifest is missing", out)
    if _layout(out) == "npy":
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
        man = _read_manifest(man_path)
        if not man.get("complete"):
            raise CaffeFormatError(f"feature extraction unfinished ({man.get('rows_done')} of "
                                   f"{len(man.get('images', []))} rows): rerun it to resume", path)
        arr = _open_rows(path, len(man["images"]), int(man["dim"]), create=False)
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


def _mismatch(have: dict, want: Request, path: str) -> None:
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
    _layout(out)
    if batch_size <= 0:
        raise CaffeCompatError(f"batch size must be positive, got {batch_size}")
    n = len(req.images)
    if n == 0:
        raise CaffeCompatError(f"{out}: no images to extract features from")
    man_p = manifest_path(out)
    arr, done, dim = None, 0, None
    if os.path.isfile(man_p):
        man = _read_manifest(man_p)
        _mismatch(man, req, man_p)
        done, dim = int(man.get("rows_done", 0)), man.get("dim")
        if dim is not None:
            arr = _open_rows(out, n, int(dim), create=False)
        if man.get("complete") and done == n:
            return arr
    doc = {"format": FORMAT, "version": VERSION, "data": os.path.basename(out), "layout": _layout(out),
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
                arr = _open_rows(out, n, dim, create=True)
                doc["dim"] = dim
            elif block.shape[1] != arr.shape[1]:
                raise CaffeCompatError(f"{out}: rows are {block.shape[1]}-dim but the file holds {arr.shape[1]}")
            arr[idx[0]:idx[-1] + 1] = block
            arr.flush()
            doc["rows_done"] = int(idx[-1] + 1)
            _write_manifest(man_p, doc)
            if bar is not None:
                bar.update(len(idx))
            if on_batch is not None:
                on_batch(doc["rows_done"])
    finally:
        if bar is not None:
            bar.close()
    doc["complete"] = True
    _write_manifest(man_p, doc)
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
        man = _read_manifest(man_p)
        _mismatch(man, req, man_p)
        if man.get("complete"):
            return _open_rows(out, n, int(man["dim"]), create=False)
    deadline = time.monotonic() + wait_s
    todo = [r for r in range(world) if cuts[r + 1] > cuts[r]]
    while True:
        waiting = [r for r in todo if not (os.path.isfile(manifest_path(shard_path(out, r, world)))
                                           and _read_manifest(manifest_path(shard_path(out, r, world))).get("complete"))]
        if not waiting:
            break
        if time.monotonic() > deadline:
            raise CaffeCompatError(f"{out}: shards of ranks {waiting} did not finish within {wait_s:.0f}s")
        time.sleep(0.5)
    shards = [(r, load_features(shard_path(out, r, world))[0]) for r in todo]
    dim = int(shards[0][1].shape[1])
    arr = _open_rows(out, n, dim, create=True)
    for r, x in shards:
        arr[cuts[r]:cuts[r + 1]] = x
    arr.flush()
    _write_manifest(man_p, {"format": FORMAT, "version": VERSION, "data": os.path.basename(out),
                        "layout": _layout(out), "images": list(req.images), "source": req.source,
                        "options": req.options, "dtype": "float32", "dim": dim, "rows_done": n,
                        "complete": True, "shards": world})
    for r, _ in shards:
        os.remove(shard_path(out, r, world))
        os.remove(manifest_path(shard_path(out, r, world)))
    return arr


def _write(out, req, rows, shard, **kw):
    return write_rows(out, req, rows, **kw) if shard is None else write_sharded(out, req, rows, *shard, **kw)


# ---------------------------------------------------------------- post-processing


def pool_rows(blob, grid: Optional[int]):
    """(N, C, H, W) -> (N, C*g*g) by ``adaptive_avg_pool2d`` (a 2-D blob passes through)."""
    import torch.nn.functional as F
    if blob.dim() == 4 and grid:
        blob = F.adaptive_avg_pool2d(blob, grid)
    return blob.reshape(blob.shape[0], -1)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


@dataclass
class PCA:
    mean: np.ndarray          # (D,)
    components: np.ndarray    # (d, D) rows: principal directions
    variances: np.ndarray     # (d,) eigenvalues of the sample covariance
    whiten: bool

    def transform(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, np.float64) - self.mean) @ self.components.T
        if self.whiten:
            y /= np.sqrt(self.variances + PCA_EPS)
        return y.astype(np.float32)

    def save(self, path: str) -> None:
        import io
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, components=self.components, variances=self.variances,
                 whiten=np.array(self.whiten))
        with atomic_output(path) as f:
            f.write(buf.getvalue())

    @classmethod
    def load(cls, path: str) -> "PCA":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["components"], z["variances"], bool(z["whiten"]))


def fit_pca(x: np.ndarray, dim: int, whiten: bool, sample: int = 100000, seed: int = 0) -> PCA:
    """PCA by SVD of the centred sample (``sample`` rows drawn without replacement, seeded)."""
    n, d = x.shape
    if not 0 < dim <= min(d, n):
        raise CaffeCompatError(f"PCA to {dim} dims needs 0 < dim <= min(features {d}, images {n})")
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if sample >= n else np.sort(rng.choice(n, sample, replace=False))
    if len(idx) < dim:
        raise CaffeCompatError(f"PCA to {dim} dims needs a sample of at least {dim} rows, got {len(idx)}")
    s = np.asarray(x[idx], np.float64)
    mean = s.mean(0)
    _, sv, vt = np.linalg.svd(s - mean, full_matrices=False)
    var = sv[:dim] ** 2 / max(len(s) - 1, 1)
    return PCA(mean, vt[:dim], var, whiten)


def apply_pca(raw_path: str, out: str, pca: PCA, l2: bool, chunk: int = 8192) -> np.ndarray:
    """Project ``raw_path`` rows into ``out`` in chunks, then L2 if asked."""
    raw, man = load_features(raw_path)
    n = len(raw)
    d = pca.components.shape[0]
    tmp = out + ".part" + (".npy" if out.endswith(".npy") else ".f32")
    arr = _open_rows(tmp, n, d, create=True)
    for s in range(0, n, chunk):
        y = pca.transform(raw[s:s + chunk])
        arr[s:s + len(y)] = l2_normalize(y) if l2 else y
    arr.flush()
    del arr
    os.replace(tmp, out)
    return _open_rows(out, n, d, create=False)


# ---------------------------------------------------------------- models and images


def parse_model(spec: str) -> Tuple[str, Optional[str]]:
    """``PROTOTXT[:WEIGHTS]`` -> (prototxt, weights or None)."""
    if os.path.exists(spec) or ":" not in spec:
        return spec, None
    proto, weights = spec.rsplit(":", 1)
    return proto, (weights or None)


def checkpoint_prototxt(ckpt: str) -> str:
    """The net of a caffemodel our trainers wrote: ``deploy.prototxt`` in its folder (train-cc writes
    one), else the caffemodel's own layer list when its inputs are Input layers (Jigsaw++ snapshots)."""
    from caffe_compat.io import read_net
    if not os.path.isfile(ckpt):
        raise CaffeFormatError("checkpoint not found", ckpt)
    proto = os.path.join(os.path.dirname(os.path.abspath(ckpt)), "deploy.prototxt")
    if os.path.isfile(proto):
        return proto
    from caffe_compat.layers import is_data_layer
    layers = read_net(ckpt).layer
    if layers and not any(is_data_layer(lp) and lp.type != "Input" for lp in layers):
        return ckpt
    raise CaffeFormatError("no deploy.prototxt beside the checkpoint, and its own net reads from data "
                           "layers; give the net with --model PROTOTXT:WEIGHTS instead", ckpt)


def load_model(model: Optional[str] = None, checkpoint: Optional[str] = None, input_size: Optional[int] = None):
    """A TEST-phase ``Net`` from ``PROTOTXT[:WEIGHTS]`` or a checkpoint; returns (net, prototxt, weights).

    ``input_size`` overrides the spatial size of the first input (fully
    convolutional use of a deploy, e.g. a 64x64 tower on bigger images).
    """
    from caffe_compat.net import load_net

    if (model is None) == (checkpoint is None):
        raise CaffeCompatError("give exactly one of --model PROTOTXT[:WEIGHTS] and --checkpoint CKPT")
    proto, weights = parse_model(model) if model else (checkpoint_prototxt(checkpoint), checkpoint)
    if not os.path.isfile(proto):
        raise CaffeFormatError("model prototxt not found", proto)
    if weights is not None and not os.path.isfile(weights):
        raise CaffeFormatError("model weights not found", weights)
    shapes = None
    if input_size:   # the first Input layer's shape with a new H x W: the net is built once
        from caffe_compat.io import read_net
        first = next((lp for lp in read_net(proto).layer if lp.type == "Input" and len(lp.input_param.shape)),
                     None)
        if first is None:
            raise CaffeCompatError(f"{proto}: input_size needs an Input layer with a shape")
        shape = list(first.input_param.shape[0].dim)
        shapes = {first.top[0]: shape[:2] + [int(input_size), int(input_size)]}
    net = load_net(proto, weights=weights, phase="TEST", strict=False, input_shapes=shapes)
    net.eval()
    return net, proto, weights


@dataclass
class Preprocess:
    """Image -> C x H x W float32 net input.

    ``caffe``: BGR, shorter side resized to ``resize`` (default round(256/227
    * input)), centre crop to the input, minus ``mean`` (B, G, R) -- Caffe's
    test-time transform (data_transformer.cpp: centre crop, then mean).
    ``tile-mvn``: the image resized to the input as one tile, then the
    pretext's per-tile MVN across channels: (x - mean) / (std + 1e-9), as
    mvn_layer.cpp with across_channels, times ``scale`` (the pretext's Power
    layer multiplies by 50; nets that hold their own MVN + Power keep 1).
    """
    kind: str
    height: int
    width: int
    mean: Tuple[float, float, float] = IMAGENET_MEAN_BGR
    resize: Optional[int] = None
    scale: float = 1.0

    def __post_init__(self):
        if self.kind not in ("caffe", "tile-mvn"):
            raise CaffeCompatError(f"preprocess must be 'caffe' or 'tile-mvn', got {self.kind!r}")

    def options(self) -> dict:
        return {"preprocess": self.kind, "input": [self.height, self.width],
                "mean": list(self.mean) if self.kind == "caffe" else None,
                "resize": self.short_side() if self.kind == "caffe" else None,
                "scale": self.scale if self.kind == "tile-mvn" else None}

    def short_side(self) -> int:
        return int(self.resize or round(max(self.height, self.width) * 256 / 227))

    def __call__(self, path: str) -> np.ndarray:
        import cv2

        from caffe_compat.data.sources import read_image
        img = read_image(path)
        if self.kind == "tile-mvn":
            x = cv2.resize(img, (self.width, self.height), interpolation=cv2.INTER_LINEAR).astype(np.float64)
            x = (x - x.mean()) / (x.std() + 1e-9) * self.scale
            return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)
        h, w = img.shape[:2]
        s = self.short_side() / min(h, w)
        nh, nw = max(self.height, int(round(h * s))), max(self.width, int(round(w * s)))
        img = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
        y, x0 = (nh - self.height) // 2, (nw - self.width) // 2
        crop = img[y:y + self.height, x0:x0 + self.width].astype(np.float32)
        crop -= np.asarray(self.mean, np.float32)
        return np.ascontiguousarray(crop.transpose(2, 0, 1))


def net_rows(net, blob: str, prep: Preprocess, images: Sequence[str], pool_grid: Optional[int],
             l2: bool, device=None) -> Callable[[np.ndarray], np.ndarray]:
    """``rows(indices)``: forward the preprocessed images, take ``blob``, pool, optionally L2."""
    import torch
    if blob not in net.blob_shapes:
        raise CaffeCompatError(f"net {getattr(net, 'name', '')!r} has no blob {blob!r}; "
                               f"blobs: {', '.join(net.blob_shapes)}")
    name = net.inputs[0]

    @torch.no_grad()
    def rows(idx: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.stack([prep(images[i]) for i in idx]))
        if device is not None:
            x = x.to(device)
        out = net.forward_all(**{name: x})[blob]
        y = pool_rows(out.float(), pool_grid).cpu().numpy()
        return l2_normalize(y) if l2 else y
    return rows


def extract(images: Sequence[str], out: str, *, model: Optional[str] = None, checkpoint: Optional[str] = None,
            blob: str, preprocess: str = "caffe", mean: Sequence[float] = IMAGENET_MEAN_BGR,
            input_size: Optional[int] = None, resize: Optional[int] = None, scale: float = 1.0,
            pool_grid: Optional[int] = None, l2: bool = False,
            pca: Optional[int] = None, whiten: bool = False, pca_sample: int = 100000, seed: int = 0,
            batch_size: int = 64, progress: bool = True, on_batch=None, device=None,
            shard: Optional[Tuple[int, int]] = None) -> Optional[np.ndarray]:
    """Features of ``blob`` for every image into ``out`` (see the module docstring); returns the rows.

    ``shard=(rank, world)`` (default: from torchrun's environment) splits the
    rows over processes (``write_sharded``); ranks other than 0 return None.
    """
    shard = shard if shard is not None else env_shard()
    images = [str(p) for p in images]
    net, proto, weights = load_model(model, checkpoint, input_size)
    if device is not None:
        net.to(device)
    shape = net.blob_shapes[net.inputs[0]]
    prep = Preprocess(preprocess, int(shape[2]), int(shape[3]), tuple(float(m) for m in mean), resize, scale)
    opts = {**prep.options(), "pool_grid": pool_grid, "l2": bool(l2), "pca": pca, "whiten": bool(whiten),
            "pca_sample": pca_sample if pca else None, "seed": seed if pca else None}
    source = {"model": os.path.abspath(proto), "weights": os.path.abspath(weights) if weights else None,
              "blob": blob}
    rows = net_rows(net, blob, prep, images, pool_grid, l2 and not pca, device)
    if not pca:
        return _write(out, Request(images, source, opts), rows, shard, batch_size=batch_size,
                      progress=progress, on_batch=on_batch, desc=f"features {blob}")
    return _with_pca(images, out, source, opts, rows, pca, whiten, pca_sample, seed, l2,
                     batch_size, progress, on_batch, blob, shard)


def _with_pca(images, out, source, opts, rows, pca, whiten, pca_sample, seed, l2, batch_size, progress,
              on_batch, desc, shard=None):
    """Two passes: pooled rows to ``OUT.raw.npy`` (resumable), then PCA fitted and applied into ``OUT``."""
    raw = out + ".raw.npy"
    raw_opts = {k: v for k, v in opts.items() if k not in ("l2", "pca", "whiten", "pca_sample", "seed")}
    if _write(raw, Request(images, source, raw_opts), rows, shard, batch_size=batch_size, progress=progress,
              on_batch=on_batch, desc=f"features {desc}") is None:
        return None   # a rank other than 0: its shard is written, rank 0 fits and applies the PCA
    man_p = manifest_path(out)
    req = Request(images, source, opts)
    if os.path.isfile(man_p):
        man = _read_manifest(man_p)
        _mismatch(man, req, man_p)
        if man.get("complete"):
            return load_features(out)[0]
    x, _ = load_features(raw)
    p = fit_pca(x, int(pca), whiten, pca_sample, seed)
    p.save(out + ".pca.npz")
    arr = apply_pca(raw, out, p, l2)
    _write_manifest(man_p, {"format": FORMAT, "version": VERSION, "data": os.path.basename(out),
                        "layout": _layout(out), "images": list(images), "source": source, "options": opts,
                        "dtype": "float32", "dim": int(arr.shape[1]), "rows_done": len(images),
                        "complete": True, "pca_file": os.path.basename(out) + ".pca.npz",
                        "raw": os.path.basename(raw)})
    return arr
