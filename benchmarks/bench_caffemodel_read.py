"""Reading a VGG16-sized caffemodel: our mmap reader vs raw read() vs protobuf.

Writes a VGG16-shaped caffemodel (16 weighted layers, 138.36M float32,
~553 MB) with ``write_caffemodel`` into a temp dir (its write time is
reported), then measures, each in a fresh subprocess so peak RSS
(``ru_maxrss``) is its own:

  (a)    ``open().read()`` of the file, then summing it as float32;
  ours   ``read_caffemodel`` (default: with the NaN/Inf scan) and summing
         every blob; ``ours-lazy`` is the same with ``check_finite=False``;
  ours-open  the reader alone, no weight touched (the mapping is lazy);
  (b)    ``NetParameter.ParseFromString`` + ``np.array(blob.data, float32)``
         per blob, then summing every blob.

Every mode touches every float once with the same float64 sum, so the
comparison is fair.  Each time is the best of ``--repeats`` subprocess runs.

    python benchmarks/bench_caffemodel_read.py [--scale 0.1] [--repeats 2]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

# VGG16 (Simonyan & Zisserman, configuration D): (out, in, k) convs, then fcs
VGG16_CONV = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
              (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
VGG16_FC = [(4096, 25088), (4096, 4096), (1000, 4096)]


def vgg16_blobs(scale: float, rng) -> dict:
    """Layer name -> [weight, bias]; ``scale`` shrinks each layer's output count."""
    out = {}
    shapes = [(f"conv{i + 1}", (o, c, 3, 3)) for i, (o, c) in enumerate(VGG16_CONV)]
    shapes += [(f"fc{i + 6}", (o, c)) for i, (o, c) in enumerate(VGG16_FC)]
    for name, shape in shapes:
        o = max(1, round(shape[0] * scale))
        w = rng.standard_normal((o,) + shape[1:], dtype=np.float32)
        out[name] = [w, rng.standard_normal(o, dtype=np.float32)]
    return out


def make_model(path: str, scale: float) -> tuple:
    from caffe_compat.binary import write_caffemodel
    from caffe_compat.proto import caffe_pb2

    blobs = vgg16_blobs(scale, np.random.default_rng(0))
    net = caffe_pb2.NetParameter(name="VGG_ILSVRC_16_layers")
    for name in blobs:
        net.layer.add(name=name, type="InnerProduct" if name.startswith("fc") else "Convolution")
    n_floats = sum(b.size for bs in blobs.values() for b in bs)
    t0 = time.perf_counter()
    write_caffemodel(path, net, blobs)
    return time.perf_counter() - t0, n_floats


def peak_rss() -> int:
    """This process's peak RSS in bytes: VmHWM (reset by exec, unlike ru_maxrss, which a child
    inherits from its parent's high-water mark), else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(mode: str, path: str) -> dict:
    """Runs in the child: time one full read in ``mode``; report time, checksum, peak RSS."""
    t0 = time.perf_counter()
    if mode == "raw":
        data = open(path, "rb").read()
        total = float(np.frombuffer(data, np.float32, count=len(data) // 4).sum(dtype=np.float64))
    elif mode in ("ours", "ours-lazy"):
        from caffe_compat.binary import read_caffemodel
        m = read_caffemodel(path, check_finite=None if mode == "ours" else False)
        total = sum(float(b.sum(dtype=np.float64)) for lb in m.layers for b in lb.blobs)
    elif mode == "ours-open":  # open + walk only: what a caller pays before touching any weight
        from caffe_compat.binary import read_caffemodel
        m = read_caffemodel(path, check_finite=False)
        total = float(sum(b.size for lb in m.layers for b in lb.blobs))
    elif mode == "protobuf":
        from caffe_compat.proto import caffe_pb2
        net = caffe_pb2.NetParameter()
        net.ParseFromString(open(path, "rb").read())
        arrays = [np.array(b.data, dtype=np.float32) for lp in net.layer for b in lp.blobs]
        total = sum(float(a.sum(dtype=np.float64)) for a in arrays)
    else:
        raise SystemExit(f"unknown mode {mode!r}")
    dt = time.perf_counter() - t0
    return {"mode": mode, "seconds": dt, "peak_rss": peak_rss(), "checksum": total}


def run_child(mode: str, path: str) -> dict:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--measure", mode, path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def baseline_rss() -> int:
    """Peak RSS of a child that only imports what the readers import (interpreter + numpy + pb2)."""
    code = (f"import sys; sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r}); "
            "import caffe_compat.binary, bench_caffemodel_read as b; print(b.peak_rss())")
    return int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True).stdout)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="fraction of VGG16's size (0.1: quick)")
    ap.add_argument("--repeats", type=int, default=2, help="subprocess runs per mode (best is kept)")
    ap.add_argument("--dir", default=None, help="where to write the temp caffemodel")
    ap.add_argument("--measure", nargs=2, metavar=("MODE", "PATH"), help=argparse.SUPPRESS)
    ap.add_argument("--make", nargs=2, metavar=("PATH", "SCALE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    if args.make:
        print(json.dumps(make_model(args.make[0], float(args.make[1]))))
        return 0

    with tempfile.TemporaryDirectory(prefix="caffekt-bench-", dir=args.dir) as d:
        path = os.path.join(d, "vgg16.caffemodel")
        # in a child: the generated arrays must not raise the measured children's baseline
        wt, n_floats = json.loads(subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--make", path, str(args.scale)],
            capture_output=True, text=True, check=True).stdout)
        size = os.path.getsize(path)
        print(f"model: {n_floats / 1e6:.2f}M floats, {size / 1e6:.1f} MB; "
              f"write_caffemodel {wt:.2f} s ({size / wt / 1e6:.0f} MB/s)")
        res = {}
        for mode in ("raw", "ours", "ours-lazy", "ours-open", "protobuf"):
            runs = [run_child(mode, path) for _ in range(args.repeats)]
            res[mode] = min(runs, key=lambda r: r["seconds"])
            res[mode]["peak_rss"] = max(r["peak_rss"] for r in runs)
        checks = {m: r["checksum"] for m, r in res.items()}
        base = baseline_rss()
        print(f"baseline RSS (python + numpy + pb2 imported): {base / 1e6:.0f} MB")
        print(f"{'mode':<10} {'seconds':>8} {'peak RSS MB':>12} {'RSS/file':>9}")
        for mode, r in res.items():
            print(f"{mode:<10} {r['seconds']:8.3f} {r['peak_rss'] / 1e6:12.0f} {r['peak_rss'] / size:9.2f}")
        ours, raw, pb = res["ours"]["seconds"], res["raw"]["seconds"], res["protobuf"]["seconds"]
        print(f"ours / (a) read():      {ours / raw:5.2f}x   (target <= 1.5)")
        print(f"(b) protobuf / ours:    {pb / ours:5.1f}x   (target >= 10)")
        print(f"ours peak RSS / file:   {res['ours']['peak_rss'] / size:5.2f}x   (target <= 1.2)")
        if len({round(v, 1) for k, v in checks.items() if k not in ("raw", "ours-open")}) != 1:
            print(f"WARNING: checksums differ: {checks}")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
