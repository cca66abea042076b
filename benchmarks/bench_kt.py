"""Knowledge-transfer overheads: k-means through ``kt.cluster.kmeans`` vs faiss directly; feature extraction vs bare forward.

* k-means: the same data, k, iterations and initial centroids through our
  wrapper (which adds the k-means++ seeding on a sample, NaN checks and the
  streamed assignment) and through ``faiss.Kmeans`` + one ``index.search``.
  Overhead = wrapper / faiss - 1 (target <= 5% with ``init="random"``, the
  large-scale path; the k-means++ seeding is reported separately).
* features: images/s of ``kt.features.extract`` (decode + preprocess +
  forward + pool + memmap write + manifest) vs the net's bare forward on
  ready tensors of the same batch size.

Timings interleave the two sides and keep the best of ``--repeats``.

    python benchmarks/bench_kt.py [--n 100000 --d 128 --k 1000] [--images 64 --size 227]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def bench_kmeans(n: int, d: int, k: int, niter: int, repeats: int) -> dict:
    import faiss

    from caffekt.kt.cluster import kmeans
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(k, d)) * 3)[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    x = x.astype(np.float32)

    def ours():
        kmeans(x, k, seed=0, niter=niter, init="random", chunk=n)

    def direct():
        km = faiss.Kmeans(d, k, niter=niter, seed=0, max_points_per_centroid=max(256, (n + k - 1) // k))
        km.train(x)
        km.index.search(x, 1)

    t_ours, t_direct = [], []
    for _ in range(repeats):
        for fn, acc in ((direct, t_direct), (ours, t_ours)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    kmeans(x, k, seed=0, niter=niter, init="kmeans++", max_train=min(n, 20000))
    t_pp = time.perf_counter() - t0
    return {"n": n, "d": d, "k": k, "niter": niter, "faiss_s": min(t_direct), "wrapper_s": min(t_ours),
            "overhead_pct": 100 * (min(t_ours) / min(t_direct) - 1), "kmeanspp_sample20k_s": t_pp}


def bench_features(n_images: int, size: int, batch: int, repeats: int) -> dict:
    import cv2
    import torch

    from caffekt.kt.cc import deploy_prototxt
    from caffekt.kt.features import extract, load_model
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(n_images):
            p = os.path.join(tmp, f"{i:04d}.jpg")
            cv2.imwrite(p, cv2.resize(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), (300, 256)))
            paths.append(p)
        net, _, _ = load_model(deploy_prototxt(), input_size=size)
        x = torch.randn(batch, 3, size, size)
        t_fwd, t_ext, t_load = [], [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            load_model(deploy_prototxt(), input_size=size)
            t_load.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with torch.no_grad():
                for _ in range(0, n_images, batch):
                    net.forward_all(data=x)
            t_fwd.append(time.perf_counter() - t0)
            out = os.path.join(tmp, f"f{r}.npy")
            torch.manual_seed(0)
            t0 = time.perf_counter()
            extract(paths, out, model=deploy_prototxt(), blob="conv5", input_size=size, pool_grid=6,
                    batch_size=batch, progress=False)
            t_ext.append(time.perf_counter() - t0)
    fwd = n_images / min(t_fwd)
    ext = n_images / min(t_ext)
    steady = n_images / max(min(t_ext) - min(t_load), 1e-9)   # the net build is paid once per run
    return {"images": n_images, "size": size, "batch": batch, "bare_forward_img_s": fwd, "extract_img_s": ext,
            "extract_vs_forward_pct": 100 * ext / fwd, "model_load_s": min(t_load),
            "extract_without_load_img_s": steady, "steady_vs_forward_pct": 100 * steady / fwd}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--k", type=int, default=1000)
    ap.add_argument("--niter", type=int, default=10)
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--size", type=int, default=227)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-features", action="store_true")
    a = ap.parse_args()
    km = bench_kmeans(a.n, a.d, a.k, a.niter, a.repeats)
    print(f"k-means n={km['n']} d={km['d']} k={km['k']} niter={km['niter']}: faiss {km['faiss_s']:.3f}s, "
          f"wrapper {km['wrapper_s']:.3f}s, overhead {km['overhead_pct']:+.1f}% "
          f"(k-means++ seeding on 20k rows: {km['kmeanspp_sample20k_s']:.2f}s total)")
    if not a.skip_features:
        fe = bench_features(a.images, a.size, a.batch, a.repeats)
        print(f"features AlexNet conv5 @{fe['size']} batch {fe['batch']}: bare forward {fe['bare_forward_img_s']:.1f} img/s, "
              f"extract {fe['extract_img_s']:.1f} img/s ({fe['extract_vs_forward_pct']:.0f}% of forward); "
              f"net build {fe['model_load_s']:.2f}s, without it {fe['extract_without_load_img_s']:.1f} img/s "
              f"({fe['steady_vs_forward_pct']:.0f}%)")


if __name__ == "__main__":
    main()
