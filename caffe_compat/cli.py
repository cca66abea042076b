"""``caffekt``: the one console script, with subcommands.

Like ``tools/caffe.cpp`` it keeps a name -> command table, but the table is
the ``caffekt.commands`` entry-point group (``setup.cfg``): ``caffe_compat``
registers its own commands there and ``caffekt.kt`` / ``caffekt.converters``
register theirs, so this package never imports the packages built on it.
A command module has ``HELP`` (one line), ``EXAMPLE`` (shown by ``--help``),
``add_arguments(parser)`` built from ``caffe_compat.cli_options`` and
``run(args) -> int``; ``ALIAS_OF = "kt jigsaw"`` marks a former spelling,
kept working, hidden from the listing, noted on stderr.

Exit codes: 0 ok, 1 a check failed, 2 bad input or usage.  Bad input is
reported here, once, on one line naming the full subcommand (``caffekt
export onnx: error: ...``): commands raise ``CaffeCompatError`` rather than
print; ``--debug`` anywhere on the line shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Dict, Optional, Sequence, Tuple

from .cli_options import epilog
from .errors import CaffeCompatError
from .plugins import COMMANDS_GROUP, registered

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT = 0, 1, 2

EXAMPLE = """caffekt inspect deploy.prototxt
caffekt COMMAND --help"""


def commands() -> Dict[str, Tuple[str, object]]:
    """name -> (module name, module) of every registered subcommand."""
    out = {}
    for name, ep in registered(COMMANDS_GROUP).items():
        out[name] = (ep.value, ep.load())
    return out


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (the usage itself is one ``--help`` away)."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="caffekt",
        description="Caffe-compatible toolkit: read/write every Caffe file, run Caffe nets "
                    "in PyTorch with Caffe's numerics, and reproduce 'Boosting Self-Supervised "
                    "Learning via Knowledge Transfer'.",
        epilog=epilog(EXAMPLE), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an error instead of one line")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    found = commands()
    if not found:
        parser.error(f"no subcommands registered in the {COMMANDS_GROUP} entry-point group: "
                     "install the package (pip install -e .)")
    for name, (_module, mod) in found.items():
        alias_of = getattr(mod, "ALIAS_OF", None)
        kw = {} if alias_of else {"help": mod.HELP}   # no help=: left out of the listing
        p = sub.add_parser(name, description=mod.HELP, epilog=epilog(mod.EXAMPLE),
                           formatter_class=argparse.RawDescriptionHelpFormatter, **kw)
        mod.add_arguments(p)
        p.set_defaults(_module=_module, _alias_of=alias_of)
    return parser


def _full_command(args) -> str:
    """``caffekt export onnx``: the subcommand and its sub-subcommand, as the user typed them."""
    words = [args.command]
    for attr in ("what", "jigsaw_command", "kt_command", "detect_command"):
        v = getattr(args, attr, None)
        if isinstance(v, str) and v:
            words.append(v)
            break
    return "caffekt " + " ".join(words)


def _did_you_mean(argv: Sequence[str]) -> Optional[str]:
    """A one-line hint for a mistyped subcommand, or None."""
    import difflib

    names = list(registered(COMMANDS_GROUP))
    first = next((a for a in argv if not a.startswith("-")), None)
    if first is None or first in names:
        return None
    close = difflib.get_close_matches(first, names, n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"caffekt: error: unknown command {first!r}{hint} (commands: {', '.join(names)})"


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
    if args._alias_of:
        print(f"caffekt {args.command}: note: this is now 'caffekt {args._alias_of}'; "
              "the old spelling still works", file=sys.stderr)
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
