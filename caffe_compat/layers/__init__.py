"""Caffe layer implementations, one file per Caffe type, in one registry.

Importing this package imports every public module in it (sorted by name, so
registration order is the same everywhere); each module registers its types.
"""
import importlib
import pkgutil

from ._registry import check_arity, get, known_types, register
from .base import CaffeLayer

__all__ = ["CaffeLayer", "register", "get", "known_types", "check_arity"]


def _import_all() -> None:
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")


_import_all()
