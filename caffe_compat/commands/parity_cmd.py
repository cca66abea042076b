"""``caffekt parity``: every blob of our module against an independent implementation
(``caffe_compat.parity.run_parity``).

Each blob is judged against our module run in float64 (``caffe_compat.judge``):
exit 0 when every compared blob agrees within float32 rounding, 1 when one
does not (or a blob the backend must show is missing), 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys

from ..cli_options import add_json, input_shape, resolve_input_shapes
from ..judge import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SLACK

HELP = "compare every blob of a net against real Caffe, OpenCV dnn or our ONNX export"
EXAMPLE = """caffekt parity deploy.prototxt weights.caffemodel --backend opencv
caffekt parity deploy.prototxt weights.caffemodel --backend onnxruntime --input-shape data=1,3,227,227"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..parity import BACKENDS
    p.add_argument("prototxt", help="the net (deploy prototxt; legacy formats are upgraded)")
    p.add_argument("weights", help="its caffemodel")
    p.add_argument("--backend", required=True, choices=BACKENDS,
                   help="caffe: real pycaffe in a subprocess; opencv: cv2.dnn.readNetFromCaffe; "
                        "onnxruntime: our module exported to ONNX")
    p.add_argument("--input-shape", action="append", type=input_shape, default=[],
                   metavar="[NAME=]N,C,H,W",
                   help="shape of a net input (NAME may be left out when the net has one input); "
                        "repeat for several inputs")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default 0)")
    p.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                   help="distance from float64 always allowed, relative to the blob's scale "
                        f"(default {DEFAULT_RTOL:g})")
    p.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                   help=f"absolute distance from float64 always allowed (default {DEFAULT_ATOL:g})")
    p.add_argument("--slack", type=float, default=DEFAULT_SLACK,
                   help="the backend may be this many times as far from float64 as our own float32 "
                        f"run is (default {DEFAULT_SLACK:g})")
    add_json(p)
    p.add_argument("--caffe-python", metavar="PATH",
                   help="python of the real Caffe (default: $CAFFEKT_ORACLE_PYTHON, else the "
                        "tools/build_caffe_oracle.sh prefix)")


def run(args) -> int:
    from ..caffe_oracle import OracleError
    from ..parity import format_table, run_parity

    shapes = resolve_input_shapes(args.input_shape, args.prototxt)
    try:
        report = run_parity(args.prototxt, args.weights, args.backend, input_shapes=shapes,
                            seed=args.seed, atol=args.atol, rtol=args.rtol,
                            caffe_python=args.caffe_python, slack=args.slack)
    except OracleError as e:
        # Caffe aborting on a net we run is a disagreement (exit 1), not bad input.
        print(f"caffekt parity: the real Caffe failed on this net:\n{e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0 if report.ok else 1
