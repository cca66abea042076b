"""``caffekt jigsaw ...``: the former spelling of ``caffekt kt jigsaw ...``, kept working
(``caffe_compat.cli`` hides it from the listing and notes the new spelling on stderr)."""
from .jigsaw_cmd import EXAMPLE, HELP, add_arguments, run

ALIAS_OF = "kt jigsaw"

__all__ = ["ALIAS_OF", "EXAMPLE", "HELP", "add_arguments", "run"]
