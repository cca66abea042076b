"""Caffe SGD update step (caffe_compat.solver.updates) vs torch.optim.SGD(foreach=True).

AlexNet-sized parameters (61M floats in 16 tensors), momentum 0.9, weight
decay 5e-4, lr_mult 1/2 and decay_mult 1/0 for weights/biases as in the
BVLC prototxt (torch gets two param groups to match).  Prints the median
time of one update for each and their ratio.

    python benchmarks/bench_solver_update.py [--repeats 15] [--threads N]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from caffe_compat.solver import updates
from caffe_compat.solver.settings import SolverSettings

# (weight, bias) shapes of BVLC AlexNet's 8 learnable layers
ALEXNET = [((96, 3, 11, 11), (96,)), ((256, 48, 5, 5), (256,)), ((384, 256, 3, 3), (384,)),
           ((384, 192, 3, 3), (384,)), ((256, 192, 3, 3), (256,)), ((4096, 9216), (4096,)),
           ((4096, 4096), (4096,)), ((1000, 4096), (1000,))]


def _median_times(fns, repeats: int) -> list:
    """Median seconds per call of each fn, calls interleaved so machine load hits all alike."""
    for fn in fns:
        fn()  # warm-up (torch allocates its momentum buffers here)
    ts = [[] for _ in fns]
    for _ in range(repeats):
        for fn, out in zip(fns, ts):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    return [statistics.median(x) for x in ts]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave default)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    shapes = [s for pair in ALEXNET for s in pair]
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
    grads = [torch.randn(s, generator=gen) * 0.01 for s in shapes]
    n = sum(p.numel() for p in params)
    lr_mults = [1.0, 2.0] * len(ALEXNET)
    decay_mults = [1.0, 0.0] * len(ALEXNET)
    s = SolverSettings(type="SGD", base_lr=0.01, momentum=0.9, weight_decay=5e-4)

    ours_p = [p.clone() for p in params]
    ours_g = [g.clone() for g in grads]
    hist = updates.init_history(ours_p, "SGD")

    def ours():
        # the real solver gets fresh diffs each step; the update overwrites them in place
        updates.apply_update(ours_p, ours_g, hist, s, 0.01, lr_mults, decay_mults, it=0)

    tp = [torch.nn.Parameter(p.clone()) for p in params]
    for p, g in zip(tp, grads):
        p.grad = g.clone()
    opt = torch.optim.SGD([{"params": tp[0::2], "lr": 0.01, "weight_decay": 5e-4},
                           {"params": tp[1::2], "lr": 0.02, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9, foreach=True)

    t_ours, t_torch = _median_times([ours, opt.step], a.repeats)
    print(f"params: {len(params)} tensors, {n / 1e6:.1f}M floats; torch threads {torch.get_num_threads()}")
    print(f"caffe_compat SGD update : {t_ours * 1e3:8.2f} ms (median of {a.repeats})")
    print(f"torch.optim.SGD foreach : {t_torch * 1e3:8.2f} ms (median of {a.repeats})")
    print(f"ratio ours/torch        : {t_ours / t_torch:8.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
