"""Lazy public names for a package: ``name -> submodule`` resolved on first use (PEP 562).

Keeps ``import caffe_compat`` (and its subpackages) light: torch and the
heavier modules load only when a name that needs them is touched.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict


def lazy_getattr(package: str, api: Dict[str, str], namespace: dict) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package`` that imports ``package.<api[name]>`` on demand."""

    def __getattr__(name: str):
        mod = api.get(name)
        if mod is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{mod}"), name)
        namespace[name] = value  # cache: the next lookup is a plain global
        return value

    return __getattr__
