"""Jigsaw++ throughput: puzzles/s per core (LMDB fork feeder vs stored images vs JPEG) and the training step.

    python benchmarks/bench_jigsaw.py [--puzzles 200] [--batch 16] [--steps 2]

* data: one process, one thread (``cv2.setNumThreads(1)``, ``torch.set_num_threads(1)``)
  building full Jigsaw++ samples (tiles, colour, occluder, MergeData, MVN x50)
  from stored 255x255 images in memory, and from JPEG files decoded per puzzle;
  and the batches ``caffekt train`` feeds the authors' ``data_0`` layer from an
  LMDB of raw 255x255 Datums (read, decode, the fork's transform, collate);
* net: the 9-tower AlexNet (``cfn_net_param``, 701 permutations) forward + backward
  + Caffe SGD update on CPU at ``--batch`` (256 would take minutes on a laptop
  core), extrapolated linearly to the authors' batch 256;
* GPU: no GPU is measured here.  The consumption rate is *assumed* from the
  net's multiply-adds (counted from its blob shapes): fwd+bwd ~ 3x forward, on a
  V100 sustaining ~5 TFLOP/s fp32 on AlexNet-sized convolutions (about 35% of its
  15.7 TFLOP/s peak, the usual cuDNN efficiency for AlexNet at this size).  The
  script reports whether 16 cores of the data path outrun that.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

ASSUMED_GPU_FLOPS = 5e12      # V100 fp32, effective (see the docstring)


def _photos(n: int, folder: str):
    import cv2
    rng = np.random.default_rng(0)
    paths = []
    for k in range(n):  # smooth random photos-like images, 375x500 like an average ImageNet JPEG
        small = (rng.random((12, 16, 3)) * 255).astype(np.uint8)
        img = cv2.resize(small, (500, 375), interpolation=cv2.INTER_CUBIC)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        p = os.path.join(folder, f"{k:03d}.jpg")
        cv2.imwrite(p, img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        paths.append(p)
    return paths


def _rate(source, n: int) -> float:
    t = time.perf_counter()
    for p in range(n):
        source.puzzle(p % len(source), p // len(source))
    return n / (time.perf_counter() - t)


def _lmdb_rate(stored, folder: str, n: int, batch: int = 16) -> float:
    """Puzzles/s of the driver's feeder for a fork Data layer (hash_file, 9 tiles) over an LMDB."""
    from caffe_compat.binary import encode_datum
    from caffe_compat.data.sources import write_lmdb_records
    from caffe_compat.proto import caffe_pb2
    from caffe_compat.train import FeedContext, make_feeder
    from caffekt.kt.permutations import generate_permutations, write_permutations
    db, perms = os.path.join(folder, "db"), os.path.join(folder, "perms.bin")
    write_permutations(perms, generate_permutations(100, seed=0))
    write_lmdb_records(db, [(f"{i:08d}", encode_datum(np.ascontiguousarray(stored[i].transpose(2, 0, 1)), 0))
                            for i in range(len(stored))])
    lp = caffe_pb2.LayerParameter(name="data_0", type="Data", top=["data_0", "label"])
    lp.data_param.source, lp.data_param.batch_size, lp.data_param.backend = db, batch, lp.data_param.LMDB
    tp = lp.transform_param
    tp.crop_size, tp.siamese_size, tp.patch_size, tp.jitter_size, tp.hash_file = 255, 9, 64, 18, perms
    feed = make_feeder(lp, FeedContext("TRAIN", 0))
    feed()   # warm-up (opens the LMDB)
    t = time.perf_counter()
    for _ in range(max(1, n // batch)):
        feed()
    return max(1, n // batch) * batch / (time.perf_counter() - t)


def _macs(net) -> int:
    """Multiply-adds of one forward pass of the convolutions and inner products."""
    total = 0
    for name, typ, lp in zip(net.layer_names, net.layer_types, net.layer_params_proto):
        if typ not in ("Convolution", "InnerProduct"):
            continue
        out = net.blob_shapes[lp.top[0]]
        w = net.blobs_by_layer.get(name) or net.layer(name).blobs
        k = int(np.prod(w[0].shape[1:]))
        total += int(np.prod(out)) * k
    return total


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--puzzles", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()

    import cv2
    import torch

    from caffe_compat.net import load_net
    from caffe_compat.solver import Solver
    from caffekt.kt import jigsaw as J
    from caffekt.kt.images import ArrayImages, ImageFiles
    from caffekt.kt.permutations import generate_permutations
    from caffekt.kt.puzzle import PuzzleConfig

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    perms = generate_permutations(100, seed=0)
    with tempfile.TemporaryDirectory() as d:
        files = ImageFiles(_photos(32, d))
        stored = ArrayImages(np.stack([files[i] for i in range(len(files))]))
        cfg = PuzzleConfig()
        r_stored = _rate(J.PuzzleSource(stored, perms, cfg, 0), args.puzzles)
        r_jpeg = _rate(J.PuzzleSource(files, perms, cfg, 0), max(20, args.puzzles // 4))
        r_lmdb = _lmdb_rate(stored, d, args.puzzles)
    print(f"data, 1 core: {r_lmdb:.0f} puzzles/s through the LMDB fork feeder (caffekt train, data_0 only), "
          f"{r_stored:.0f} puzzles/s from stored 255x255 images (both Data layers' tiles + MergeData), "
          f"{r_jpeg:.0f} puzzles/s decoding a 500x375 JPEG per puzzle")

    torch.set_num_threads(os.cpu_count() or 1)
    b = args.batch
    net = load_net(J.cfn_net_param(n_perms=701, batch_size=b), phase="TRAIN")
    sp = J.default_solver_param(os.path.join(tempfile.gettempdir(), "bench_jigsaw"), snapshot=0)
    feed = {"data": torch.randn(b, 27, 64, 64) * 50, "label": torch.randint(0, 701, (b,))}
    solver = Solver(sp, net, feed)
    solver.step(1)  # warm-up
    t = time.perf_counter()
    solver.step(args.steps)
    step = (time.perf_counter() - t) / args.steps
    print(f"9-tower AlexNet train step on CPU ({torch.get_num_threads()} threads): {step:.2f} s at batch {b} "
          f"-> ~{step * 256 / b:.1f} s at batch 256 (linear extrapolation)")

    macs = _macs(net) / b * 256
    gpu_step = 3 * 2 * macs / ASSUMED_GPU_FLOPS
    need = 256 / gpu_step
    print(f"9-tower AlexNet: {macs / 1e9:.1f} GMAC forward per batch of 256; assumed GPU (V100, "
          f"{ASSUMED_GPU_FLOPS / 1e12:.0f} TFLOP/s effective): {gpu_step * 1e3:.0f} ms/step = {need:.0f} puzzles/s")
    for cores in (8, 16):
        print(f"  {cores} cores of stored-image puzzles: {cores * r_stored:.0f} puzzles/s "
              f"({'outruns' if cores * r_stored >= need else 'does NOT keep up with'} the GPU); "
              f"from JPEG: {cores * r_jpeg:.0f} puzzles/s")


if __name__ == "__main__":
    main()
