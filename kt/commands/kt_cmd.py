"""``caffekt kt``: the knowledge-transfer pipeline, one subcommand per stage, and ``run`` for a whole config.

    caffekt kt jigsaw   perms|prep|train|eval ...   (the pretext task: ``jigsaw_cmd``)
    caffekt kt features --model P[:W] | --checkpoint C --blob B --images SRC -o F.npy
    caffekt kt hog      --images SRC -o F.npy
    caffekt kt cluster  FEATURES --k 2000 -o LABELS.txt [--truth LIST] [--montage PNG]
    caffekt kt train-cc --labels LABELS.txt [--images SRC] -o DIR [--max-iter N ...]
    caffekt kt probe    --model NAME=P[:W] ... --train LIST --val LIST -o DIR
    caffekt kt run      CONFIG|SHIPPED_NAME [--workdir D] [--var k=v] [--plan]

Each stage parses its options and calls one function of ``caffekt.kt``.
"""
from __future__ import annotations

import argparse
import json
import os

from caffe_compat.cli_options import add_json, add_output, add_quiet, bgr, parse_pairs, subcommand
from caffe_compat.errors import CaffeCompatError

from . import jigsaw_cmd

HELP = "knowledge transfer: jigsaw, features, hog, cluster, train-cc, probe, run CONFIG"
EXAMPLE = """caffekt kt run --list
caffekt kt run hog_cc_small --workdir work --plan
caffekt kt cluster feats.npy --k 2000 -o labels.txt"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kt_command", metavar="STAGE")
    sub.required = True
    jigsaw_cmd.add_arguments(subcommand(sub, "jigsaw", jigsaw_cmd.HELP, jigsaw_cmd.EXAMPLE))
    _args_features(sub)
    _args_hog(sub)
    _args_cluster(sub)
    _args_train_cc(sub)
    _args_probe(sub)
    _args_run(sub)


def _args_features(sub) -> None:
    p = subcommand(sub, "features", "extract a blob of a net for every image (resumable)",
                   "caffekt kt features --model deploy.prototxt:teacher.caffemodel --blob conv5 "
                   "--images train.txt -o conv5.npy")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="PROTOTXT[:WEIGHTS] (no weights: the prototxt's random fillers)")
    src.add_argument("--checkpoint", help="a caffemodel written by train-cc (deploy.prototxt beside it)")
    p.add_argument("--blob", required=True, help="blob to extract, e.g. conv5 or fc7")
    p.add_argument("--images", required=True, help="image folder (recursive) or list file")
    add_output(p, "feature file (.npy or .f32); OUTPUT.json is its manifest", required=True, metavar="FILE",
               old=("--out",))
    p.add_argument("--preprocess", choices=("caffe", "tile-mvn"), default="caffe")
    p.add_argument("--mean", type=bgr, default=(104.0, 117.0, 123.0), help="B,G,R mean for --preprocess caffe")
    p.add_argument("--resize", type=int, help="shorter side before the centre crop (caffe; default 256/227 x input)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplier after the tile MVN (tile-mvn)")
    p.add_argument("--input-size", type=int, help="override the net's input height/width")
    p.add_argument("--pool-grid", type=int, help="average-pool the blob to G x G")
    p.add_argument("--l2", action="store_true", help="L2-normalise every row (after PCA)")
    p.add_argument("--pca", type=int, help="project to D dims by PCA fitted on a sample")
    p.add_argument("--whiten", action="store_true", help="divide PCA components by sqrt(variance)")
    p.add_argument("--pca-sample", type=int, default=100000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    add_quiet(p, old=True)


def _args_hog(sub) -> None:
    p = subcommand(sub, "hog", "HOG descriptors (OpenCV or scikit-image) in the feature-file format",
                   "caffekt kt hog --images train.txt -o hog.npy")
    p.add_argument("--images", required=True)
    add_output(p, "feature file (.npy or .f32)", required=True, metavar="FILE", old=("--out",))
    from caffekt.kt.hog import BACKENDS, HOG_DEFAULTS
    p.add_argument("--size", type=int, default=HOG_DEFAULTS["size"], help="images resized to SIZE x SIZE gray")
    p.add_argument("--cell", type=int, default=HOG_DEFAULTS["cell"])
    p.add_argument("--bins", type=int, default=HOG_DEFAULTS["bins"])
    p.add_argument("--backend", choices=BACKENDS, default=HOG_DEFAULTS["backend"])
    p.add_argument("--l2", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    add_quiet(p, old=True)


def _args_cluster(sub) -> None:
    p = subcommand(sub, "cluster", "k-means pseudo-labels of a feature file",
                   "caffekt kt cluster conv5.npy --k 2000 -o labels.txt --truth val.txt")
    p.add_argument("features")
    p.add_argument("--k", type=int, default=2000)
    add_output(p, "LABELS.txt ('path label'); LABELS.bin, LABELS.json beside it", required=True,
               metavar="LABELS.txt", old=("--out",))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--max-train", type=int, help="train the centroids on a sample of N rows")
    p.add_argument("--truth", help="ImageData list of true labels: report NMI and purity")
    p.add_argument("--montage", help="PNG with sample images of the largest clusters")
    p.add_argument("--hist-png", help="PNG histogram of cluster sizes")
    p.add_argument("--images", help="images for the montage (default: those the feature manifest names)")
    add_json(p)


def _args_train_cc(sub) -> None:
    p = subcommand(sub, "train-cc", "cluster classification: AlexNet trained on pseudo-labels",
                   "caffekt kt train-cc --labels labels.txt --max-iter 1000 -o cc_out")
    p.add_argument("--labels", required=True, help="'path label' list from kt cluster")
    p.add_argument("--images", help="image folder/list: every image must have a label")
    p.add_argument("--arch", default="alexnet", choices=("alexnet",))
    p.add_argument("--solver", help="solver prototxt to use instead of the AlexNet recipe (its net is replaced)")
    add_output(p, "folder for the solver, nets, snapshots and log", default="cc_out", metavar="DIR",
               old=("--out",))
    p.add_argument("--k", type=int, help="classes (default: largest label + 1)")
    for name, typ in (("max-iter", int), ("base-lr", float), ("stepsize", int), ("gamma", float),
                      ("momentum", float), ("weight-decay", float), ("batch-size", int), ("crop-size", int),
                      ("resize", int), ("snapshot", int), ("display", int), ("random-seed", int)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--no-mirror", action="store_true")
    p.add_argument("--mean", type=bgr)
    p.add_argument("--workers", type=int, default=0)
    add_quiet(p, old=True)


def _args_probe(sub) -> None:
    p = subcommand(sub, "probe", "linear probes on frozen conv1..conv5, with a random-init baseline",
                   "caffekt kt probe --model cc=cc_out/deploy.prototxt:cc_out/final.caffemodel "
                   "--train train.txt --val val.txt -o probes")
    p.add_argument("--model", action="append", required=True, metavar="NAME=PROTOTXT[:WEIGHTS]")
    p.add_argument("--train", required=True, help="'path label' list")
    p.add_argument("--val", required=True, help="'path label' list")
    add_output(p, "folder for probes.md, probes.csv, probes.png", required=True, metavar="DIR", old=("--out",))
    p.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    p.add_argument("--input-size", type=int)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true")
    add_quiet(p, old=True)
    add_json(p)


def _args_run(sub) -> None:
    p = subcommand(sub, "run", "run a pipeline config, resuming at its first missing stage",
                   "caffekt kt run --list\ncaffekt kt run hog_cc_small --workdir work --var seed=1")
    p.add_argument("config", nargs="?", help="config file, or a shipped name (e.g. hog_cc_small)")
    p.add_argument("--workdir", help="override the config's workdir")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--plan", action="store_true", help="only say which stages would run")
    p.add_argument("--list", action="store_true", help="list the shipped configs")
    add_quiet(p)
    add_json(p)


def _run_features(a) -> int:
    from caffekt.kt.features import extract
    from caffekt.kt.images import image_paths
    arr = extract(image_paths(a.images), a.output, model=a.model, checkpoint=a.checkpoint, blob=a.blob,
                  preprocess=a.preprocess, mean=a.mean, input_size=a.input_size, resize=a.resize,
                  scale=a.scale, pool_grid=a.pool_grid, l2=a.l2, pca=a.pca, whiten=a.whiten,
                  pca_sample=a.pca_sample, seed=a.seed, batch_size=a.batch_size, progress=not a.quiet)
    if arr is None:   # torchrun rank > 0: its shard is on disk, rank 0 joins them
        print(f"{a.output}: this rank's shard is written")
        return 0
    print(f"{a.output}: {arr.shape[0]} x {arr.shape[1]} float32 (manifest {a.output}.json)")
    return 0


def _run_hog(a) -> int:
    from caffekt.kt.hog import extract_hog
    from caffekt.kt.images import image_paths
    arr = extract_hog(image_paths(a.images), a.output, size=a.size, cell=a.cell, bins=a.bins, backend=a.backend,
                      l2=a.l2, batch_size=a.batch_size, progress=not a.quiet)
    if arr is None:
        print(f"{a.output}: this rank's shard is written")
        return 0
    print(f"{a.output}: {arr.shape[0]} x {arr.shape[1]} float32 HOG ({a.backend})")
    return 0


def _run_cluster(a) -> int:
    from caffekt.kt.cluster import cluster_file
    from caffekt.kt.images import image_paths
    s = cluster_file(a.features, a.k, a.output, seed=a.seed, niter=a.niter, max_train=a.max_train,
                     truth=a.truth, montage=a.montage, hist_png=a.hist_png,
                     montage_images=image_paths(a.images) if a.images and a.montage else None)
    if a.json:
        print(json.dumps(s, default=str))
        return 0
    stem = os.path.splitext(a.output)[0]
    print(f"k={a.k} on {s['images']} images: objective {s['objective']:.6g} "
          f"({s['objective_per_image']:.6g} per image), empty clusters {s['empty_clusters']}")
    print(s["histogram"])
    if "nmi" in s:
        print(f"NMI {s['nmi']:.4f}  purity {s['purity']:.4f}  (vs {a.truth})")
    print(f"wrote {a.output}, {stem}.bin, {stem}.json" + (f", {a.montage}" if a.montage else ""))
    return 0


def _run_train_cc(a) -> int:
    from caffekt.kt.cc import CCRecipe, latest_model, train_cc
    from caffekt.kt.images import image_paths
    kw = {k: getattr(a, k) for k in ("max_iter", "base_lr", "stepsize", "gamma", "momentum", "weight_decay",
                                     "batch_size", "crop_size", "resize", "snapshot", "display", "random_seed")}
    if a.no_mirror:
        kw["mirror"] = False
    kw["mean"] = a.mean
    recipe = CCRecipe().replace(**kw)
    res = train_cc(a.labels, a.output, images=image_paths(a.images) if a.images else None, arch=a.arch,
                   solver=a.solver, recipe=recipe, k=a.k, workers=a.workers, progress=not a.quiet)
    print(f"trained to iteration {res.iter}; smoothed loss {res.smoothed_loss:.4f}; "
          f"latest model {latest_model(a.output)}")
    return 0


def _run_probe(a) -> int:
    from caffekt.kt.features import parse_model
    from caffekt.kt.probes import ProbeSettings, run_probes, table_markdown
    models = {name: parse_model(spec)
              for name, spec in parse_pairs(a.model, "--model", "NAME=PROTOTXT[:WEIGHTS]").items()}
    table = run_probes(models, a.train, a.val, a.output, layers=a.layers.split(","),
                       settings=ProbeSettings(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed),
                       random_baseline=None if a.no_baseline else "random init", input_size=a.input_size,
                       progress=not a.quiet)
    if a.json:
        print(json.dumps(table, default=str))
        return 0
    print(table_markdown(table))
    print(f"wrote {a.output}/probes.md, probes.csv, probes.png")
    return 0


def _run_pipeline(a) -> int:
    from caffekt.kt.pipeline import load_config, resolve_config, run, shipped_configs
    if a.json and not (a.list or a.plan):
        raise CaffeCompatError("kt run: --json goes with --list or --plan (a run prints its stages' own lines)")
    if a.list:
        configs = shipped_configs()
        if a.json:
            print(json.dumps(configs))
        else:
            for name, path in configs.items():
                print(f"{name:28s} {path}")
        return 0
    if not a.config:
        raise CaffeCompatError("kt run needs a CONFIG (a file or a shipped name; --list shows them)")
    overrides = parse_pairs(a.var, "--var", "NAME=VALUE")
    cfg = load_config(resolve_config(a.config), overrides, workdir=a.workdir)
    if a.quiet:
        for st in cfg["stages"]:
            st["progress"] = False
    would = run(cfg, only_plan=a.plan, log=(lambda _line: None) if a.json else print)
    if a.json:
        print(json.dumps({"workdir": cfg["workdir"], "stages": [st["name"] for st in cfg["stages"]],
                          "would_run": would}))
    return 0


def run(args) -> int:
    return {"jigsaw": jigsaw_cmd.run, "features": _run_features, "hog": _run_hog, "cluster": _run_cluster,
            "train-cc": _run_train_cc, "probe": _run_probe, "run": _run_pipeline}[args.kt_command](args)
