"""k-means clustering of teacher features into pseudo-labels (faiss), and clustering metrics.

The paper clusters the pretext network's features with k-means (about 2000
clusters) and gives each image the label of its nearest centre.  ``kmeans``
wraps ``faiss.Kmeans`` (CPU here, GPU where faiss has one): seeded, empty
clusters re-split by faiss, centroids trained on a sample when the features do
not fit (``max_train``), assignment streamed in chunks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from caffe_compat.errors import CaffeCompatError, UnsupportedParameter


@dataclass
class KMeansResult:
    labels: np.ndarray          # (N,) int64 cluster of every row
    centroids: np.ndarray       # (k, D) float32
    objective: float            # sum of squared distances to the assigned centre
    sizes: np.ndarray           # (k,) rows per cluster


def kmeans_pp_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding (Arthur & Vassilvitskii 2007): each new centre drawn with probability ~ D(x)^2."""
    centres = np.empty((k, x.shape[1]), dtype=np.float32)
    centres[0] = x[rng.integers(len(x))]
    d2 = ((x - centres[0]) ** 2).sum(1, dtype=np.float64)
    for i in range(1, k):
        total = d2.sum()
        j = int(rng.choice(len(x), p=d2 / total)) if total > 0 else int(rng.integers(len(x)))
        centres[i] = x[j]
        d2 = np.minimum(d2, ((x - centres[i]) ** 2).sum(1, dtype=np.float64))
    return centres


def kmeans(features: np.ndarray, k: int, seed: int = 0, niter: int = 20, nredo: int = 1,
           max_train: Optional[int] = None, chunk: int = 65536, gpu: bool = False,
           init: str = "auto", verbose: bool = False) -> KMeansResult:
    """Cluster ``features`` (N, D) (may be a memory map) into ``k`` clusters.

    ``init``: ``"kmeans++"``, ``"random"`` (faiss' own: k random rows) or
    ``"auto"`` (k-means++ while ``n_train * k * D`` stays below 2e9 operations).
    """
    import faiss

    n, d = features.shape
    if k > n:
        raise CaffeCompatError(f"k={k} clusters need at least {k} images, got {n}")
    rng = np.random.default_rng(seed)
    idx = np.arange(n) if max_train is None or max_train >= n else np.sort(rng.choice(n, max_train, replace=False))
    train = np.ascontiguousarray(features[idx], dtype=np.float32)
    if not np.isfinite(train).all():
        bad = idx[~np.isfinite(train).all(axis=1)][:5]
        raise CaffeCompatError(f"features contain NaN/Inf (rows {bad.tolist()} ...)")
    km = faiss.Kmeans(d, k, niter=niter, nredo=nredo, seed=seed, verbose=verbose, gpu=gpu,
                      max_points_per_centroid=max(256, (len(train) + k - 1) // k))
    if init == "auto":
        init = "kmeans++" if len(train) * k * d <= 2e9 else "random"
    if init not in ("kmeans++", "random"):
        raise UnsupportedParameter(f"init must be 'kmeans++', 'random' or 'auto', got {init!r}")
    km.train(train, init_centroids=kmeans_pp_init(train, k, rng) if init == "kmeans++" else None)
    labels = np.empty(n, dtype=np.int64)
    obj = 0.0
    for s in range(0, n, chunk):  # streamed: only `chunk` rows in memory at once
        block = np.ascontiguousarray(features[s:s + chunk], dtype=np.float32)
        if not np.isfinite(block).all():
            raise CaffeCompatError(f"features contain NaN/Inf in rows {s}..{s + len(block) - 1}")
        dist, lab = km.index.search(block, 1)
        labels[s:s + len(block)] = lab[:, 0]
        obj += float(dist.sum(dtype=np.float64))
    return KMeansResult(labels, km.centroids.copy(), obj, np.bincount(labels, minlength=k))


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (sklearn's default)."""
    a, b = np.asarray(a), np.asarray(b)
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    joint = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(joint, (ai, bi), 1)
    p = joint / joint.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    if ha == 0 and hb == 0:
        return 1.0
    denom = (ha + hb) / 2
    return mi / denom if denom > 0 else 0.0


def purity(clusters: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of images whose true label is the majority label of their cluster."""
    clusters, truth = np.asarray(clusters), np.asarray(truth)
    _, ci = np.unique(clusters, return_inverse=True)
    _, ti = np.unique(truth, return_inverse=True)
    table = np.zeros((ci.max() + 1, ti.max() + 1), dtype=np.int64)
    np.add.at(table, (ci, ti), 1)
    return float(table.max(1).sum() / len(clusters))


# ---------------------------------------------------------------- clustering a feature file (``kt cluster``)


def match_truth(images, truth_list: str) -> np.ndarray:
    """True label of every image from an ImageData list, matched by path.

    A list entry matches an image when the paths are equal, or equal once
    the entry is taken relative to the list's folder, or when the image path
    ends with ``/`` + the entry.  Images without an entry are an error.
    """
    import os

    from .labels import read_list
    names, labels = read_list(truth_list)
    base = os.path.dirname(os.path.abspath(truth_list))
    table = {}
    for n, l in zip(names, labels):
        table.setdefault(n, l)
        table.setdefault(os.path.normpath(os.path.join(base, n)), l)
    out = np.empty(len(images), np.int64)
    missing = []
    for i, p in enumerate(images):
        lab = table.get(p, table.get(os.path.normpath(os.path.abspath(p))))
        if lab is None:
            parts = p.replace(os.sep, "/").split("/")
            lab = next((table[s] for s in ("/".join(parts[j:]) for j in range(1, len(parts))) if s in table), None)
        if lab is None:
            missing.append(p)
        else:
            out[i] = lab
    if missing:
        raise CaffeCompatError(f"{truth_list}: {len(missing)} of {len(images)} images have no label there "
                               f"(first: {missing[0]!r})")
    return out


def cluster_file(features: str, k: int, out: str, *, seed: int = 0, max_train: Optional[int] = None,
                 niter: int = 20, truth: Optional[str] = None, montage: Optional[str] = None,
                 hist_png: Optional[str] = None, verbose: bool = False,
                 montage_images: Optional[list] = None) -> dict:
    """k-means of a feature file; writes ``out`` (``path label`` list), ``out.bin`` (labels.bin) and ``out.json``.

    Returns the summary written to ``out.json``: objective, sizes, NMI and
    purity against ``truth`` (an ImageData list) when given.
    """
    import json
    import os

    from caffe_compat.files import atomic_output

    from .features import load_features
    from .labels import write_labels_bin, write_list
    from .montage import cluster_montage, size_histogram_png, size_histogram_text
    x, man = load_features(features)
    images = list(man["images"])
    if len(images) != len(x):
        raise CaffeCompatError(f"{features}: manifest lists {len(images)} images for {len(x)} rows")
    if k <= 0:
        raise CaffeCompatError(f"k must be positive, got {k}")
    if k > len(images):
        raise CaffeCompatError(f"{features}: k={k} clusters need at least {k} images, the file has {len(images)}")
    true = match_truth(images, truth) if truth else None   # checked before the expensive part
    res = kmeans(x, k, seed=seed, niter=niter, max_train=max_train, verbose=verbose)
    os.makedirs(os.path.dirname(os.path.abspath(out)) or ".", exist_ok=True)
    write_list(out, images, res.labels)
    stem = os.path.splitext(out)[0]
    write_labels_bin(stem + ".bin", res.labels)
    summary = {"features": os.path.abspath(features), "k": k, "seed": seed, "images": len(images),
               "objective": res.objective, "objective_per_image": res.objective / len(images),
               "empty_clusters": int((res.sizes == 0).sum()), "sizes": res.sizes.tolist(),
               "histogram": size_histogram_text(res.sizes)}
    if true is not None:
        summary["nmi"], summary["purity"] = nmi(res.labels, true), purity(res.labels, true)
    if hist_png:
        size_histogram_png(res.sizes, hist_png, f"k={k}: images per cluster")
    if montage:
        shown = images if montage_images is None else list(montage_images)
        if len(shown) != len(images):
            raise CaffeCompatError(f"--images lists {len(shown)} images but {features} has {len(images)} rows")
        summary["montage_rows"] = cluster_montage(shown, res.labels, montage, seed=seed)
    with atomic_output(stem + ".json") as f:
        f.write(json.dumps(summary, indent=1).encode())
    with atomic_output(stem + ".centroids.npy") as f:
        np.save(f, res.centroids)
    return summary
