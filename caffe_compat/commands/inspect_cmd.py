"""``caffekt inspect FILE [--json]``: what a Caffe file holds (``caffe_compat.inspect``)."""
from __future__ import annotations

import json

from ..cli_options import add_json

HELP = "describe a prototxt, caffemodel, solver, solverstate or mean file"
EXAMPLE = """caffekt inspect bvlc_alexnet/deploy.prototxt
caffekt inspect --json jps_alexnet.caffemodel"""


def add_arguments(parser) -> None:
    parser.add_argument("file", help="prototxt net or solver, caffemodel, solverstate, binaryproto or Datum")
    add_json(parser)
    parser.add_argument("--no-shapes", action="store_true",
                        help="do not build a prototxt net to infer its blob shapes")


def run(args) -> int:
    from ..inspect import describe, format_table
    report = describe(args.file, infer_shapes=not args.no_shapes)
    print(json.dumps(report) if args.json else format_table(report))
    return 0
