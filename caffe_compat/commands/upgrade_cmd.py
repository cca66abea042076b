"""``caffekt upgrade IN -o OUT``: a V0/V1 net or an old solver rewritten in the current form.

Picks Caffe's upgrade_net_proto_text, upgrade_net_proto_binary or
upgrade_solver_proto_text behaviour from the input's bytes
(``caffe_compat.io.upgrade_file``): text stays text, a caffemodel stays a
caffemodel (with every layer's weights), a solver gets ``type`` instead of
``solver_type`` (its ``snapshot_prefix`` is left as written).  Prints the
applied steps; an input already current is rewritten unchanged.
"""
from __future__ import annotations

from ..cli_options import add_output

HELP = "rewrite a V0/V1 net (text or binary) or an old solver in the current form"
EXAMPLE = "caffekt upgrade old_deploy.prototxt -o deploy.prototxt"


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="prototxt net or solver, or caffemodel")
    add_output(parser, "where to write the upgraded file (same kind)", required=True, positional=True)


def run(args) -> int:
    from ..io import upgrade_file
    kind, applied = upgrade_file(args.input, args.output)
    if applied:
        print(f"{args.input}: {kind} upgraded ({', '.join(applied)}) -> {args.output}")
    else:
        print(f"{args.input}: {kind} already in the current format; rewritten to {args.output}")
    return 0
