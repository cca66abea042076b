"""``caffekt export frcnn|onnx``: Fast R-CNN-ready caffemodels and checked ONNX files.

``frcnn``: maps a (self-supervised) source model onto a Fast R-CNN net
(``caffekt.converters.fast_rcnn``): tower extraction, ``--map`` renames,
Jigsaw-recipe fills, every blob checked against the target before writing.
``onnx``: exports a net + weights to ONNX and runs it in onnxruntime against
our module (``caffekt.converters.onnx_export``), both judged against our
module in float64; exit 1 when they differ.  Train/test nets export their
deploy form (``--keep-losses`` keeps losses and accuracy).
"""
from __future__ import annotations

from caffe_compat.cli_options import (add_named_output, add_output, input_shape, parse_pairs,
                                      resolve_input_shapes, subcommand)

HELP = "a Fast R-CNN-ready caffemodel (frcnn) or an onnxruntime-checked ONNX file (onnx)"
EXAMPLE = """caffekt export frcnn --from jps_alexnet.caffemodel --target caffenet -o frcnn_init.caffemodel
caffekt export onnx deploy.prototxt weights.caffemodel -o net.onnx"""


# Long on purpose: it only declares the options of two subcommands.
def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="what", metavar="WHAT")
    sub.required = True
    f = subcommand(sub, "frcnn", "a caffemodel ready for Fast R-CNN fine-tuning",
                   "caffekt export frcnn --from jps_alexnet.caffemodel --target caffenet --conv-only "
                   "-o frcnn_caffenet_init.caffemodel")
    f.add_argument("--from", dest="source", required=True, metavar="SRC",
                   help="PROTOTXT:WEIGHTS or a weights file (.caffemodel/.safetensors/.pt)")
    f.add_argument("--target", required=True,
                   help="caffenet, vgg16 (built-in Fast R-CNN nets) or a Fast R-CNN prototxt")
    add_output(f, "the Fast R-CNN caffemodel to write", required=True, metavar="OUT.caffemodel")
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
    f.add_argument("--rescale", metavar="DIR_OR_LIST",
                   help="Kraehenbuehl et al. data-dependent rescaling on these images (a folder, or a "
                        "file with one image path per line)")
    f.add_argument("--rescale-mode", choices=("within", "between", "both"), default="both",
                   help="within-layer (unit std, mean --rescale-bias), between-layer (equal "
                        "gradient/weight ratios) or both (default)")
    f.add_argument("--rescale-layers", default="initialised", metavar="initialised|all|L1,L2",
                   help="layers given unit std by within-layer rescaling (default: those initialised here)")
    f.add_argument("--rescale-bias", type=float, default=0.0,
                   help="mean of each channel after within-layer rescaling (0; magic_init's CLI uses 0.1)")
    f.add_argument("--rescale-size", type=int, metavar="S",
                   help="images are warped to SxS (default: the target's data size, else 224)")
    f.add_argument("--rescale-max-images", type=int, metavar="N", help="use the first N images only")
    f.add_argument("--rescale-iters", type=int, default=10,
                   help="most between-layer rounds (10; stops when all ratios are within 1%%)")
    add_named_output(f, "deploy", "also write the target's test net (for a prototxt target: its TEST phase "
                     "with data layers as one Input layer, losses dropped)", old=("--deploy-out",),
                     metavar="PROTOTXT")
    o = subcommand(sub, "onnx", "an ONNX file checked against our module in onnxruntime",
                   "caffekt export onnx deploy.prototxt weights.caffemodel -o net.onnx --input-shape data=1,3,227,227")
    o.add_argument("prototxt")
    o.add_argument("weights")
    add_output(o, "the ONNX file to write", required=True, metavar="OUT.onnx")
    o.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 13; default 17)")
    o.add_argument("--input-shape", action="append", type=input_shape, default=[], metavar="[NAME=]N,C,H,W",
                   help="override an input's shape (the batch axis stays dynamic; NAME may be left out when "
                        "the net has one input)")
    o.add_argument("--output-blob", action="append", metavar="BLOB",
                   help="expose this blob as an output (default: the net's outputs)")
    o.add_argument("--rtol", type=float, default=1e-5,
                   help="distance from our float64 run always allowed per output, relative to its "
                        "max |value| (1e-5)")
    o.add_argument("--slack", type=float, default=16.0,
                   help="onnxruntime may be this many times as far from float64 as our own "
                        "float32 run is (16)")
    o.add_argument("--keep-losses", action="store_true",
                   help="train/test nets: keep loss and accuracy layers (labels become inputs) "
                        "instead of exporting the deploy form")
    o.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    if args.what == "onnx":
        from caffekt.converters.onnx_export import export_onnx_file
        rep = export_onnx_file(args.prototxt, args.weights, args.output, opset=args.opset,
                               input_shapes=resolve_input_shapes(args.input_shape, args.prototxt),
                               outputs=args.output_blob, rtol=args.rtol, seed=args.seed,
                               slack=args.slack, keep_losses=args.keep_losses)
        print(rep)
        return 0 if rep.ok else 1
    from caffekt.converters.fast_rcnn import export_frcnn
    from caffekt.converters.surgery import parse_reinit
    opts = {"layers": args.rescale_layers, "beta": args.rescale_bias, "size": args.rescale_size,
            "max_images": args.rescale_max_images, "max_iter": args.rescale_iters}
    rep = export_frcnn(args.source, args.target, args.output, mapping=parse_pairs(args.map, "--map"),
                       tower=args.tower, fc_std=args.fc_std, fc_bias=args.fc_bias,
                       fills=[parse_reinit(s) for s in args.fill or []], conv_only=args.conv_only,
                       seed=args.seed, phase=args.phase, deploy_out=args.deploy_output,
                       rescale=args.rescale, rescale_mode=args.rescale_mode, rescale_options=opts)
    print(rep)
    return 0
