"""Entry-point groups: how ``caffekt.kt``, ``caffekt.converters`` (or any other
installed package) add to ``caffe_compat`` without ``caffe_compat`` importing them.

Groups (declared in ``setup.cfg``; rerun ``pip install -e .`` after editing):

- ``caffekt.commands``: ``name = module``; the module has ``HELP``, ``EXAMPLE``,
  ``add_arguments(parser)`` and ``run(args) -> int`` (see ``caffe_compat.cli``).
- ``caffekt.parity_backends``: ``name = module:function``; ``function(net, inputs)``
  returns ``{caffe blob name: array}`` after one forward pass (see ``caffe_compat.parity``).
- ``caffekt.data_feeders``: ``name = module:function``; ``function()`` calls
  ``caffe_compat.train.register_data_feeder`` (see ``caffe_compat.train.feeders``).
"""
from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Dict

COMMANDS_GROUP = "caffekt.commands"
PARITY_BACKENDS_GROUP = "caffekt.parity_backends"
DATA_FEEDERS_GROUP = "caffekt.data_feeders"


def registered(group: str) -> Dict[str, EntryPoint]:
    """name -> entry point of ``group``, sorted by name; the first of a name wins (a source
    checkout's stale egg-info can list a name twice)."""
    found: Dict[str, EntryPoint] = {}
    for ep in entry_points(group=group):
        found.setdefault(ep.name, ep)
    return dict(sorted(found.items()))
