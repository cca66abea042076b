"""``caffekt``: the one console script, with subcommands.

Like ``tools/caffe.cpp`` it keeps a name -> command table.  Each command is a
pair of functions in the module that owns the work: ``add_arguments(parser)``
and ``run(args) -> int``.  Modules are imported only when their command runs,
so ``caffekt --help`` stays fast and ``caffe_compat`` does not import
``caffekt.kt`` or ``caffekt.converters`` at import time.

Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from .errors import CaffeCompatError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# name -> (module, one-line help).  The module provides add_arguments/run.
COMMANDS = {
    "inspect": ("caffe_compat.commands.inspect_cmd",
                "describe a prototxt, caffemodel, solver, solverstate or mean file"),
    "upgrade": ("caffe_compat.commands.upgrade_cmd",
                "rewrite a V0/V1 net (text or binary) or an old solver in the current form"),
    "parity": ("caffe_compat.commands.parity_cmd",
               "compare every blob of a net against real Caffe, OpenCV dnn or our ONNX export"),
    "train": ("caffe_compat.commands.train_cmd",
              "train the net a solver prototxt names, with Caffe's solver semantics (torchrun for multi-process)"),
    "plot": ("caffe_compat.commands.plot_cmd", "draw loss and learning-rate curves of a caffekt train log"),
    "kt": ("caffe_compat.commands.kt_cmd",
           "knowledge transfer: features, hog, cluster, train-cc, probe, run CONFIG"),
    "export": ("caffe_compat.commands.export_cmd",
               "a Fast R-CNN-ready caffemodel (frcnn) or an onnxruntime-checked ONNX file (onnx)"),
    "convert": ("caffe_compat.commands.convert_cmd",
                "weights between caffemodel, safetensors and .pt; rename/drop/reinit/fold layers"),
    "jigsaw": ("caffe_compat.commands.jigsaw_cmd",
               "Jigsaw++ pretext task: permutation sets, stored images, train, eval"),
    "detect": ("caffekt.kt.detect.cli",
               "Fast R-CNN on a VOC-format folder: proposals, train (through caffekt train), test, eval (VOC07 mAP)"),
    "demo": ("caffe_compat.commands.demo_cmd",
             "the paper's story end to end on scikit-image's photos, small, with a report folder"),
}


def register_command(name: str, module: str, help: str) -> None:
    """Add a subcommand (used by later parts of the toolkit)."""
    COMMANDS[name] = (module, help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caffekt",
        description="Caffe-compatible toolkit: read/write every Caffe file, run Caffe nets "
                    "in PyTorch with Caffe's numerics, and reproduce 'Boosting Self-Supervised "
                    "Learning via Knowledge Transfer'.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    try:
        return int(mod.run(args) or 0)
    except CaffeCompatError as e:
        print(f"caffekt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        print(f"caffekt {args.command}: error: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except BrokenPipeError:  # `caffekt inspect x | head`
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
