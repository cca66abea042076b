"""Fuzz every reader and load_net: N mutated real files (default 100,000), counts per outcome.

    python benchmarks/fuzz_all.py [-n 100000] [--seed 0] [--workers 2] [--time-limit 5]

Exit 1 when any input gave an untyped exception, a hang, a memory spike or a
crash (each is listed with its input number; ``caffekt.converters.fuzz.make_input``
replays it).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main(argv=None) -> int:
    from tqdm import tqdm

    from caffekt.converters.fuzz import OUTCOMES, build_seeds, run_fuzz

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100_000, help="number of inputs (100000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first input number")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--time-limit", type=float, default=5.0, help="seconds per input before a hang (5)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--chunk", type=int, default=10_000,
                    help="print the running counts after every CHUNK inputs (10000)")
    args = ap.parse_args(argv)
    bar = tqdm(total=args.n, disable=args.quiet, unit="input")
    seeds = build_seeds()
    total = None
    for first in range(args.start, args.start + args.n, args.chunk):
        n = min(args.chunk, args.start + args.n - first)
        rep = run_fuzz(n, seed=args.seed, workers=args.workers, time_limit=args.time_limit,
                       start=first, progress=bar.update, seeds=seeds)
        total = rep if total is None else total.merge(rep)
        bar.write(f"after {total.inputs} inputs ({total.seconds:.0f} s): "
                  + ", ".join(f"{o} {total.counts[o]}" for o in OUTCOMES))
        sys.stdout.flush()
    bar.close()
    print(total)
    return 1 if total.bad else 0


if __name__ == "__main__":
    sys.exit(main())
