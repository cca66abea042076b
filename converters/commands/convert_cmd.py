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

from caffe_compat.cli_options import add_named_output, add_output, parse_pairs

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
    parser.add_argument("--caffe-mean", default="104,117,123", help="B,G,R means (104,117,123)")
    parser.add_argument("--caffe-scale", type=float, default=1.0)
    parser.add_argument("--torchvision", choices=("vgg16",), help="write torchvision state_dict keys")


def run(args) -> int:
    import torch

    from caffekt.converters import convert as C
    from caffekt.converters import surgery as S
    from caffe_compat.errors import UnsupportedParameter

    ws = C.read_weights(args.input)
    if args.rename:
        ws = S.rename_layers(ws, parse_pairs(args.rename, "--rename", "OLD=NEW"))
    if args.drop:
        ws = S.drop_layers(ws, args.drop)
    if args.reinit:
        torch.manual_seed(args.seed)
        ws = S.reinit_layers(ws, [S.parse_reinit(s) for s in args.reinit])
    prototxt = args.prototxt
    if args.fold_bn:
        if not prototxt:
            raise UnsupportedParameter("--fold-bn needs --prototxt (which layers follow which)")
        from caffe_compat.io import read_net
        from caffe_compat.prototxt import write_prototxt
        net, ws, folded = S.fold_batchnorm(read_net(prototxt), ws)
        for conv, bn, sc in folded:
            print(f"folded {bn}{' + ' + sc if sc else ''} into {conv}")
        if args.prototxt_output:
            write_prototxt(net, args.prototxt_output)
            prototxt = args.prototxt_output
        else:
            prototxt = None  # the original net no longer matches the weights
    if args.fold_preprocessing:
        lw = ws.get(args.fold_preprocessing)
        if lw is None:
            raise UnsupportedParameter(f"--fold-preprocessing: no weight layer {args.fold_preprocessing!r}")
        try:
            mean = [float(v) for v in args.caffe_mean.split(",")]
        except ValueError:
            raise UnsupportedParameter(f"--caffe-mean {args.caffe_mean!r}: expected B,G,R") from None
        w, b = S.fold_input_preprocessing(lw.blobs[0], lw.blobs[1], mean, args.caffe_scale)
        lw.blobs = [w, b]
    if args.torchvision:
        if args.output.lower().endswith(".caffemodel"):
            raise UnsupportedParameter("--torchvision writes torchvision keys: use a .safetensors or .pt output")
        sd = C.to_torchvision_vgg16(ws)
        _write_state_dict(args.output, sd)
        print(f"wrote {args.output}: {len(sd)} torchvision vgg16 tensors")
        return 0
    n = C.write_weights(args.output, ws, prototxt)
    print(f"wrote {args.output} ({n} bytes): {len(ws)} weight layers, "
          f"{sum(len(lw.blobs) for lw in ws)} blobs")
    return 0


def _write_state_dict(path, sd) -> None:
    import torch

    from caffe_compat.binary import atomic_output
    if path.lower().endswith(".safetensors"):
        from safetensors.numpy import save
        data = save(dict(sd))
        with atomic_output(path) as f:
            f.write(data)
    else:
        with atomic_output(path) as f:
            torch.save({k: torch.from_numpy(v.copy()) for k, v in sd.items()}, f)
