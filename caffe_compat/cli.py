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
reported here, once, as ``caffekt CMD: error: ...``: commands raise
``CaffeCompatError`` rather than print.
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="caffekt",
        description="Caffe-compatible toolkit: read/write every Caffe file, run Caffe nets "
                    "in PyTorch with Caffe's numerics, and reproduce 'Boosting Self-Supervised "
                    "Learning via Knowledge Transfer'.",
        epilog=epilog(EXAMPLE), formatter_class=argparse.RawDescriptionHelpFormatter)
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


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    mod = importlib.import_module(args._module)
    if args._alias_of:
        print(f"caffekt {args.command}: note: this is now 'caffekt {args._alias_of}'; "
              "the old spelling still works", file=sys.stderr)
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
