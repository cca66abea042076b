"""Writing files so that a reader never sees half of one: atomic output and small JSON documents.

Every writer of the toolkit goes through ``atomic_output`` (a temp file beside
the target, renamed onto it only when the write finished), so a killed run
leaves the old file or the new one, never a partial one.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import Iterator, Optional

from .errors import CaffeFormatError


@contextmanager
def atomic_output(path: str) -> Iterator:
    """A binary file object for a temp file beside ``path``, moved onto ``path`` on success.

    On any error the temp file is removed and ``path`` is untouched.  Unlike
    ``tempfile.mkstemp`` it keeps the usual umask-derived permissions.
    """
    d = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    for k in range(100):
        tmp = os.path.join(d, f".{base}.{os.getpid()}.{k}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:  # pragma: no cover - a hundred stale temp files
        raise FileExistsError(f"{path}: could not create a temp file beside it")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_json(path: str, doc, *, sort_keys: bool = False) -> None:
    """``doc`` as indented UTF-8 JSON at ``path``, atomically."""
    with atomic_output(path) as f:
        f.write(json.dumps(doc, indent=1, sort_keys=sort_keys).encode("utf-8"))


def read_json(path: str, what: str = "JSON document"):
    """The JSON document at ``path``; a typed error naming the file when it is not JSON."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CaffeFormatError(f"not a readable {what} ({e})", path) from None


def sniff_text(path: str) -> Optional[bool]:
    """Whether the file's first 4 KiB look like prototxt text (None: unreadable or empty)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if not head:
        return None
    control = sum(b < 9 or 13 < b < 32 for b in head)
    if control > len(head) // 100:
        return False
    text = head.decode("utf-8", errors="ignore")
    return any(w in text for w in ("layer", "name:", "input", "net:"))


__all__ = ["atomic_output", "write_json", "read_json", "sniff_text"]
