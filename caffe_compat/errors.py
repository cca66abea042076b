"""The exceptions of caffekt: one family, each naming where and what.

Everything raised for bad input derives from ``CaffeCompatError``; format
problems (files that cannot be read as what they claim to be) derive from
``CaffeFormatError``.  Messages always name the file (and line:col, layer or
byte offset where one is known) and say what was expected.
"""
from __future__ import annotations

from typing import Optional


class CaffeCompatError(Exception):
    """Base class of every error caffekt raises on bad input."""


class CaffeFormatError(CaffeCompatError, ValueError):
    """A file is not a well-formed Caffe file of the expected kind.

    ``path`` is the file (or ``None`` for in-memory bytes), ``where`` a
    human-readable location (``"line 3:7"``, ``"byte 1024"``, ``"layer conv1"``).
    """

    def __init__(self, message: str, path: str | None = None, where: str | None = None):
        self.path = path
        self.where = where
        self.detail = message
        prefix = ""
        if path is not None:
            prefix = f"{path}: "
        if where:
            prefix = f"{prefix}{where}: "
        super().__init__(prefix + message)


class WireFormatError(CaffeFormatError):
    """Protobuf binary that cannot be decoded (truncation, bad wire type, ...)."""


class TextFormatError(CaffeFormatError):
    """A prototxt that cannot be parsed; ``line``/``column`` are 1-based."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None,
                 column: int | None = None, token: str | None = None):
        self.line, self.column, self.token = line, column, token
        where = None
        if line is not None:
            where = f"line {line}:{column}" if column is not None else f"line {line}"
        super().__init__(message, path, where)


class WrongFileKind(CaffeFormatError):
    """A file holds a different kind of Caffe file than the caller asked for."""


class BadPayload(CaffeFormatError):
    """Blob data that decodes but is unusable: NaN/Inf, count mismatch, overflow."""


class UpgradeError(CaffeCompatError):
    """A legacy net or solver that Caffe's upgrade_proto would also refuse."""


class UnknownLayerType(CaffeCompatError, KeyError):
    """A layer ``type`` string that no implementation is registered for."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class ShapeError(CaffeCompatError, ValueError):
    """Blob shapes that do not fit, named by layer."""


class UnsupportedParameter(CaffeCompatError, ValueError):
    """A parameter value that the layer (or Caffe itself) does not accept."""


class MemoryBudgetExceeded(CaffeCompatError, MemoryError):
    """A size claimed by a file or a prototxt exceeds the memory budget (``caffe_compat.budget``)."""


class MissingFile(CaffeCompatError, FileNotFoundError):
    """A file that a command or another file names does not exist."""


def name_file(e: "CaffeCompatError", path: Optional[str]) -> "CaffeCompatError":
    """``e`` with its message starting with ``path`` (when it does not name it yet)."""
    msg = str(e)
    if path and path not in msg:
        e.args = (f"{path}: {msg}",) + tuple(e.args[1:])
    return e
