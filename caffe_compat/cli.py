"""``caffekt``: the one console script, with subcommands.

Like ``tools/caffe.cpp`` it keeps a name -> command table.  Each command is a
pair of functions in the module that owns the work: ``add_arguments(parser)``
and ``run(args) -> int``.  Modules are imported only when their command runs,
so ``caffekt --help`` stays fast and ``caffe_compat`` does not import
``caffekt.kt`` or ``caffekt.converters`` at import time.

Exit codes: 0 ok, 1 a check failed, 2 bad input or usage (one line on
stderr naming the full subcommand, e.g. ``caffekt export onnx: error: ...``;
``--debug`` anywhere on the line shows the traceback instead).
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
    "demo": ("caffe_compat.commands.demo_cmd",
             "the paper's story end to end on scikit-image's photos, small, with a report folder"),
}


def register_command(name: str, module: str, help: str) -> None:
    """Add a subcommand (used by later parts of the toolkit)."""
    COMMANDS[name] = (module, help)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="caffekt",
        description="Caffe-compatible toolkit: read/write every Caffe file, run Caffe nets "
                    "in PyTorch with Caffe's numerics, and reproduce 'Boosting Self-Supervised "
                    "Learning via Knowledge Transfer'.")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def _full_command(args) -> str:
    """``caffekt export onnx``: the subcommand and its sub-subcommand, as the user typed them."""
    words = [args.command]
    for attr in ("what", "jigsaw_command", "kt_command"):
        v = getattr(args, attr, None)
        if isinstance(v, str) and v:
            words.append(v)
            break
    return "caffekt " + " ".join(words)


def _did_you_mean(argv: Sequence[str]) -> Optional[str]:
    """A one-line hint for a mistyped subcommand, or None."""
    import difflib

    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in COMMANDS:
        return None
    close = difflib.get_close_matches(first, list(COMMANDS), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return (f"caffekt: error: unknown command {first!r}{hint} "
            f"(commands: {', '.join(COMMANDS)})")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one subcommand.  Bad input: one line on stderr and exit 2, never a traceback
    (``--debug`` re-raises to show it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    hint = _did_you_mean(argv)
    if hint is not None:
        print(hint, file=sys.stderr)
        return EXIT_BAD_INPUT
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    where = _full_command(args)
    try:
        return int(mod.run(args) or 0)
    except BrokenPipeError:  # `caffekt inspect x | head`
        return EXIT_OK
    except KeyboardInterrupt:
        print(f"{where}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the CLI's one exit for every failure
        if debug:
            raise
        extra = "" if isinstance(e, (CaffeCompatError, OSError)) else \
            f" [{type(e).__name__}: an internal error; rerun with --debug for the traceback]"
        print(f"{where}: error: {_one_line(e)}{extra}", file=sys.stderr)
        return EXIT_BAD_INPUT


def _one_line(e: BaseException, limit: int = 2000) -> str:
    """The exception's message on one bounded line (a file's claims can make messages huge)."""
    try:
        text = str(e)
    except Exception:  # noqa: BLE001 - e.g. int->str over 4300 digits inside __str__
        text = type(e).__name__
    text = " ".join(text.split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit] + " ..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
