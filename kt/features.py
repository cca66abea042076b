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

import os
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from caffe_compat.errors import CaffeCompatError, CaffeFormatError
from caffe_compat.files import atomic_output

# the feature file format lives in kt.featurefile; its API stays importable from here
from .featurefile import (FORMAT, VERSION, Request, check_same_request, env_shard, file_layout,
                          load_features, manifest_path, open_rows, read_manifest, write_features,
                          write_manifest, write_rows)

IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

PCA_EPS = 1e-5          # added to the eigenvalues before whitening, so flat directions stay finite


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
    arr = open_rows(tmp, n, d, create=True)
    for s in range(0, n, chunk):
        y = pca.transform(raw[s:s + chunk])
        arr[s:s + len(y)] = l2_normalize(y) if l2 else y
    arr.flush()
    del arr
    os.replace(tmp, out)
    return open_rows(out, n, d, create=False)


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
        return write_features(out, Request(images, source, opts), rows, shard, batch_size=batch_size,
                      progress=progress, on_batch=on_batch, desc=f"features {blob}")
    return _with_pca(images, out, source, opts, rows, pca, whiten, pca_sample, seed, l2,
                     batch_size, progress, on_batch, blob, shard)


def _with_pca(images, out, source, opts, rows, pca, whiten, pca_sample, seed, l2, batch_size, progress,
              on_batch, desc, shard=None):
    """Two passes: pooled rows to ``OUT.raw.npy`` (resumable), then PCA fitted and applied into ``OUT``."""
    raw = out + ".raw.npy"
    raw_opts = {k: v for k, v in opts.items() if k not in ("l2", "pca", "whiten", "pca_sample", "seed")}
    if write_features(raw, Request(images, source, raw_opts), rows, shard, batch_size=batch_size, progress=progress,
              on_batch=on_batch, desc=f"features {desc}") is None:
        return None   # a rank other than 0: its shard is written, rank 0 fits and applies the PCA
    man_p = manifest_path(out)
    req = Request(images, source, opts)
    if os.path.isfile(man_p):
        man = read_manifest(man_p)
        check_same_request(man, req, man_p)
        if man.get("complete"):
            return load_features(out)[0]
    x, _ = load_features(raw)
    p = fit_pca(x, int(pca), whiten, pca_sample, seed)
    p.save(out + ".pca.npz")
    arr = apply_pca(raw, out, p, l2)
    write_manifest(man_p, {"format": FORMAT, "version": VERSION, "data": os.path.basename(out),
                        "layout": file_layout(out), "images": list(images), "source": source, "options": opts,
                        "dtype": "float32", "dim": int(arr.shape[1]), "rows_done": len(images),
                        "complete": True, "pca_file": os.path.basename(out) + ".pca.npz",
                        "raw": os.path.basename(raw)})
    return arr


__all__ = ["extract", "load_model", "parse_model", "checkpoint_prototxt", "Preprocess", "net_rows", "pool_rows",
           "l2_normalize", "PCA", "fit_pca", "apply_pca", "IMAGENET_MEAN_BGR", "load_features", "manifest_path",
           "Request", "write_rows", "env_shard"]
