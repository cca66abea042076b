"""``caffekt convert IN -o OUT``: weights between caffemodel, safetensors and .pt, with surgery.

Formats come from the extensions; tensors are named ``<layer>.<blob index>``
(see ``caffekt.converters.convert``).  In order: ``--rename``, ``--drop``,
``--reinit``, ``--fold-bn`` (needs ``--prototxt``; writes the folded net with
``--prototxt-output``), ``--fold-preprocessing LAYER`` (Caffe BGR/mean input ->
torchvision RGB input), then ``--torchvision vgg16`` renames to torchvision's
keys (safetensors/.pt output only).  A caffemodel output is the full
``--prototxt`` net when given, else weights-only.
"""
from __future__ import annotations

from caffe_compat.cli_options import add_named_output, add_output, bgr, parse_pairs

HELP = "weights between caffemodel, safetensors and .pt; rename/drop/reinit/fold layers"
EXAMPLE = """caffekt convert model.caffemodel -o model.safetensors
caffekt convert model.caffemodel --rename fc8=fc8_new --drop loss -o out.caffemodel"""


def add_arguments(parser) -> None:
    parser.add_argument("input", metavar="IN", help=".caffemodel, .safetensors or .pt")
    add_output(parser, ".caffemodel, .safetensors or .pt", required=True, metavar="OUT", positional=True)
    parser.add_argument("--prototxt", help="net for a full caffemodel output / --fold-bn")
    parser.add_argument("--rename", action="append", metavar="OLD=NEW")
    parser.add_argument("--drop", action="append", metavar="LAYER")
    parser.add_argument("--reinit", action="append", metavar="LAYER:FILLER[:ARG[:BIAS]]",
                        help="e.g. fc7:gaussian:0.005 (bias 0) or fc8:gaussian:0.01:0.1")
    parser.add_argument("--seed", type=int, default=0, help="seed of --reinit")
    parser.add_argument("--fold-bn", action="store_true",
                        help="merge BatchNorm (+Scale) into the preceding Convolution/InnerProduct")
    add_named_output(parser, "prototxt", "write the --fold-bn net here", old=("--prototxt-out",),
                     metavar="PROTOTXT")
    parser.add_argument("--fold-preprocessing", metavar="LAYER",
                        help="fold Caffe's BGR 0-255 mean-subtracted input into this first conv, "
                             "for torchvision RGB 0-1 (mean .485,.456,.406, std .229,.224,.225) input")
    parser.add_argument("--caffe-mean", type=bgr, default="104,117,123", help="B,G,R means (104,117,123)")
    parser.add_argument("--caffe-scale", type=float, default=1.0)
    parser.add_argument("--torchvision", choices=("vgg16",), help="write torchvision state_dict keys")


def run(args) -> int:
    from caffekt.converters.surgery import convert_file

    res = convert_file(args.input, args.output, prototxt=args.prototxt,
                       rename=parse_pairs(args.rename, "--rename", "OLD=NEW"), drop=args.drop or (),
                       reinit=args.reinit or (), seed=args.seed, fold_bn=args.fold_bn,
                       prototxt_output=args.prototxt_output, fold_preprocessing=args.fold_preprocessing,
                       caffe_mean=args.caffe_mean, caffe_scale=args.caffe_scale, torchvision=args.torchvision)
    for conv, bn, sc in res.folded:
        print(f"folded {bn}{' + ' + sc if sc else ''} into {conv}")
    if res.weights is None:
        print(f"wrote {args.output}: {res.tensors} torchvision vgg16 tensors")
    else:
        print(f"wrote {args.output} ({res.nbytes} bytes): {len(res.weights)} weight layers, {res.tensors} blobs")
    return 0
