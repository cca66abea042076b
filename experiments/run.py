#!/usr/bin/env python
"""The paper's four claims on Fashion-MNIST, at a scale a 2-core machine manages, over several seeds.

    python experiments/run.py [--scale small|tiny|full] [--seeds 0 1 2] [--out experiments/runs]
                              [--results docs/results.md]

Per seed (one process each, run side by side, one torch thread each), through
``kt.pipeline`` stages (the code paths of the full-scale configs):

* ``fashion-mnist``: the data (``kt.fashion``), built once and shared: a
  subset of the 60,000 train images upsampled to PNG (what pretext, features,
  clustering and students see, without labels), all 10,000 test images;
* ``jigsaw``: a Jigsaw++ AlexNet teacher (stride-2 tower) and a deeper
  Jigsaw++ VGG16-style teacher, widths scaled, then scored on held-out
  puzzles of test images;
* ``features`` / ``hog`` + ``cluster``: AlexNet conv5, VGG conv4_3 (pooled 3x3,
  L2) and HOG, each clustered by k-means into pseudo-labels;
* ``train-cc``: the stride-4 AlexNet student on each set of pseudo-labels
  (cluster classification), and the same student on the true labels (the
  upper bound: the only training that sees labels, besides the probes);
* ``probe``: linear probes on frozen conv1..conv5, trained on the train
  subset's labels and scored on all test images, of: random init (student's
  architecture), the three CC students, the supervised student; and of the
  teacher with a random init of the teacher's own architecture beside it;
  plus the same linear probe on raw pixels.

``docs/results.md`` gets the tables (mean ± std over seeds), the four claims
judged with their numbers, timings, versions and the commands; ``docs/
results_probes.png`` the probe accuracy per layer and row with error bars.
``experiments/configs/<scale>.json`` holds every size.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from typing import Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from report import results_markdown, probes_png  # noqa: E402  (experiments/report.py)

CC_ROWS = {"alexnet": "CC from Jigsaw++ AlexNet", "vgg": "CC from Jigsaw++ VGG", "hog": "CC from HOG",
           "supervised": "student on true labels (upper bound)"}
TEACHER_ROW, TEACHER_RANDOM = "Jigsaw++ AlexNet (teacher)", "random init (teacher's architecture)"


def load_scale(scale: str) -> dict:
    path = scale if scale.endswith(".json") else os.path.join(HERE, "configs", f"{scale}.json")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def data_stage(sc: dict, data_dir: str) -> dict:
    return {"name": "fashion-mnist", "kind": "fashion-mnist", "out": data_dir, **sc["data"]}


def seed_config(sc: dict, seed: int, work: str, data: str) -> dict:
    """The ``kt.pipeline`` config of one seed (resolved paths)."""
    from caffekt.kt.demo import write_tower_deploy

    os.makedirs(work, exist_ok=True)
    unlabelled, train, test = (os.path.join(data, f"{p}.txt") for p in ("unlabelled", "train", "test"))
    stages: List[dict] = [data_stage(sc, data)]
    deploys = {}
    for key in ("alexnet", "vgg"):
        j = sc[f"jigsaw_{key}"]
        deploys[key] = write_tower_deploy(os.path.join(work, f"teacher_{key}_deploy.prototxt"), arch=j["arch"],
                                          width=j["width"], fc6=j["fc6"])
        stages.append({"name": f"jigsaw-{key}", "kind": "jigsaw", "images": unlabelled,
                       "out": os.path.join(work, f"jigsaw_{key}"), "seed": seed, "progress": False,
                       "snapshot": j["max_iter"],
                       **{k: j[k] for k in ("arch", "width", "fc6", "fc7", "perms", "max_iter", "batch_size",
                                            "base_lr", "solver_type", "init", "dropout") if k in j}})
    teacher = {k: f"{deploys[k]}:{os.path.join(work, f'jigsaw_{k}', 'teacher.caffemodel')}" for k in deploys}
    cc = dict(sc["cc"])
    solver = None
    if cc.get("solver_type", "SGD") != "SGD":   # the small-scale student recipe (a constant-rate solver file)
        from caffekt.kt.pipeline import constant_solver_file
        solver = constant_solver_file(os.path.join(work, "cc_solver.prototxt"), cc["solver_type"], cc["base_lr"],
                                      cc["max_iter"], snapshot=cc["max_iter"], random_seed=seed)
    cc.pop("solver_type", None)
    recipe = {**cc, "stepsize": max(1, 2 * cc["max_iter"] // 3), "snapshot": cc["max_iter"], "display": 10,
              "random_seed": seed}
    cc_stage = {"kind": "train-cc", "arch": "alexnet", "progress": False, "recipe": recipe,
                **({"solver": solver} if solver else {})}
    for key in ("alexnet", "vgg", "hog"):
        feats = os.path.join(work, f"features_{key}.npy")
        if key == "hog":
            stages.append({"name": "features-hog", "kind": "hog", "images": unlabelled, "out": feats,
                           "progress": False, **sc["hog"]})
        else:
            blob = sc[f"jigsaw_{key}"].get("blob", "conv5")
            stages.append({"name": f"features-{key}", "kind": "features", "images": unlabelled, "out": feats,
                           "model": teacher[key], "blob": blob, "preprocess": "tile-mvn", "progress": False,
                           **sc["features"]})
        # truth: the labels give NMI/purity of the clusters only; the pseudo-labels never see them
        stages.append({"name": f"cluster-{key}", "kind": "cluster", "features": feats, "k": sc["k"], "seed": seed,
                       "out": os.path.join(work, f"labels_{key}.txt"), "truth": train})
        stages.append({**cc_stage, "name": f"cc-{key}", "labels": os.path.join(work, f"labels_{key}.txt"),
                       "out": os.path.join(work, f"cc_{key}")})
    stages.append({**cc_stage, "name": "cc-supervised", "labels": train, "out": os.path.join(work, "cc_supervised")})
    ccm = {k: f"{os.path.join(work, f'cc_{k}', 'deploy.prototxt')}:{os.path.join(work, f'cc_{k}', 'final.caffemodel')}"
           for k in CC_ROWS}
    probe = {"kind": "probe", "progress": False, "train": train, "val": test, "input_size": sc["input_size"],
             "settings": {**sc["probe"], "seed": seed}}
    stages.append({**probe, "name": "probe", "random_baseline": "random init",
                   "models": {CC_ROWS[k]: ccm[k] for k in CC_ROWS}, "out": os.path.join(work, "probes")})
    stages.append({**probe, "name": "probe-teacher", "random_baseline": TEACHER_RANDOM,
                   "models": {TEACHER_ROW: teacher["alexnet"]}, "out": os.path.join(work, "probes_teacher")})
    return {"name": f"{sc['name']}_seed{seed}", "workdir": work, "path": "(experiments/run.py)", "stages": stages}


def _read_probes(path: str) -> Dict[str, Dict[str, float]]:
    import csv
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    return {r[0]: {l: float(v) for l, v in zip(rows[0][1:], r[1:]) if v} for r in rows[1:]}


def run_seed(sc: dict, seed: int, out: str, data: str) -> dict:
    """Every stage of one seed; returns (and writes) its summary."""
    import torch

    from caffe_compat.logs import read_log
    from caffekt.kt import pipeline
    from caffekt.kt.demo import puzzle_accuracy
    from caffekt.kt.probes import ProbeSettings, pixel_probe

    torch.set_num_threads(1)   # seeds run side by side, one core's worth each
    work = os.path.join(out, f"seed_{seed}")
    cfg = seed_config(sc, seed, work, data)
    times = {}
    for st in cfg["stages"]:
        if all(os.path.exists(o) for o in pipeline.stage_outputs(st)):
            times[st["name"]] = 0.0   # made earlier (the shared data set, or a resumed run)
            continue
        t0 = time.perf_counter()
        pipeline.run(cfg, stop_after=st["name"],
                     log=lambda l: None if l.endswith("(outputs present)") else print(f"[seed {seed}] {l}",
                                                                                       flush=True))
        times[st["name"]] = time.perf_counter() - t0
    probes = {**_read_probes(os.path.join(work, "probes", "probes.csv")),
              **_read_probes(os.path.join(work, "probes_teacher", "probes.csv"))}
    t0 = time.perf_counter()
    probes["raw pixels"] = {"pixels": pixel_probe(os.path.join(data, "train.txt"), os.path.join(data, "test.txt"),
                                                  size=28, settings=ProbeSettings(**{**sc["probe"], "seed": seed}))}
    times["probe-pixels"] = time.perf_counter() - t0
    clusters = {}
    for key in ("alexnet", "vgg", "hog"):
        with open(os.path.join(work, f"labels_{key}.json"), encoding="utf-8") as f:
            c = json.load(f)
        clusters[key] = {"nmi": c["nmi"], "purity": c["purity"], "empty": c["empty_clusters"]}
    losses = {}
    for key, log in (("jigsaw-alexnet", "jigsaw_alexnet/jigsaw_log.csv"), ("jigsaw-vgg", "jigsaw_vgg/jigsaw_log.csv"),
                     *((f"cc-{k}", f"cc_{k}/cc_log.csv") for k in CC_ROWS)):
        loss = read_log(os.path.join(work, log))["loss"]
        losses[key] = {"first": float(loss[0]), "last10": float(loss[-10:].mean())}
    puzzles = {}
    held = os.path.join(data, "test.txt")   # test images: never seen by the pretext task
    for key in ("alexnet", "vgg"):
        t0 = time.perf_counter()
        puzzles[key] = puzzle_accuracy(os.path.join(work, f"jigsaw_{key}", "teacher.caffemodel"), held,
                                       sc[f"jigsaw_{key}"]["perms"], seed, sc["puzzles_eval"], seed + 1000)
        times[f"puzzles-{key}"] = time.perf_counter() - t0
    summary = {"seed": seed, "probes": probes, "clusters": clusters, "losses": losses, "puzzles": puzzles,
               "seconds": times}
    with open(os.path.join(work, "summary.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    return summary


def _versions() -> str:
    import numpy as np
    import torch
    out = [f"Python {platform.python_version()}", f"torch {torch.__version__}", f"NumPy {np.__version__}"]
    for mod in ("cv2", "faiss", "lmdb"):
        try:
            m = __import__(mod)
            out.append(f"{mod} {getattr(m, '__version__', '?')}")
        except ImportError:
            pass
    return ", ".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--scale", default="small", help="experiments/configs/SCALE.json (tiny, small, full), or a path")
    ap.add_argument("--out", default=os.path.join(HERE, "runs"), help="work folder (per-seed subfolders)")
    ap.add_argument("--results", default=os.path.join(REPO, "docs", "results.md"), help="markdown file to write "
                    "(its PNG goes beside it, named <stem>_probes.png)")
    ap.add_argument("--cache", default=None, help="data cache (default $CAFFEKT_CACHE or ~/.cache/caffekt)")
    ap.add_argument("--jobs", type=int, default=None, help="seeds run at once (default: all)")
    ap.add_argument("--report-only", action="store_true",
                    help="rewrite the results from the seeds' summary.json files of an earlier run (no training)")
    ap.add_argument("--note", default="", help="a sentence about this run, printed under the command in the results")
    ap.add_argument("--worker-seed", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    sc = load_scale(args.scale)
    from caffekt.kt import fashion
    from caffekt.kt.pipeline import default_cache_dir
    d = sc["data"]
    data_dir = os.path.join(args.cache or default_cache_dir(),
                            f"fashion-mnist-{d['train']}-{d.get('test', 10000)}-{d['size']}-s{d.get('seed', 0)}")
    out = os.path.abspath(os.path.join(args.out, sc["name"]))
    if args.worker_seed is not None:
        run_seed(sc, args.worker_seed, out, data_dir)
        return 0
    if not fashion.available():
        print(f"Fashion-MNIST is not installed in {fashion.source_dir()}: apt-get install dataset-fashion-mnist "
              "(or set CAFFEKT_FASHION_MNIST)", file=sys.stderr)
        return 2
    print(f"scale {sc['name']}: {sc.get('expected', 'no time estimate')}", flush=True)
    t0 = time.perf_counter()
    from caffekt.kt.pipeline import STAGES
    STAGES["fashion-mnist"][1](data_stage(sc, data_dir))   # once, before the workers share it
    times_data = time.perf_counter() - t0
    jobs = args.jobs or len(args.seeds)
    procs: List[subprocess.Popen] = []
    pending = list(args.seeds)
    failed = []
    base = [sys.executable, os.path.abspath(__file__), "--scale", args.scale, "--out", args.out]
    if args.cache:
        base += ["--cache", args.cache]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    if args.report_only:
        pending = []
    while pending or procs:
        while pending and len(procs) < jobs:
            s = pending.pop(0)
            p = subprocess.Popen(base + ["--worker-seed", str(s)], env=env)
            p.seed = s
            procs.append(p)
        time.sleep(1)
        for p in list(procs):
            if p.poll() is not None:
                procs.remove(p)
                if p.returncode:
                    failed.append(p.seed)
    if failed:
        print(f"seeds {failed} failed; no results written", file=sys.stderr)
        return 1
    if not args.report_only:
        with open(os.path.join(out, "wall_seconds.json"), "w", encoding="utf-8") as f:
            json.dump({"seconds": time.perf_counter() - t0}, f)
    summaries = []
    for s in args.seeds:
        with open(os.path.join(out, f"seed_{s}", "summary.json"), encoding="utf-8") as f:
            summaries.append(json.load(f))
    with open(os.path.join(data_dir, "fashion_mnist.json"), encoding="utf-8") as f:
        data_info = json.load(f)
    wall = time.perf_counter() - t0
    if args.report_only:   # the training run's wall time: as it recorded it, else the slowest seed's stages
        try:
            with open(os.path.join(out, "wall_seconds.json"), encoding="utf-8") as f:
                wall = json.load(f)["seconds"]
        except FileNotFoundError:
            wall = max(sum(s["seconds"].values()) for s in summaries)
    cmd = "python experiments/run.py --scale " + args.scale + " --seeds " + " ".join(map(str, args.seeds))
    results = os.path.abspath(args.results)
    png = os.path.splitext(results)[0] + "_probes.png"
    os.makedirs(os.path.dirname(results), exist_ok=True)
    probes_png(summaries, png, sc)
    text = results_markdown(sc, summaries, cmd, wall, data_info, os.path.basename(png),
                            _versions(), times_data, note=args.note)
    tmp = f"{results}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, results)
    print(f"wrote {results} and {png} ({(time.perf_counter() - t0) / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
