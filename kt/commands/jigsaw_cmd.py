"""``caffekt kt jigsaw``: Jigsaw++ pretext task -- permutation sets, stored images, training, evaluation.

    caffekt kt jigsaw perms FILE                      statistics of a set (.bin or .npy)
    caffekt kt jigsaw perms --n 701 [--variant max_min] [--seed S] -o FILE
    caffekt kt jigsaw prep --images DIR_OR_LIST -o OUT [--skip-bad] [--workers W]
    caffekt kt jigsaw train (--images DIR_OR_LIST | --stored OUT) --perms FILE [-o DIR ...]
    caffekt kt jigsaw eval --model PROTOTXT:WEIGHTS|CAFFEMODEL (--images ... | --stored ...) --perms FILE

The work lives in ``caffekt.kt`` (permutations, puzzle, images, jigsaw).
``caffekt jigsaw ...`` is the former spelling (``jigsaw_alias``).
"""
from __future__ import annotations

import argparse
import json
import os

from caffe_compat.cli_options import add_json, add_output, add_quiet, subcommand
from caffe_compat.errors import UnsupportedParameter

HELP = "Jigsaw++ pretext task: permutation sets, stored images, train, eval"
EXAMPLE = """caffekt kt jigsaw perms --n 701 -o perms.bin
caffekt kt jigsaw train --images photos/ --perms perms.bin -o jigsaw_out"""


# Long on purpose: it only declares the options of four subcommands.
def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="jigsaw_command", metavar="ACTION")
    sub.required = True

    p = subcommand(sub, "perms", "show statistics of a permutation set, or generate one with --n",
                   "caffekt kt jigsaw perms permutations_701.bin\n"
                   "caffekt kt jigsaw perms --n 701 --variant max_min -o perms.npy")
    p.add_argument("file", nargs="?", help="a set to describe (.bin authors' layout, or .npy)")
    p.add_argument("--n", type=int, help="generate a set of this many permutations")
    p.add_argument("--variant", choices=("max_avg", "max_min"), default="max_avg",
                   help="greedy criterion: maximise the average (published sets) or minimum Hamming distance")
    p.add_argument("--seed", type=int, default=0)
    add_output(p, "where to write the generated set (.bin or .npy)", metavar="FILE")
    add_json(p)

    p = subcommand(sub, "prep", "decode images once into 255x255 stored images (memory-mappable)",
                   "caffekt kt jigsaw prep --images train.txt -o stored/ --workers 4")
    p.add_argument("--images", required=True, help="an image folder (recursive) or a list file")
    add_output(p, "output folder (images.u8 + manifest.json)", required=True, metavar="DIR")
    p.add_argument("--skip-bad", action="store_true", help="leave unreadable files out (counted) instead of failing")
    p.add_argument("--workers", type=int, default=0, help="decoding processes (0: in this process)")
    add_quiet(p)

    for name, help_, example in (
            ("train", "train the 9-tower puzzle network",
             "caffekt kt jigsaw train --images photos/ --perms perms.bin --max-iter 1000 -o jigsaw_out"),
            ("eval", "puzzle accuracy of a trained network on held-out images",
             "caffekt kt jigsaw eval --model jigsaw_out/jigsaw_iter_1000.caffemodel --images val.txt "
             "--perms perms.bin")):
        p = subcommand(sub, name, help_, example)
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--images", help="image folder or list (train: stored under OUT/stored first)")
        src.add_argument("--stored", help="a folder made by 'caffekt kt jigsaw prep', or an LMDB of Datums "
                                             "(e.g. the authors' jps_dataset/train)")
        p.add_argument("--perms", help="permutation set (.bin/.npy); default: the net's hash_file, if any")
        p.add_argument("--occluder", choices=("another", "faithful", "none"), default="another",
                       help="occluding tiles from another image (paper), the same image (released fork), or none")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
        add_quiet(p)
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
    p.add_argument("--resume", help="a .solverstate to continue from, or 'auto' (the latest in --output)")
    add_output(p, "output folder (solver, net, snapshots jigsaw_iter_N, jigsaw_log.csv)", default="jigsaw_out",
               metavar="DIR", old=("--out",))
    p = sub.choices["eval"]
    p.add_argument("--model", required=True, help="PROTOTXT:WEIGHTS, or a caffemodel written by train")
    p.add_argument("--puzzles", type=int, help="number of puzzles (default: one per image)")
    p.add_argument("--batch-size", type=int, default=50)
    add_json(p)


def _perms(args) -> int:
    from caffekt.kt.permutations import generate_permutations, hamming_stats, read_permutations, write_permutations

    if args.n is not None:
        if not args.output:
            raise UnsupportedParameter("--n needs -o FILE")
        try:
            table = generate_permutations(args.n, args.variant, args.seed)
        except ValueError as e:
            raise UnsupportedParameter(str(e)) from None
        write_permutations(args.output, table)
        path = args.output
    elif args.file:
        table, path = read_permutations(args.file), args.file
    else:
        raise UnsupportedParameter("give a FILE to describe or --n N -o FILE")
    st = hamming_stats(table)
    ident = bool((table == range(table.shape[1])).all(axis=1).any())
    if args.json:
        print(json.dumps({"file": path, "permutations": st["n"], "tiles": int(table.shape[1]),
                          "min_hamming": st["min"], "mean_hamming": st["mean"], "identity": ident}))
        return 0
    print(f"{path}: {st['n']} permutations of {table.shape[1]} tiles; Hamming distance min {st['min']}, "
          f"mean {st['mean']:.3f}; identity in set: {'yes' if ident else 'no'}")
    return 0


def _prep(args) -> int:
    from caffekt.kt.images import prep_stored

    man = prep_stored(args.images, args.output, skip_bad=args.skip_bad, workers=args.workers,
                      progress=not args.quiet)
    print(f"{args.output}: {man['count']} stored images, {len(man['skipped'])} skipped")
    for s in man["skipped"][:20]:
        print(f"  skipped {s['path']}: {s['error']}")
    return 0


def _images(args, prep_into=None):
    from caffekt.kt.images import open_images
    return open_images(images=args.images, stored=args.stored, prep_into=prep_into, progress=not args.quiet)


def _train(args) -> int:
    from caffe_compat.train import shutdown_distributed
    from caffekt.kt.jigsaw import perms_file, train

    perms = perms_file(args.perms, args.net)
    if perms is None:
        raise UnsupportedParameter("--perms FILE is required (e.g. the authors' permutations_701.bin, "
                                   "or 'caffekt kt jigsaw perms --n 701 -o perms.bin')")
    images = _images(args, None if args.stored else os.path.join(args.output, "stored"))
    try:
        res = train(images, perms=perms, out=args.output, net_prototxt=args.net, solver=args.solver,
                    arch=args.arch, width=args.width, fc6=args.fc6, fc7=args.fc7, max_iter=args.max_iter,
                    batch_size=args.batch_size, occluder=args.occluder, seed=args.seed, workers=args.workers,
                    resume=args.resume, snapshot=args.snapshot, base_lr=args.base_lr, progress=not args.quiet,
                    dropout=args.dropout, init=args.init, device=args.device)
    finally:
        shutdown_distributed()
    if res.snapshot is None and res.log_csv is None:
        return 0   # a rank other than 0 of a torchrun job: rank 0 reports
    snap = res.snapshot[0] if res.snapshot else "(none)"
    print(f"trained {res.iter} iterations in {res.seconds:.1f} s; last snapshot {snap}; log {res.log_csv}")
    return 0


def _eval(args) -> int:
    from caffekt.kt.jigsaw import PuzzleSource, evaluate, load_eval_net, perms_file
    from caffekt.kt.puzzle import PuzzleConfig

    net = load_eval_net(args.model, batch_size=args.batch_size)
    perms = perms_file(args.perms, net.path if str(net.path).endswith(".prototxt") else None)
    if perms is None:
        raise UnsupportedParameter("--perms FILE is required")
    source = PuzzleSource(_images(args), perms, PuzzleConfig(occluder=args.occluder), args.seed)
    res = evaluate(net, source, puzzles=args.puzzles)
    if args.json:
        print(json.dumps(res))
    else:
        print(f"puzzle accuracy {res['accuracy']:.4f} on {res['puzzles']} puzzles "
              f"({res['permutations']} permutations, chance {res['chance']:.4f})")
    return 0


def run(args) -> int:
    return {"perms": _perms, "prep": _prep, "train": _train, "eval": _eval}[args.jigsaw_command](args)
