"""Forward time of the stride-4 AlexNet (prototxt/alexnet_s4_deploy.prototxt), batch 32, CPU.

Three engines with the same weights, timed in one process with interleaved
repeats (so machine load hits all alike), reporting medians:

* ``caffekt``: ``load_net`` of the shipped prototxt;
* ``hand``: the same network written directly with torch.nn
  (Conv2d/ReLU/MaxPool2d(ceil_mode)/LocalResponseNorm/Linear/Softmax);
* ``opencv``: ``cv2.dnn.readNetFromCaffe`` on the prototxt + a caffemodel we save.

Usage: python benchmarks/bench_alexnet_forward.py [--batch 32] [--repeats 7] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch
from torch import nn

from caffe_compat.net import load_net
from caffe_compat.weights import save_caffemodel
from caffekt.prototxt import path as shipped


def hand_written(net) -> nn.Module:
    """AlexNet (CaffeNet order, stride 4) in plain torch.nn, weights copied from ``net``."""
    lrn = lambda: nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)  # noqa: E731
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    m = nn.Sequential(
        nn.Conv2d(3, 96, 11, stride=4), nn.ReLU(), pool(), lrn(),
        nn.Conv2d(96, 256, 5, padding=2, groups=2), nn.ReLU(), pool(), lrn(),
        nn.Conv2d(256, 384, 3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 384, 3, padding=1, groups=2), nn.ReLU(),
        nn.Conv2d(384, 256, 3, padding=1, groups=2), nn.ReLU(), pool(),
        nn.Flatten(),
        nn.Linear(9216, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 2000),
        nn.Softmax(dim=1))
    params = [net.params[n] for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8_cc")]
    layers = [x for x in m if isinstance(x, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer, (w, b) in zip(layers, params):
            layer.weight.copy_(w)
            layer.bias.copy_(b)
    return m.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=0, help="torch/OpenCV threads (0: library default)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    proto = shipped("alexnet_s4_deploy")
    t0 = time.perf_counter()
    net = load_net(proto, input_shapes={"data": (args.batch, 3, 227, 227)}).eval()
    build_s = time.perf_counter() - t0
    hand = hand_written(net)
    x = torch.rand(args.batch, 3, 227, 227) * 255 - 128

    engines = {
        "caffekt": lambda: net(data=x)["prob"],
        "hand": lambda: hand(x),
    }
    cv_note = ""
    try:
        import cv2
        if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
            raise ImportError("this OpenCV has no Caffe importer")
        if args.threads:
            cv2.setNumThreads(args.threads)
        tmp = tempfile.mkdtemp(prefix="caffekt-bench-")
        model = os.path.join(tmp, "alexnet_s4.caffemodel")
        save_caffemodel(net, model)
        cvnet = cv2.dnn.readNetFromCaffe(proto, model)
        xn = x.numpy()

        def run_cv():
            cvnet.setInput(xn)
            return torch.from_numpy(cvnet.forward("prob").reshape(args.batch, -1))

        engines["opencv"] = run_cv
    except Exception as e:  # the benchmark still compares the two torch engines
        cv_note = f"(opencv skipped: {e})"

    with torch.no_grad():
        ref = engines["caffekt"]()
        diffs = {k: float((f() - ref).abs().max()) for k, f in engines.items() if k != "caffekt"}
        times = {k: [] for k in engines}
        for _ in range(2):  # warm-up
            for f in engines.values():
                f()
        for _ in range(args.repeats):
            for k, f in engines.items():
                t = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"AlexNet stride 4, 227x227, batch {args.batch}, CPU, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats; build {build_s:.3f} s")
    for k in engines:
        print(f"  {k:8s} median {med[k] * 1000:8.1f} ms   min {min(times[k]) * 1000:8.1f} ms"
              + (f"   max|diff| vs caffekt {diffs[k]:.2e}" if k in diffs else ""))
    print(f"  ratio caffekt / hand   = {med['caffekt'] / med['hand']:.3f}  (target <= 1.05)")
    if "opencv" in med:
        print(f"  ratio caffekt / opencv = {med['caffekt'] / med['opencv']:.3f}")
    if cv_note:
        print("  " + cv_note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
