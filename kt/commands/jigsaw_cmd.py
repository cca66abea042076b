"""``caffekt jigsaw``: Jigsaw++ pretext task -- permutation sets, stored images, training, evaluation.

    caffekt jigsaw perms FILE                      statistics of a set (.bin or .npy)
    caffekt jigsaw perms --n 701 [--variant max_min] [--seed S] -o FILE
    caffekt jigsaw prep --images DIR_OR_LIST -o OUT [--skip-bad] [--workers W]
    caffekt jigsaw train (--images DIR_OR_LIST | --stored OUT) --perms FILE [...]
    caffekt jigsaw eval --model PROTOTXT:WEIGHTS|CAFFEMODEL (--images ... | --stored ...) --perms FILE

The work lives in ``caffekt.kt`` (permutations, puzzle, images, jigsaw).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="jigsaw_command", metavar="ACTION")
    sub.required = True

    p = sub.add_parser("perms", help="show statistics of a permutation set, or generate one with --n")
    p.add_argument("file", nargs="?", help="a set to describe (.bin authors' layout, or .npy)")
    p.add_argument("--n", type=int, help="generate a set of this many permutations")
    p.add_argument("--variant", choices=("max_avg", "max_min"), default="max_avg",
                   help="greedy criterion: maximise the average (published sets) or minimum Hamming distance")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", help="where to write the generated set (.bin or .npy)")

    p = sub.add_parser("prep", help="decode images once into 255x255 stored images (memory-mappable)")
    p.add_argument("--images", required=True, help="an image folder (recursive) or a list file")
    p.add_argument("-o", "--output", required=True, help="output folder (images.u8 + manifest.json)")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable files out (counted) instead of failing")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, help_ in (("train", "train the 9-tower puzzle network"),
                        ("eval", "puzzle accuracy of a trained network on held-out images")):
        p = sub.add_parser(name, help=help_)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--images", help="image folder or list (train: stored under OUT/stored first)")
        src.add_argument("--stored", help="a folder made by 'caffekt jigsaw prep', or an LMDB of Datums "
                                             "(e.g. the authors' jps_dataset/train)")
        p.add_argument("--perms", help="permutation set (.bin/.npy); default: the net's hash_file, if any")
        p.add_argument("--occluder", choices=("another", "faithful", "none"), default="another",
                       help="occluding tiles from another image (paper), the same image (released fork), or none")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
        p.add_argument("--quiet", action="store_true", help="no progress bar")
    p = sub.choices["train"]
    p.add_argument("--arch", choices=("alexnet", "vgg16"), default="alexnet",
                   help="tower of the generated net (ignored with --net)")
    p.add_argument("--net", help="a train_val prototxt to train instead (e.g. the authors' "
                                 "train_val_cfn_jps++.prototxt: its Data layers are fed by the puzzle source)")
    p.add_argument("--solver", help="solver prototxt (default: the authors' schedule, lr 0.01, x0.1 every "
                                    "100K, 350K iterations, momentum 0.9, decay 5e-4); its net: is ignored")
    p.add_argument("--max-iter", type=int)
    p.add_argument("--batch-size", type=int, help="default: the net's (256 for the authors' setting)")
    p.add_argument("--base-lr", type=float)
    p.add_argument("--snapshot", type=int, help="snapshot every N iterations (default: the solver's)")
    p.add_argument("--width", type=float, default=1.0, help="scale the convolution widths (small runs)")
    p.add_argument("--fc6", type=int, default=1024)
    p.add_argument("--fc7", type=int, default=4096)
    p.add_argument("--dropout", type=float, default=0.5, help="drop ratio of the generated net (0: none)")
    p.add_argument("--init", choices=("authors", "msra"), default="authors",
                   help="fillers of the generated net: the authors' gaussians, or msra (small nets)")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    p.add_argument("--resume", help="a .solverstate to continue from, or 'auto' (the latest in --out)")
    p.add_argument("--out", default="jigsaw_out", help="output folder (solver, net, snapshots jigsaw_iter_N, jigsaw_log.csv)")
    p = sub.choices["eval"]
    p.add_argument("--model", required=True, help="PROTOTXT:WEIGHTS, or a caffemodel written by train")
    p.add_argument("--puzzles", type=int, help="number of puzzles (default: one per image)")
    p.add_argument("--batch-size", type=int, default=50)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _perms(args) -> int:
    from caffekt.kt.permutations import generate_permutations, hamming_stats, read_permutations, write_permutations

    if args.n is not None:
        if not args.output:
            print("caffekt jigsaw perms: error: --n needs -o FILE", file=sys.stderr)
            return EXIT_BAD_INPUT
        try:
            table = generate_permutations(args.n, args.variant, args.seed)
        except ValueError as e:
            print(f"caffekt jigsaw perms: error: {e}", file=sys.stderr)
            return EXIT_BAD_INPUT
        write_permutations(args.output, table)
        path = args.output
    elif args.file:
        table, path = read_permutations(args.file), args.file
    else:
        print("caffekt jigsaw perms: error: give a FILE to describe or --n N -o FILE", file=sys.stderr)
        return EXIT_BAD_INPUT
    st = hamming_stats(table)
    ident = bool((table == range(table.shape[1])).all(axis=1).any())
    print(f"{path}: {st['n']} permutations of {table.shape[1]} tiles; Hamming distance min {st['min']}, "
          f"mean {st['mean']:.3f}; identity in set: {'yes' if ident else 'no'}")
    return EXIT_OK


def _prep(args) -> int:
    from caffekt.kt.images import prep_stored

    man = prep_stored(args.images, args.output, skip_bad=args.skip_bad, workers=args.workers,
                      progress=not args.quiet)
    print(f"{args.output}: {man['count']} stored images, {len(man['skipped'])} skipped")
    for s in man["skipped"][:20]:
        print(f"  skipped {s['path']}: {s['error']}")
    return EXIT_OK


def _images(args, out_dir=None):
    from caffekt.kt.images import open_images, prep_stored

    if args.stored:
        return open_images(stored=args.stored)
    if out_dir is None:
        return open_images(images=args.images)
    folder = os.path.join(out_dir, "stored")
    prep_stored(args.images, folder, progress=not args.quiet)
    return open_images(stored=folder)


def _perm_file(args, prototxt=None):
    if args.perms:
        return args.perms
    if prototxt:
        from caffe_compat.io import read_net
        from caffekt.kt.jigsaw import resolve_hash_file
        for lp in read_net(prototxt).layer:
            if lp.transform_param.hash_file:
                return resolve_hash_file(lp.transform_param.hash_file, prototxt)
    return None


def _train(args) -> int:
    from caffekt.kt.jigsaw import train

    perms = _perm_file(args, args.net)
    if perms is None:
        print("caffekt jigsaw train: error: --perms FILE is required (e.g. the authors' permutations_701.bin, "
              "or 'caffekt jigsaw perms --n 701 -o perms.bin')", file=sys.stderr)
        return EXIT_BAD_INPUT
    from caffe_compat.train import shutdown_distributed
    images = _images(args, args.out)
    try:
        res = train(images, perms=perms, out=args.out, net_prototxt=args.net, solver=args.solver,
                    arch=args.arch, width=args.width, fc6=args.fc6, fc7=args.fc7, max_iter=args.max_iter,
                    batch_size=args.batch_size, occluder=args.occluder, seed=args.seed, workers=args.workers,
                    resume=args.resume, snapshot=args.snapshot, base_lr=args.base_lr, progress=not args.quiet,
                    dropout=args.dropout, init=args.init, device=args.device)
    finally:
        shutdown_distributed()
    if res.snapshot is None and res.log_csv is None:
        return EXIT_OK   # a rank other than 0 of a torchrun job: rank 0 reports
    snap = res.snapshot[0] if res.snapshot else "(none)"
    print(f"trained {res.iter} iterations in {res.seconds:.1f} s; last snapshot {snap}; log {res.log_csv}")
    return EXIT_OK


def _eval(args) -> int:
    from caffekt.kt.jigsaw import PuzzleSource, evaluate, load_eval_net
    from caffekt.kt.puzzle import PuzzleConfig

    net = load_eval_net(args.model, batch_size=args.batch_size)
    perms = _perm_file(args, net.path if str(net.path).endswith(".prototxt") else None)
    if perms is None:
        print("caffekt jigsaw eval: error: --perms FILE is required", file=sys.stderr)
        return EXIT_BAD_INPUT
    source = PuzzleSource(_images(args), perms, PuzzleConfig(occluder=args.occluder), args.seed)
    res = evaluate(net, source, puzzles=args.puzzles)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"puzzle accuracy {res['accuracy']:.4f} on {res['puzzles']} puzzles "
              f"({res['permutations']} permutations, chance {res['chance']:.4f})")
    return EXIT_OK


def run(args) -> int:
    return {"perms": _perms, "prep": _prep, "train": _train, "eval": _eval}[args.jigsaw_command](args)
