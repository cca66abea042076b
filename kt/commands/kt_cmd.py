"""``caffekt kt``: the knowledge-transfer pipeline, one subcommand per stage, and ``run`` for a whole config.

    caffekt kt features --model P[:W] | --checkpoint C --blob B --images SRC --out F.npy
    caffekt kt hog      --images SRC --out F.npy
    caffekt kt cluster  FEATURES --k 2000 --out LABELS.txt [--truth LIST] [--montage PNG]
    caffekt kt train-cc --labels LABELS.txt [--images SRC] --out DIR [--max-iter N ...]
    caffekt kt probe    --model NAME=P[:W] ... --train LIST --val LIST --out DIR
    caffekt kt run      CONFIG|SHIPPED_NAME [--workdir D] [--var k=v] [--plan]
"""
from __future__ import annotations

import argparse
import os


def _mean(text: str):
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--mean wants B,G,R numbers, got {text!r}") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"--mean wants three values B,G,R, got {len(vals)}")
    return tuple(vals)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kt_command", metavar="STAGE")
    sub.required = True

    p = sub.add_parser("features", help="extract a blob of a net for every image (resumable)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="PROTOTXT[:WEIGHTS] (no weights: the prototxt's random fillers)")
    src.add_argument("--checkpoint", help="a caffemodel written by train-cc (deploy.prototxt beside it)")
    p.add_argument("--blob", required=True, help="blob to extract, e.g. conv5 or fc7")
    p.add_argument("--images", required=True, help="image folder (recursive) or list file")
    p.add_argument("--out", required=True, help="feature file (.npy or .f32); OUT.json is its manifest")
    p.add_argument("--preprocess", choices=("caffe", "tile-mvn"), default="caffe")
    p.add_argument("--mean", type=_mean, default=(104.0, 117.0, 123.0), help="B,G,R mean for --preprocess caffe")
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
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("hog", help="HOG descriptors (OpenCV or scikit-image) in the feature-file format")
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--size", type=int, default=64, help="images resized to SIZE x SIZE gray")
    p.add_argument("--cell", type=int, default=8)
    p.add_argument("--bins", type=int, default=9)
    p.add_argument("--backend", choices=("opencv", "skimage"), default="opencv")
    p.add_argument("--l2", action="store_true")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("cluster", help="k-means pseudo-labels of a feature file")
    p.add_argument("features")
    p.add_argument("--k", type=int, default=2000)
    p.add_argument("--out", required=True, help="LABELS.txt ('path label'); LABELS.bin, LABELS.json beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--niter", type=int, default=20)
    p.add_argument("--max-train", type=int, help="train the centroids on a sample of N rows")
    p.add_argument("--truth", help="ImageData list of true labels: report NMI and purity")
    p.add_argument("--montage", help="PNG with sample images of the largest clusters")
    p.add_argument("--hist-png", help="PNG histogram of cluster sizes")
    p.add_argument("--images", help="images for the montage (default: those the feature manifest names)")

    p = sub.add_parser("train-cc", help="cluster classification: AlexNet trained on pseudo-labels")
    p.add_argument("--labels", required=True, help="'path label' list from kt cluster")
    p.add_argument("--images", help="image folder/list: every image must have a label")
    p.add_argument("--arch", default="alexnet", choices=("alexnet",))
    p.add_argument("--solver", help="solver prototxt to use instead of the AlexNet recipe (its net is replaced)")
    p.add_argument("--out", default="cc_out")
    p.add_argument("--k", type=int, help="classes (default: largest label + 1)")
    for name, typ in (("max-iter", int), ("base-lr", float), ("stepsize", int), ("gamma", float),
                      ("momentum", float), ("weight-decay", float), ("batch-size", int), ("crop-size", int),
                      ("resize", int), ("snapshot", int), ("display", int), ("random-seed", int)):
        p.add_argument(f"--{name}", type=typ)
    p.add_argument("--no-mirror", action="store_true")
    p.add_argument("--mean", type=_mean)
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("probe", help="linear probes on frozen conv1..conv5, with a random-init baseline")
    p.add_argument("--model", action="append", required=True, metavar="NAME=PROTOTXT[:WEIGHTS]")
    p.add_argument("--train", required=True, help="'path label' list")
    p.add_argument("--val", required=True, help="'path label' list")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", default="conv1,conv2,conv3,conv4,conv5")
    p.add_argument("--input-size", type=int)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("run", help="run a pipeline config, resuming at its first missing stage")
    p.add_argument("config", nargs="?", help="config file, or a shipped name (e.g. hog_cc_small)")
    p.add_argument("--workdir", help="override the config's workdir")
    p.add_argument("--var", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--plan", action="store_true", help="only say which stages would run")
    p.add_argument("--list", action="store_true", help="list the shipped configs")


def _run_features(a) -> int:
    from caffekt.kt.features import extract
    from caffekt.kt.pipeline import _image_paths
    arr = extract(_image_paths(a.images), a.out, model=a.model, checkpoint=a.checkpoint, blob=a.blob,
                  preprocess=a.preprocess, mean=a.mean, input_size=a.input_size, resize=a.resize,
                  scale=a.scale, pool_grid=a.pool_grid, l2=a.l2, pca=a.pca, whiten=a.whiten,
                  pca_sample=a.pca_sample, seed=a.seed, batch_size=a.batch_size, progress=not a.no_progress)
    if arr is None:   # torchrun rank > 0: its shard is on disk, rank 0 joins them
        print(f"{a.out}: this rank's shard is written")
        return 0
    print(f"{a.out}: {arr.shape[0]} x {arr.shape[1]} float32 (manifest {a.out}.json)")
    return 0


def _run_hog(a) -> int:
    from caffekt.kt.hog import extract_hog
    from caffekt.kt.pipeline import _image_paths
    arr = extract_hog(_image_paths(a.images), a.out, size=a.size, cell=a.cell, bins=a.bins, backend=a.backend,
                      l2=a.l2, batch_size=a.batch_size, progress=not a.no_progress)
    if arr is None:
        print(f"{a.out}: this rank's shard is written")
        return 0
    print(f"{a.out}: {arr.shape[0]} x {arr.shape[1]} float32 HOG ({a.backend})")
    return 0


def _run_cluster(a) -> int:
    from caffekt.kt.cluster import cluster_file
    from caffekt.kt.pipeline import _image_paths
    s = cluster_file(a.features, a.k, a.out, seed=a.seed, niter=a.niter, max_train=a.max_train, truth=a.truth,
                     montage=a.montage, hist_png=a.hist_png,
                     montage_images=_image_paths(a.images) if a.images and a.montage else None)
    stem = os.path.splitext(a.out)[0]
    print(f"k={a.k} on {s['images']} images: objective {s['objective']:.6g} "
          f"({s['objective_per_image']:.6g} per image), empty clusters {s['empty_clusters']}")
    print(s["histogram"])
    if "nmi" in s:
        print(f"NMI {s['nmi']:.4f}  purity {s['purity']:.4f}  (vs {a.truth})")
    print(f"wrote {a.out}, {stem}.bin, {stem}.json" + (f", {a.montage}" if a.montage else ""))
    return 0


def _run_train_cc(a) -> int:
    from caffekt.kt.cc import CCRecipe, latest_model, train_cc
    from caffekt.kt.pipeline import _image_paths
    kw = {k: getattr(a, k) for k in ("max_iter", "base_lr", "stepsize", "gamma", "momentum", "weight_decay",
                                     "batch_size", "crop_size", "resize", "snapshot", "display", "random_seed")}
    if a.no_mirror:
        kw["mirror"] = False
    kw["mean"] = a.mean
    recipe = CCRecipe().replace(**kw)
    res = train_cc(a.labels, a.out, images=_image_paths(a.images) if a.images else None, arch=a.arch,
                   solver=a.solver, recipe=recipe, k=a.k, workers=a.workers, progress=not a.no_progress)
    print(f"trained to iteration {res.iter}; smoothed loss {res.smoothed_loss:.4f}; "
          f"latest model {latest_model(a.out)}")
    return 0


def _run_probe(a) -> int:
    from caffe_compat.errors import CaffeCompatError
    from caffekt.kt.features import parse_model
    from caffekt.kt.probes import ProbeSettings, run_probes, table_markdown
    models = {}
    for m in a.model:
        name, sep, spec = m.partition("=")
        if not sep or not name or not spec:
            raise CaffeCompatError(f"--model wants NAME=PROTOTXT[:WEIGHTS], got {m!r}")
        models[name] = parse_model(spec)
    table = run_probes(models, a.train, a.val, a.out, layers=a.layers.split(","),
                       settings=ProbeSettings(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, seed=a.seed),
                       random_baseline=None if a.no_baseline else "random init", input_size=a.input_size,
                       progress=not a.no_progress)
    print(table_markdown(table))
    print(f"wrote {a.out}/probes.md, probes.csv, probes.png")
    return 0


def _run_pipeline(a) -> int:
    from caffe_compat.errors import CaffeCompatError
    from caffekt.kt.pipeline import load_config, resolve_config, run, shipped_configs
    if a.list:
        for name, path in shipped_configs().items():
            print(f"{name:28s} {path}")
        return 0
    if not a.config:
        raise CaffeCompatError("kt run needs a CONFIG (a file or a shipped name; --list shows them)")
    overrides = {}
    for v in a.var:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise CaffeCompatError(f"--var wants NAME=VALUE, got {v!r}")
        overrides[k] = val
    cfg = load_config(resolve_config(a.config), overrides, workdir=a.workdir)
    run(cfg, only_plan=a.plan)
    return 0


def run(args) -> int:
    return {"features": _run_features, "hog": _run_hog, "cluster": _run_cluster, "train-cc": _run_train_cc,
            "probe": _run_probe, "run": _run_pipeline}[args.kt_command](args)
