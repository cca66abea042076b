"""``caffekt detect``: Fast R-CNN fine-tuning, testing and VOC evaluation on a VOC-format folder.

    caffekt detect proposals --dataset VOC2007 --split trainval -o CACHE [--mode fast|quality]
    caffekt detect train --solver SOLVER --weights W.caffemodel --dataset VOC2007 --split trainval
                         [--cfg voc07_paper|FILE.json|FILE.yml] [--set TRAIN.SCALES=[600] ...]
                         [--proposals FILE|DIR | --cache DIR --mode fast] [--max-iter N] [-o OUT]
    caffekt detect test  --net test.prototxt --weights M.caffemodel --dataset VOC2007 --split test [-o OUT]
    caffekt detect eval  --dataset VOC2007 --split test --detections OUT [--json] [-o RESULT.json] [--png-output P]
"""
from __future__ import annotations

import argparse
import json

from caffe_compat.cli_options import add_json, add_named_output, add_output, add_quiet, subcommand


def _set(text: str):
    key, sep, val = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--set wants KEY=VALUE (e.g. TRAIN.SCALES=[600]), got {text!r}")
    try:
        v = json.loads(val)
    except json.JSONDecodeError:
        v = val
    d = v
    for part in reversed(key.split(".")):
        d = {part: d}
    return d


def _common(p, proposals=True):
    p.add_argument("--dataset", required=True, help="VOC-format folder (JPEGImages, Annotations, ImageSets/Main)")
    p.add_argument("--split", required=True, help="image set name, e.g. trainval or test")
    p.add_argument("--classes", help="comma-separated class names (default: the 20 VOC classes)")
    add_quiet(p)
    if proposals:
        p.add_argument("--cfg", help="Fast R-CNN config: a shipped name (voc07_paper), .json or the fork's .yml")
        p.add_argument("--set", dest="sets", action="append", type=_set, default=[], metavar="KEY=VALUE",
                       help="override a config key, e.g. TRAIN.SCALES=[600] (repeatable)")
        p.add_argument("--proposals", help="precomputed proposals: folder of <id>.npy, .npz or the fork's .mat")
        p.add_argument("--cache", help="selective-search cache folder (default OUTPUT/proposals/SPLIT)")
        p.add_argument("--mode", choices=("fast", "quality"), default="fast", help="selective search mode")


HELP = "Fast R-CNN on a VOC-format folder: proposals, fine-tuning, testing, VOC07 evaluation"
EXAMPLE = """caffekt detect train --solver solver.prototxt --weights init.caffemodel --dataset VOC2007 --split trainval -o out
caffekt detect eval --dataset VOC2007 --split test --detections frcnn_test --json"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="detect_command", metavar="STEP")
    sub.required = True
    p = subcommand(sub, "proposals", "selective search boxes for a split, cached per image (resumable)",
                   "caffekt detect proposals --dataset VOC2007 --split trainval -o ss_cache --mode fast")
    _common(p, proposals=False)
    add_output(p, "cache folder (<id>.npy per image)", required=True)
    p.add_argument("--mode", choices=("fast", "quality"), default="fast", help="selective search mode")

    p = subcommand(sub, "train", "fine-tune a Fast R-CNN net (the fork's train.prototxt) through caffekt train",
                   "caffekt detect train --solver fast-rcnn/models/CaffeNet/solver.prototxt --weights init.caffemodel "
                   "--dataset VOC2007 --split trainval --cfg voc07_paper -o frcnn_out")
    p.add_argument("--solver", required=True, help="solver prototxt (e.g. the fork's models/CaffeNet/solver.prototxt)")
    p.add_argument("--weights", default=None, metavar="W[,W2]", help="caffemodel(s) to start from")
    p.add_argument("--max-iter", type=int, help="override max_iter")
    p.add_argument("--resume", help="solverstate, or 'auto' (latest under OUTPUT/solver_state)")
    p.add_argument("--seed", type=int, help="override the solver's random_seed")
    add_output(p, "output folder", default="frcnn_out")
    _common(p)

    p = subcommand(sub, "test", "detections of a test net on a split (VOC results files)",
                   "caffekt detect test --net test.prototxt --weights frcnn_out/model.caffemodel --dataset VOC2007 "
                   "--split test -o frcnn_test")
    p.add_argument("--net", required=True, help="test prototxt (the fork's models/CaffeNet/test.prototxt)")
    p.add_argument("--weights", required=True, help="caffemodel written by detect train")
    add_output(p, "folder for comp4_det_<split>_<class>.txt", default="frcnn_test")
    p.add_argument("--eval", action="store_true", help="evaluate right after (as detect eval)")
    _common(p)

    p = subcommand(sub, "eval", "VOC07 11-point AP per class and mAP of VOC results files",
                   "caffekt detect eval --dataset VOC2007 --split test --detections frcnn_test -o map.json "
                   "--png-output ap.png")
    _common(p, proposals=False)
    p.add_argument("--detections", required=True, help="folder of comp4_det_<split>_<class>.txt")
    p.add_argument("--area", action="store_true", help="area under the curve (VOC2010+) instead of 11 points")
    add_output(p, "JSON result file")
    add_named_output(p, "png", "PNG bar chart of per-class AP", old=("--png",))
    add_json(p)


def _classes(args):
    return [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None


def _overrides(args):
    out: dict = {}
    for d in args.sets:
        _deep(out, d)
    return out or None


def _deep(dst: dict, src: dict) -> None:
    for k, v in src.items():
        if isinstance(v, dict) and isinstance(dst.get(k), dict):
            _deep(dst[k], v)
        else:
            dst[k] = v


def _eval(args, detections: str) -> int:
    from caffe_compat.files import atomic_output

    from . import voc_eval
    from .voc import VOCDataset
    classes = _classes(args)
    ds = VOCDataset(args.dataset, args.split, classes) if classes else VOCDataset(args.dataset, args.split)
    res = voc_eval.evaluate(ds.records(), ds.classes, detections, args.split,
                            use_07=not getattr(args, "area", False))
    if getattr(args, "json", False):
        print(json.dumps(res, indent=1))
    else:
        print(voc_eval.table(res))
    out = getattr(args, "output", None) if args.detect_command == "eval" else None
    if out:
        with atomic_output(out) as f:
            f.write(json.dumps(res, indent=1).encode("utf-8"))
    if getattr(args, "png_output", None):
        voc_eval.plot(res, args.png_output)
    return 0


def run(args) -> int:
    progress = not args.quiet
    if args.detect_command == "proposals":
        from .proposals import ProposalCache
        from .voc import VOCDataset
        classes = _classes(args)
        ds = VOCDataset(args.dataset, args.split, classes) if classes else VOCDataset(args.dataset, args.split)
        boxes = ProposalCache(args.output, args.mode).all(ds.records(), progress)
        print(f"{len(boxes)} images, {sum(b.shape[0] for b in boxes)} boxes in {args.output}")
        return 0
    if args.detect_command == "train":
        from .train import train_detector
        weights = [w for w in (args.weights or "").split(",") if w]
        res = train_detector(args.solver, args.dataset, args.split, weights=weights, classes=_classes(args),
                             cfg_path=args.cfg, cfg_overrides=_overrides(args), proposals=args.proposals,
                             cache=args.cache, ss_mode=args.mode, out=args.output, max_iter=args.max_iter,
                             resume=args.resume, progress=progress, seed=args.seed)
        print(f"iteration {res.iter}: {res.models[-1] if res.models else 'no model written'}")
        print(f"{res.seconds_per_iter:.3f} s/iter; log {res.log_csv}")
        return 0
    if args.detect_command == "test":
        from .test import test_detector
        paths = test_detector(args.net, args.weights, args.dataset, args.split, classes=_classes(args),
                              cfg_path=args.cfg, cfg_overrides=_overrides(args), proposals=args.proposals,
                              cache=args.cache, ss_mode=args.mode, out=args.output, progress=progress)
        print(f"{len(paths)} results files in {args.output}")
        return _eval(args, args.output) if args.eval else 0
    return _eval(args, args.detections)
