"""The one CLI vocabulary of ``caffekt``: every command builds its options here.

- ``-o/--output PATH`` for what a command writes (file or folder); a second
  output is ``--<what>-output``.
- ``--quiet``: no progress bars (stage lines and results still print).
- ``--json``: the table a command prints, as one JSON document instead.
- ``[NAME=]N,C,H,W`` for an input shape; ``SRC=DST`` for a mapping.
- every parser has an ``example:`` epilog (``subcommand``).

Old spellings (``--out``, ``--no-progress``, ``--prototxt-out``, a positional
OUT) keep working as hidden aliases that print one ``note:`` line to stderr.
Bad input raises ``CaffeCompatError`` (reported once by ``caffe_compat.cli.main``)
or goes through argparse's own ``parser.error`` for malformed option values.
"""
from __future__ import annotations

import argparse
import sys
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import UnsupportedParameter

SUPPRESS = argparse.SUPPRESS


def subcommand(sub, name: str, help: str, example: str, **kw) -> argparse.ArgumentParser:
    """``sub.add_parser(name)`` with ``help`` as description and ``example`` as an epilog."""
    return sub.add_parser(name, help=help, description=help, epilog=epilog(example),
                          formatter_class=argparse.RawDescriptionHelpFormatter, **kw)


def epilog(example: str) -> str:
    lines = [l.strip() for l in example.strip().splitlines() if l.strip()]
    return "example:\n" + "\n".join(f"  {l}" for l in lines)


class _Alias(argparse.Action):
    """A hidden old spelling: stores into ``self.new_dest`` and notes the new one on stderr."""

    def __init__(self, option_strings, dest, new: str, new_dest: str, constant=None, **kw):
        self.new, self.new_dest, self.constant = new, new_dest, constant
        super().__init__(option_strings, dest, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        if values is None and self.nargs == "?":   # an absent optional positional
            return
        old = option_string or f"a positional {self.metavar}"
        print(f"{parser.prog}: note: {old} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.new_dest, self.constant if self.nargs == 0 else values)


def add_output(parser, help: str, required: bool = False, default=None, metavar: str = "PATH",
               old: Sequence[str] = (), positional: bool = False) -> None:
    """``-o/--output``; ``old``: former option spellings, ``positional``: it used to be
    a positional OUT (both kept as hidden aliases)."""
    group = parser.add_mutually_exclusive_group(required=required) if (old or positional) else parser
    group.add_argument("-o", "--output", default=default, metavar=metavar,
                       help=help + ("" if default is None else f" (default {default})")
                       + (" (required)" if required else ""),
                       required=required and group is parser)
    for flag in old:
        group.add_argument(flag, dest="output", action=_Alias, new="-o/--output", new_dest="output",
                           metavar=metavar, help=SUPPRESS)
    if positional:
        group.add_argument("old_output", nargs="?", metavar="OUT", action=_Alias, new="-o/--output",
                           new_dest="output", help=SUPPRESS)


def add_named_output(parser, what: str, help: str, old: Sequence[str] = (), metavar: str = "PATH") -> None:
    """A second output, ``--<what>-output`` (dest ``<what>_output``)."""
    dest = what.replace("-", "_") + "_output"
    parser.add_argument(f"--{what}-output", dest=dest, metavar=metavar, help=help)
    for flag in old:
        parser.add_argument(flag, dest=dest, action=_Alias, new=f"--{what}-output", new_dest=dest,
                            metavar=metavar, help=SUPPRESS)


def add_quiet(parser, old: bool = False) -> None:
    """``--quiet``: no progress bars; ``old``: also accept the former ``--no-progress``."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if old:
        parser.add_argument("--no-progress", dest="quiet", action=_Alias, nargs=0, constant=True,
                            new="--quiet", new_dest="quiet", help=SUPPRESS)


def add_json(parser) -> None:
    """``--json``: what the command prints as a table, as one JSON document instead."""
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of the table")


# ------------------------------------------------------------------- values

def input_shape(text: str) -> Tuple[str, Tuple[int, ...]]:
    """argparse type of ``--input-shape``: ``[NAME=]N,C,H,W`` -> (name or "", dims)."""
    name, _, dims = text.rpartition("=")
    try:
        shape = tuple(int(d) for d in dims.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected [NAME=]N,C,H,W with integer dims, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"dims must be positive integers, got {text!r}")
    return name, shape


def bgr(text: str) -> Tuple[float, float, float]:
    """argparse type of a ``B,G,R`` mean (``104,117,123``)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected B,G,R numbers, got {text!r}") from None
    if len(vals) != 3:
        raise argparse.ArgumentTypeError(f"expected three values B,G,R, got {len(vals)}")
    return vals


def net_input_names(prototxt: str) -> List[str]:
    """Input blobs of a net file: the tops of its Input layers, else of its bottomless layers."""
    from .io import read_net
    param = read_net(prototxt)
    return [t for lp in param.layer if lp.type == "Input" for t in lp.top] or \
        [t for lp in param.layer if not len(lp.bottom) for t in lp.top]


def resolve_input_shapes(pairs: Iterable[Tuple[str, Tuple[int, ...]]], prototxt: str
                         ) -> Optional[Dict[str, Tuple[int, ...]]]:
    """``--input-shape`` values -> {input blob: dims}; a NAME may be left out when the net has one input."""
    pairs = list(pairs or [])
    if not pairs:
        return None
    inputs = net_input_names(prototxt)
    out: Dict[str, Tuple[int, ...]] = {}
    for name, shape in pairs:
        if not name:
            if len(inputs) != 1:
                raise UnsupportedParameter(f"--input-shape without a NAME= needs a net with one input; "
                                           f"this one has {inputs}")
            name = inputs[0]
        if name not in inputs:
            raise UnsupportedParameter(f"--input-shape names {name!r}, not an input of the net; "
                                       f"its inputs are {inputs}")
        out[name] = shape
    return out


def parse_pairs(items: Optional[Iterable[str]], flag: str, what: str = "SRC=DST") -> Dict[str, str]:
    """``["a=b", ...]`` -> {"a": "b"}; a malformed item raises naming ``flag``."""
    out: Dict[str, str] = {}
    for it in items or []:
        src, sep, dst = it.partition("=")
        if not sep or not src or not dst:
            raise UnsupportedParameter(f"{flag} {it!r}: expected {what}")
        out[src] = dst
    return out
