"""``caffekt train SOLVER``: train the net a Caffe solver names, as ``caffe train --solver`` does.

See ``caffe_compat.train`` for what is read from where.  Snapshots keep
Caffe's names (``<prefix>_iter_<N>.caffemodel`` / ``.solverstate``); the CSV
log is ``<prefix>_log.csv``.  Under ``torchrun`` (``WORLD_SIZE`` > 1) each
process is one Caffe solver of a multi-GPU run on the gloo backend.
Exit 0 when training finished, 2 on bad input (reported before the first
iteration).
"""
from __future__ import annotations

import logging

from ..cli_options import add_output, add_quiet

HELP = "train the net a solver prototxt names, with Caffe's solver semantics (torchrun for multi-process)"
EXAMPLE = """caffekt train solver.prototxt -o snapshots
caffekt train solver.prototxt -o snapshots --resume auto --max-iter 8
torchrun --nproc_per_node 2 -m caffe_compat.cli train solver.prototxt -o snapshots"""


def add_arguments(parser) -> None:
    parser.add_argument("solver", metavar="SOLVER", help="solver prototxt")
    parser.add_argument("--weights", default=None, metavar="W[,W2...]",
                        help="caffemodel(s) to fine-tune from, copied in order (caffe train --weights)")
    parser.add_argument("--resume", default=None, metavar="S.solverstate",
                        help="solverstate to resume from, or 'auto' for the latest complete snapshot")
    parser.add_argument("--max-iter", type=int, default=None, metavar="N", help="override the solver's max_iter")
    add_output(parser, "folder for snapshots and logs (Caffe's file names kept; default: as the solver's "
               "snapshot_prefix says)", metavar="DIR", old=("--out",))
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="override the solver's random_seed")
    parser.add_argument("--workers", type=int, default=0, metavar="W", help="data loader worker processes")
    parser.add_argument("--labels-bin", default=None, metavar="FILE",
                        help="the Jigsaw fork's labels.bin (int32 count, then labels): replaces the labels of "
                             "the train net's Data layers in LMDB order, e.g. cluster pseudo-labels")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    add_quiet(parser, old=True)
    parser.add_argument("--verbose", action="store_true", help="log the solver's display lines")


def run(args) -> int:
    from ..errors import UnsupportedParameter
    from ..train import shutdown_distributed, train
    if args.workers < 0:
        raise UnsupportedParameter(f"--workers must be >= 0, got {args.workers}")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
    else:   # the driver's one-off notes (e.g. which labels a labels.bin replaced) are always shown
        note = logging.getLogger("caffe_compat.train")
        if not note.handlers:
            h = logging.StreamHandler()
            h.setFormatter(logging.Formatter("caffekt train: %(message)s"))
            note.addHandler(h)
        note.setLevel(logging.INFO)
    weights = [args.weights] if args.weights else []
    try:
        res = train(args.solver, weights=weights, resume=args.resume, max_iter=args.max_iter, out=args.output,
                    seed=args.seed, workers=args.workers, progress=not args.quiet,
                    labels_bin=args.labels_bin, device=args.device)
    finally:
        shutdown_distributed()
    if res.snapshot is not None:
        print(f"iteration {res.iter}: snapshot {res.snapshot[0]}")
        print(f"log {res.log_csv}")
    return 0
