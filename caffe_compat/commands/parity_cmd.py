"""``caffekt parity``: every blob of our module against an independent implementation.

Each blob is judged against our module run in float64 (``caffe_compat.judge``):
exit 0 when every compared blob agrees within float32 rounding, 1 when one
does not (or a blob the backend must show is missing), 2 on bad input.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Dict, List, Tuple

from ..errors import CaffeCompatError
from ..judge import DEFAULT_ATOL, DEFAULT_RTOL, DEFAULT_SLACK


def _input_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """``[NAME=]N,C,H,W`` -> (name or "", dims)."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [NAME=]N,C,H,W with integer dims, got {text!r}")
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"dims must be positive integers, got {text!r}")
    return name, shape


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("prototxt", help="the net (deploy prototxt; legacy formats are upgraded)")
    p.add_argument("weights", help="its caffemodel")
    p.add_argument("--backend", required=True, choices=("caffe", "opencv", "onnxruntime"),
                   help="caffe: real pycaffe in a subprocess; opencv: cv2.dnn.readNetFromCaffe; "
                        "onnxruntime: our module exported to ONNX")
    p.add_argument("--input-shape", action="append", type=_input_shape, default=[],
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
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--caffe-python", metavar="PATH",
                   help="python of the real Caffe (default: $CAFFEKT_ORACLE_PYTHON, else the "
                        "tools/build_caffe_oracle.sh prefix)")


def _shapes(pairs: List[Tuple[str, Tuple[int, ...]]], inputs: List[str]) -> Dict[str, Tuple[int, ...]]:
    out: Dict[str, Tuple[int, ...]] = {}
    for name, shape in pairs:
        if not name:
            if len(inputs) != 1:
                raise CaffeCompatError(f"--input-shape without a NAME= needs a net with one input; "
                                       f"this one has {inputs}")
            name = inputs[0]
        if name not in inputs:
            raise CaffeCompatError(f"--input-shape names {name!r}, not an input of the net; "
                                   f"its inputs are {inputs}")
        out[name] = shape
    return out


def _net_inputs(prototxt: str) -> List[str]:
    from ..parity import _parse_net_file
    param = _parse_net_file(prototxt)
    return [t for lp in param.layer if lp.type == "Input" for t in lp.top] or \
        [t for lp in param.layer if not len(lp.bottom) for t in lp.top]


def run(args) -> int:
    from ..caffe_oracle import OracleError
    from ..parity import format_table, run_parity

    shapes = _shapes(args.input_shape, _net_inputs(args.prototxt)) if args.input_shape else None
    try:
        report = run_parity(args.prototxt, args.weights, args.backend, input_shapes=shapes,
                            seed=args.seed, atol=args.atol, rtol=args.rtol,
                            caffe_python=args.caffe_python, slack=args.slack)
    except OracleError as e:
        # Caffe aborting on a net we run is a disagreement, not bad input.
        print(f"caffekt parity: the real Caffe failed on this net:\n{e}", file=sys.stderr)
        return 1
    if args.json:
        json.dump(report.to_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print(format_table(report))
    return 0 if report.ok else 1
