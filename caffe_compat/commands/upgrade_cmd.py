"""``caffekt upgrade IN OUT``: a V0/V1 net or an old solver rewritten in the current form.

Does what Caffe's ``upgrade_net_proto_text``, ``upgrade_net_proto_binary``
and ``upgrade_solver_proto_text`` tools do (tools/*.cpp), picking the one to
run from the input's bytes: text stays text, a caffemodel stays a caffemodel
(with every layer's weights), a solver gets ``type`` instead of
``solver_type`` (its ``snapshot_prefix`` is left as written, as that tool
leaves it).  Prints the applied steps; an input already current is rewritten
unchanged (again like Caffe's tools).  The output is written atomically.
"""
from __future__ import annotations

import warnings


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help="prototxt net or solver, or caffemodel")
    parser.add_argument("output", metavar="OUT", help="where to write the upgraded file (same kind)")


def upgrade_file(src: str, dst: str) -> "tuple[str, list]":
    """Upgrade ``src`` into ``dst``; return ``(kind, applied step names)``."""
    from ..errors import WrongFileKind
    from ..io import detect_kind, read_caffemodel, read_prototxt_info, write_caffemodel, write_prototxt
    from ..upgrade import upgrade_net, upgrade_solver

    kind = detect_kind(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the steps are printed instead
        if kind in ("net", "solver"):
            msg, _info, _ = read_prototxt_info(src, kind, upgrade=False)
            applied = (upgrade_net if kind == "net" else upgrade_solver)(msg, src)[1]
            write_prototxt(msg, dst)
        elif kind == "caffemodel":
            model = read_caffemodel(src, check_finite=False)
            with model:
                applied = list(model.upgrades)
                blobs = {}
                for lb in model.layers:
                    if lb.blobs:
                        if lb.name in blobs:
                            raise WrongFileKind(f"two layers named '{lb.name}' both carry blobs; "
                                                "expected unique names for layers with weights", src)
                        blobs[lb.name] = lb.blobs
                # blobs still in the net message would be written twice: the reader keeps none
                write_caffemodel(dst, model.net, blobs)
        else:
            raise WrongFileKind(f"holds a {kind} file; expected a prototxt net or solver, or a "
                                "caffemodel (other kinds have no legacy forms to upgrade)", src)
    return kind, applied


def run(args) -> int:
    kind, applied = upgrade_file(args.input, args.output)
    if applied:
        print(f"{args.input}: {kind} upgraded ({', '.join(applied)}) -> {args.output}")
    else:
        print(f"{args.input}: {kind} already in the current format; rewritten to {args.output}")
    return 0


__all__ = ["add_arguments", "run", "upgrade_file"]
