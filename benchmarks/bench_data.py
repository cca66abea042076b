"""Images per second per core: decode + Caffe DataTransformer, from JPEG files and from a raw LMDB.

Synthetic 256x256 BGR images (smooth noise, JPEG quality 90, about ImageNet's
file size at that resolution); the transform is the AlexNet/CaffeNet one:
TRAIN, crop 227, mirror, a 3x256x256 mean file, scale 1.  One thread each for
OpenCV and torch, so the numbers are per core.  Also the vectorised batch
path, an encoded LMDB, and (``--workers N``) the full DataLoader.

    python benchmarks/bench_data.py [--images 256] [--workers 0]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np


def _images(n: int, seed: int = 0):
    import cv2
    rng = np.random.default_rng(seed)
    for _ in range(n):
        small = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        img = cv2.resize(small, (256, 256), interpolation=cv2.INTER_CUBIC)
        yield np.clip(img.astype(np.int16) + rng.integers(-12, 13, img.shape), 0, 255).astype(np.uint8)


def _rate(fn, n: int, repeats: int = 3) -> float:
    """Best-of-``repeats`` images/s of ``fn()``, which handles ``n`` images."""
    fn()   # warm-up: page cache, lazy imports
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--workers", type=int, default=0, help="also time make_loader with N workers")
    ap.add_argument("--batch", type=int, default=32)
    a = ap.parse_args(argv)

    import cv2
    import torch
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    from caffe_compat.binary import write_blobproto
    from caffe_compat.data import (DataTransformer, ImageListSource, LMDBSource, make_loader,
                                   write_lmdb)

    with tempfile.TemporaryDirectory() as tmp:
        names = []
        for i, img in enumerate(_images(a.images)):
            name = f"im{i:05d}.jpg"
            cv2.imwrite(os.path.join(tmp, name), img, [cv2.IMWRITE_JPEG_QUALITY, 90])
            names.append(name)
        lst = os.path.join(tmp, "list.txt")
        with open(lst, "w") as f:
            f.writelines(f"{n} {i % 1000}\n" for i, n in enumerate(names))
        mean = os.path.join(tmp, "mean.binaryproto")
        write_blobproto(mean, np.full((1, 3, 256, 256), 117.0, np.float32), legacy_4d=True)
        root = tmp + "/"
        items = [(n, i % 1000) for i, n in enumerate(names)]
        raw_db, enc_db = os.path.join(tmp, "raw_lmdb"), os.path.join(tmp, "enc_lmdb")
        t0 = time.perf_counter()
        write_lmdb(raw_db, items, encoded=False, root_folder=root)
        t_write = time.perf_counter() - t0
        write_lmdb(enc_db, items, encoded=True, root_folder=root)
        kb = np.mean([os.path.getsize(os.path.join(tmp, n)) for n in names]) / 1024

        t = DataTransformer({"crop_size": 227, "mirror": True, "mean_file": mean}, "TRAIN", seed=0)
        files, raw, enc = ImageListSource(lst, root_folder=root), LMDBSource(raw_db), LMDBSource(enc_db)
        n = len(files)

        def run(src, decode_only=False):
            def go():
                for i in range(n):
                    s = src.get(i, t.imdecode_flag)
                    if not decode_only:
                        t.transform(s.image, layout=s.layout)
            return go

        def batched():
            for b in range(0, n, a.batch):
                imgs = np.stack([raw.get(i).image for i in range(b, min(n, b + a.batch))])
                t.transform_batch(imgs, layout="NCHW")

        rows = [
            ("JPEG files: decode only", _rate(run(files, True), n)),
            ("JPEG files: decode + transform", _rate(run(files), n)),
            ("raw LMDB: read only", _rate(run(raw, True), n)),
            ("raw LMDB: read + transform", _rate(run(raw), n)),
            (f"raw LMDB: read + transform_batch({a.batch})", _rate(batched, n)),
            ("encoded LMDB: decode + transform", _rate(run(enc), n)),
        ]
        if a.workers:
            # persistent workers: _rate's warm-up epoch pays for their start, the timed epochs do not
            dl = make_loader(raw, t, a.batch, num_workers=a.workers, shuffle=True)

            def loader():
                for _ in dl:
                    pass
            rows.append((f"raw LMDB: make_loader, {a.workers} workers (total)", _rate(loader, n)))

    print(f"{n} images 256x256 (JPEG q90, {kb:.1f} KiB avg) -> 3x227x227 float32, "
          f"TRAIN crop+mirror+mean_file; one thread")
    print(f"write_lmdb raw: {n / t_write:8.1f} images/s")
    for label, r in rows:
        print(f"{label:<52s} {r:8.1f} images/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
