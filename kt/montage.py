"""Pictures for looking at clusters and probes: a montage of sample images per cluster, histograms, bar charts.

All PNGs are written atomically (encoded in memory, then ``atomic_output``).
matplotlib is used with the Agg backend only.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import numpy as np

from caffe_compat.files import atomic_output
from caffe_compat.errors import CaffeCompatError


def _write_png_bytes(path: str, data: bytes) -> None:
    with atomic_output(path) as f:
        f.write(data)


def cluster_montage(images: Sequence[str], labels: np.ndarray, out_png: str, *, per_cluster: int = 8,
                    max_clusters: int = 16, thumb: int = 64, seed: int = 0) -> int:
    """One row per cluster (largest first, up to ``max_clusters``): ``per_cluster`` random members.

    Each row starts with a strip giving the cluster id and size.  Returns the
    number of rows drawn.
    """
    import cv2

    from caffe_compat.data.sources import read_image
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    ids, counts = np.unique(labels, return_counts=True)
    order = ids[np.argsort(-counts, kind="stable")][:max_clusters]
    label_w = 2 * thumb
    canvas = np.full((len(order) * thumb, label_w + per_cluster * thumb, 3), 255, np.uint8)
    for r, c in enumerate(order):
        members = np.flatnonzero(labels == c)
        pick = rng.choice(members, min(per_cluster, len(members)), replace=False)
        cv2.putText(canvas, f"#{int(c)}", (4, r * thumb + thumb // 2 - 4), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 0, 0), 1, cv2.LINE_AA)
        cv2.putText(canvas, f"n={len(members)}", (4, r * thumb + thumb // 2 + 14), cv2.FONT_HERSHEY_SIMPLEX,
                    0.4, (80, 80, 80), 1, cv2.LINE_AA)
        for j, i in enumerate(pick):
            img = read_image(images[int(i)])
            h, w = img.shape[:2]
            s = min(h, w)   # centre square, so thumbnails are not distorted
            sq = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
            canvas[r * thumb:(r + 1) * thumb, label_w + j * thumb:label_w + (j + 1) * thumb] = \
                cv2.resize(sq, (thumb, thumb), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".png", canvas)
    if not ok:  # pragma: no cover - OpenCV without PNG support
        raise CaffeCompatError("OpenCV could not encode PNG")
    _write_png_bytes(out_png, buf.tobytes())
    return len(order)


def _figure_png(fig) -> bytes:
    import io
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def size_histogram_png(sizes: np.ndarray, out_png: str, title: str = "cluster sizes") -> None:
    """Histogram of images per cluster."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.asarray(sizes), bins=min(50, max(5, len(sizes))), color="#4477aa")
    ax.set_xlabel("images in cluster")
    ax.set_ylabel("clusters")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))   # counts: no 2.5 clusters
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    _write_png_bytes(out_png, _figure_png(fig))
    plt.close(fig)


def size_histogram_text(sizes: np.ndarray, bins: int = 10, width: int = 40) -> str:
    """A text histogram of cluster sizes (one line per bin: range, count, bar)."""
    sizes = np.asarray(sizes)
    counts, edges = np.histogram(sizes, bins=min(bins, max(1, len(np.unique(sizes)))))
    top = max(int(counts.max()), 1)
    lines = [f"cluster sizes: min {sizes.min()}, median {int(np.median(sizes))}, max {sizes.max()}, "
             f"empty {int((sizes == 0).sum())}"]
    for c, lo, hi in zip(counts, edges[:-1], edges[1:]):
        lines.append(f"  {lo:8.1f} - {hi:8.1f} | {int(c):6d} {'#' * int(round(width * c / top))}")
    return "\n".join(lines)


def accuracy_bars_png(table: Dict[str, Dict[str, float]], out_png: str, title: str = "linear probes",
                      chance: Optional[float] = None, errors: Optional[Dict[str, Dict[str, float]]] = None,
                      ylim: Optional[tuple] = None) -> None:
    """Grouped bars: one group per layer, one bar per model (``table[model][layer] = accuracy``).

    ``errors[model][layer]`` (same units) draws an error bar (e.g. the std over seeds).
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(table)
    layers = list(dict.fromkeys(l for m in models for l in table[m]))
    x = np.arange(len(layers))
    w = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(1.2 * len(layers) + 2, 3.5))
    for i, m in enumerate(models):
        err = None if errors is None else [100 * errors.get(m, {}).get(l, 0.0) for l in layers]
        ax.bar(x + (i - (len(models) - 1) / 2) * w, [100 * table[m].get(l, np.nan) for l in layers], w, label=m,
               yerr=err, capsize=2 if err else 0, error_kw={"lw": 0.8})
    if chance is not None:
        ax.axhline(100 * chance, color="k", ls="--", lw=1, label="chance")
    ax.set_xticks(x, layers)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.set_ylabel("top-1 accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))   # outside: bars stay visible
    _write_png_bytes(out_png, _figure_png(fig))
    plt.close(fig)
