"""The one registry of Caffe layer types (cf. Caffe's layer_factory.hpp).

Keys are the exact, case-sensitive prototxt ``type`` strings.  Registering a
type twice is an error; asking for an unknown type raises ``UnknownLayerType``
listing the known types and the closest match.

Users add their own implementation the same way the built-in layers do::

    from caffe_compat.layers import CaffeLayer, register

    @register("MyLayer", bottoms=1, tops=1)
    class MyLayer(CaffeLayer):
        def __init__(self, lp, bottom_shapes, phase):
            super().__init__(lp, bottom_shapes, phase)
            self.top_shapes = [bottom_shapes[0]]
        def forward(self, x):
            return x * 2
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Optional, Tuple, Union

from ..errors import UnknownLayerType, UnsupportedParameter

Arity = Union[int, Tuple[int, Optional[int]], None]

_REGISTRY: Dict[str, type] = {}

# Types Caffe itself can run only through embedded Python; refused with a hint.
_REFUSED = {
    "Python": "Python layers run arbitrary code from the model file and are refused; "
              "register an implementation with caffe_compat.layers.register(...) instead",
}


def register(type_name: str, bottoms: Arity = 1, tops: Arity = 1,
             replace: bool = False) -> Callable[[type], type]:
    """Class decorator: make ``cls`` the implementation of Caffe type ``type_name``.

    ``bottoms``/``tops``: an exact count, a ``(min, max)`` pair (``max`` may be
    ``None``), or ``None`` for any number -- checked in one place
    (``check_arity``), as Caffe's ``Layer::CheckBlobCounts`` does.
    ``replace=True`` lets a user override a built-in type deliberately.
    """

    def deco(cls: type) -> type:
        if type_name in _REGISTRY and not replace:
            raise ValueError(f"Caffe layer type {type_name!r} is already registered "
                             f"({_REGISTRY[type_name].__module__}.{_REGISTRY[type_name].__name__}); "
                             f"pass replace=True to override it")
        cls.caffe_type = type_name
        cls.bottom_arity = bottoms
        cls.top_arity = tops
        _REGISTRY[type_name] = cls
        return cls

    return deco


def get(type_name: str, layer_name: str | None = None) -> type:
    """The implementation class for ``type_name``; ``UnknownLayerType`` if none."""
    try:
        return _REGISTRY[type_name]
    except KeyError:
        pass
    where = f"layer {layer_name!r}: " if layer_name else ""
    if type_name in _REFUSED:
        raise UnknownLayerType(f"{where}type {type_name!r}: {_REFUSED[type_name]}")
    close = difflib.get_close_matches(type_name, list(_REGISTRY), n=1, cutoff=0.5)
    if not close:  # case slips ("relu") are the common mistake
        close = [k for k in _REGISTRY if k.lower() == type_name.lower()][:1]
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise UnknownLayerType(
        f"{where}unknown layer type {type_name!r}.{hint} "
        f"Known types: {', '.join(sorted(_REGISTRY))}")


def known_types() -> list[str]:
    return sorted(_REGISTRY)


def _fits(arity: Arity, n: int) -> bool:
    if arity is None:
        return True
    if isinstance(arity, int):
        return n == arity
    lo, hi = arity
    return n >= lo and (hi is None or n <= hi)


def _describe(arity: Arity) -> str:
    if isinstance(arity, int):
        return f"exactly {arity}"
    lo, hi = arity
    return f"at least {lo}" if hi is None else f"{lo} to {hi}"


def check_arity(cls: type, layer_name: str, n_bottom: int, n_top: int) -> None:
    """Raise ``UnsupportedParameter`` when a layer has the wrong number of blobs."""
    for what, arity, n in (("bottom", cls.bottom_arity, n_bottom), ("top", cls.top_arity, n_top)):
        if not _fits(arity, n):
            raise UnsupportedParameter(
                f"layer {layer_name!r} (type {cls.caffe_type}) takes {_describe(arity)} "
                f"{what} blob(s), got {n}")
