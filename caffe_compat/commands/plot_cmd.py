"""``caffekt plot LOG.csv -o curves.png``: loss and learning-rate curves of a ``caffekt train`` log
(``caffe_compat.plot.plot_log``)."""
from __future__ import annotations

from ..cli_options import add_output

HELP = "draw loss and learning-rate curves of a caffekt train log"
EXAMPLE = "caffekt plot snapshots/mynet_log.csv -o curves.png"


def add_arguments(parser) -> None:
    parser.add_argument("log", metavar="LOG.csv", help="a training log written by caffekt train")
    add_output(parser, "image to write (format from its extension)", required=True, metavar="PNG")
    parser.add_argument("--dpi", type=int, default=100)


def run(args) -> int:
    from ..plot import plot_log
    n = plot_log(args.log, args.output, args.dpi)
    print(f"wrote {args.output} ({n} bytes)")
    return 0
