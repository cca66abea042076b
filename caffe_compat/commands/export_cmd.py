"""``caffekt export frcnn|onnx``: Fast R-CNN-ready caffemodels and checked ONNX files.

``frcnn``: maps a (self-supervised) source model onto a Fast R-CNN net
(``caffekt.converters.fast_rcnn``): tower extraction, ``--map`` renames,
Jigsaw-recipe fills, every blob checked against the target before writing.
``onnx``: exports a net + weights to ONNX and runs it in onnxruntime against
our module (``caffekt.converters.onnx_export``); exit 1 when they differ.
"""
from __future__ import annotations


def _pairs(items, flag):
    from ..errors import UnsupportedParameter
    out = {}
    for it in items or []:
        src, sep, dst = it.partition("=")
        if not sep or not src or not dst:
            raise UnsupportedParameter(f"{flag} {it!r}: expected SRC=DST")
        out[src] = dst
    return out


def _shapes(items):
    """``data=1,3,227,227`` -> {'data': (1, 3, 227, 227)}."""
    from ..errors import UnsupportedParameter
    out = {}
    for it in items or []:
        name, sep, dims = it.partition("=")
        try:
            out[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            sep = ""
        if not sep or not name:
            raise UnsupportedParameter(f"--input-shape {it!r}: expected BLOB=N,C,H,W")
    return out


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    f = sub.add_parser("frcnn", help="a caffemodel ready for Fast R-CNN fine-tuning")
    f.add_argument("--from", dest="source", required=True, metavar="SRC",
                   help="PROTOTXT:WEIGHTS or a weights file (.caffemodel/.safetensors/.pt)")
    f.add_argument("--target", required=True,
                   help="caffenet, vgg16 (built-in Fast R-CNN nets) or a Fast R-CNN prototxt")
    f.add_argument("-o", "--output", required=True, metavar="OUT.caffemodel")
    f.add_argument("--map", action="append", metavar="SRC=DST", help="source layer -> target layer")
    f.add_argument("--tower", type=int, help="tower of a multi-tower pretext model (default 1)")
    f.add_argument("--fc-std", type=float, default=0.001,
                   help="std of the Gaussian for new fc weights (Jigsaw recipe: 0.001)")
    f.add_argument("--fc-bias", type=float, default=0.1, help="constant for new fc biases (0.1)")
    f.add_argument("--fill", action="append", metavar="LAYER:FILLER[:ARG[:BIAS]]",
                   help="initialise a target layer this way (overrides copy and defaults)")
    f.add_argument("--conv-only", action="store_true",
                   help="copy convolutions only; every fc layer is initialised (the Jigsaw recipe)")
    f.add_argument("--phase", choices=("TRAIN", "TEST"), default="TRAIN",
                   help="phase in which the target prototxt is built")
    f.add_argument("--seed", type=int, default=0, help="seed of the fills")
    f.add_argument("--rescale", metavar="IMAGES",
                   help="Kraehenbuehl data-dependent rescaling on these images (not implemented yet)")
    f.add_argument("--deploy-out", metavar="PROTOTXT", help="also write the built-in target's test net")
    o = sub.add_parser("onnx", help="an ONNX file checked against our module in onnxruntime")
    o.add_argument("prototxt")
    o.add_argument("weights")
    o.add_argument("-o", "--output", required=True, metavar="OUT.onnx")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13; default 17)")
    o.add_argument("--input-shape", action="append", metavar="BLOB=N,C,H,W",
                   help="override an input's shape (the batch axis stays dynamic)")
    o.add_argument("--output-blob", action="append", metavar="BLOB",
                   help="expose this blob as an output (default: the net's outputs)")
    o.add_argument("--rtol", type=float, default=1e-5,
                   help="allowed max|onnx - ours| / max|ours| per output (1e-5)")
    o.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from ..errors import UnsupportedParameter
    if args.what == "onnx":
        from caffekt.converters.onnx_export import export_onnx_file
        rep = export_onnx_file(args.prototxt, args.weights, args.output, opset=args.opset,
                               input_shapes=_shapes(args.input_shape) or None,
                               outputs=args.output_blob, rtol=args.rtol, seed=args.seed)
        print(rep)
        return 0 if rep.ok else 1
    from caffekt.converters.fast_rcnn import export_frcnn
    from caffekt.converters.surgery import parse_reinit
    if args.rescale:
        raise UnsupportedParameter("--rescale: data-dependent rescaling is not implemented yet")
    rep = export_frcnn(args.source, args.target, args.output, mapping=_pairs(args.map, "--map"),
                       tower=args.tower, fc_std=args.fc_std, fc_bias=args.fc_bias,
                       fills=[parse_reinit(s) for s in args.fill or []], conv_only=args.conv_only,
                       seed=args.seed, phase=args.phase, deploy_out=args.deploy_out)
    print(rep)
    return 0
