"""``caffekt demo [--quick] [-o DIR] [--seed S] [--data D]``: the paper's story end to end, small, offline.

Builds the image set (Fashion-MNIST when ``dataset-fashion-mnist`` is
installed, else crops of scikit-image's bundled photos; the first line says
which; cached), trains a small Jigsaw++ teacher, clusters its features,
trains the stride-4 AlexNet student on the clusters, probes all three nets,
exports the student for Fast R-CNN and to ONNX (both checked), and writes
``DIR/report/report.md`` with its figures (``caffekt.kt.demo``).  About 6
minutes on 2 CPU cores; ``--quick`` about one.  Exit 0 when every check
passed, 1 when an export check failed, 2 on bad input (e.g. ``-o`` names
a folder that holds something else).
"""
from __future__ import annotations

from caffe_compat.cli_options import add_output, add_quiet

HELP = "the paper's story end to end, small (Fashion-MNIST when installed, else scikit-image's photos), with a report folder"
EXAMPLE = """caffekt demo
caffekt demo --quick -o /tmp/demo --seed 1"""


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run (about a minute on 2 cores): fewer iterations and probe epochs")
    add_output(parser, "folder for work/, export/ and report/ (emptied first when an earlier demo made it)",
               default="caffekt-demo", metavar="DIR", old=("--out",))
    parser.add_argument("--seed", type=int, default=0, metavar="S",
                        help="seed of training, clustering and probes (the image set is fixed)")
    parser.add_argument("--cache", default=None, metavar="DIR",
                        help="where the image set is built once (default $CAFFEKT_CACHE or ~/.cache/caffekt)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads (default: torch's, or 1 when the machine is already busy)")
    parser.add_argument("--data", default="auto", choices=("auto", "fashion-mnist", "photos"),
                        help="image set (default auto: Fashion-MNIST when installed, else scikit-image's photos)")
    add_quiet(parser, old=True)


def run(args) -> int:
    from caffekt.kt.demo import run_demo

    res = run_demo(args.output, quick=args.quick, seed=args.seed, cache_dir=args.cache,
                   progress=not args.quiet, threads=args.threads, data=args.data)
    return 0 if res.ok else 1
