"""Caffe layer implementations, one file per Caffe type, in one registry.

Importing this package imports every public module in it (sorted by name, so
registration order is the same everywhere); each module registers its types.
"""
import importlib
import pkgutil

from ._registry import check_arity, get, known_types, register
from .base import CaffeLayer

__all__ = ["CaffeLayer", "register", "get", "known_types", "check_arity", "is_data_layer", "needs_labels"]


def _import_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()


def is_data_layer(lp) -> bool:
    """A data layer: its tops come from outside the graph (``input.NetInput`` types: Input, Data,
    ImageData, ...; a bottomless ``Python`` layer such as Fast R-CNN's roi_data_layer) or from
    fillers (DummyData).  A deploy form replaces them all by one Input layer."""
    if lp.type == "Python":
        return not len(lp.bottom)
    if lp.type == "DummyData":
        return True
    from .input import NetInput
    try:
        cls = get(lp.type, lp.name)
    except Exception:   # noqa: BLE001 - an unknown type is not a data layer; the net build reports it
        return False
    return isinstance(cls, type) and issubclass(cls, NetInput)


def needs_labels(lp) -> bool:
    """A loss layer (``is_loss``) or Accuracy: what a deploy net drops."""
    if lp.type == "Accuracy":
        return True
    try:
        cls = get(lp.type, lp.name)
    except Exception:   # noqa: BLE001 - unknown: Caffe's naming convention decides
        return lp.type.endswith("Loss")
    return bool(getattr(cls, "is_loss", False))
