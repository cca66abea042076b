"""The memory budget: sizes claimed by a file or a prototxt are checked before allocating.

A caffemodel, solverstate or prototxt can claim any size (``num_output:
2147483648``, a blob of 240 dims of 2^63-1); allocating first and failing
later costs gigabytes and seconds, or the process.  Every allocation whose
size comes from input goes through ``check_bytes`` first.  The budget is
``CAFFEKT_MEMORY_BUDGET`` (bytes, or with a K/M/G/T suffix), else half the
machine's memory, at most 16 GiB; ``set_budget`` changes it in-process.
Messages format sizes through ``fmt_count`` so that no unbounded number is
ever turned into text.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

from .errors import MemoryBudgetExceeded

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_override: Optional[int] = None


def _default() -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return int(min(16 << 30, max(1 << 30, total // 2)))


def parse_bytes(text: str) -> int:
    """``"512M"`` -> 536870912; plain integers are bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _SUFFIX and t[-1:] else ""
    num = t[: len(t) - len(unit)] if unit else t
    if not num or len(num) > 20:
        raise ValueError(f"not a size: {text[:40]!r}")
    return int(float(num) * _SUFFIX[unit])


def budget() -> int:
    """The budget in bytes now in force."""
    if _override is not None:
        return _override
    env = os.environ.get("CAFFEKT_MEMORY_BUDGET")
    if env:
        try:
            return parse_bytes(env)
        except ValueError:
            pass
    return _default()


def set_budget(nbytes: Optional[int]) -> None:
    """Set the budget for this process (None: back to the environment/default)."""
    global _override
    _override = None if nbytes is None else int(nbytes)


def fmt_count(n: int) -> str:
    """An integer as text, bounded: numbers past 10^15 are given as a power of ten."""
    n = int(n)
    if abs(n) < 10 ** 15:
        return str(n)
    return f"~10^{len(str(abs(n))) - 1}" if n.bit_length() < 4000 else f"~2^{n.bit_length()}"


def fmt_bytes(n: int) -> str:
    n = int(n)
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.3g} {unit}" if n < (1 << 60) else f"{fmt_count(n)} bytes"
    return f"{n} bytes"


def fmt_shape(shape: Sequence[int], most: int = 8) -> str:
    """A shape as text, bounded: at most ``most`` dims, each through ``fmt_count``."""
    dims = [fmt_count(d) for d in list(shape)[:most]]
    more = f", ... ({len(shape)} dims)" if len(shape) > most else ""
    return "[" + ", ".join(dims) + more + "]"


def blob_shape_string(shape: Sequence[int]) -> str:
    """Blob::shape_string (blob.hpp): ``"2 3 4 (24)"``, bounded like ``fmt_shape``."""
    return " ".join(fmt_count(d) for d in shape) + f" ({fmt_count(count_of(shape))})"


def count_of(shape: Sequence[int]) -> int:
    """The product of ``shape`` (exact Python int; callers check it before allocating)."""
    n = 1
    for d in shape:
        n *= int(d)
        if n > (1 << 200):   # already absurd; keep the integer small
            return n
    return n


def check_bytes(nbytes: int, what: str, path: Optional[str] = None) -> None:
    """Raise ``MemoryBudgetExceeded`` when ``nbytes`` is over the budget."""
    limit = budget()
    if nbytes > limit:
        where = f"{path}: " if path else ""
        raise MemoryBudgetExceeded(f"{where}{what} asks for {fmt_bytes(nbytes)}, over the memory budget "
                                   f"of {fmt_bytes(limit)} (set CAFFEKT_MEMORY_BUDGET to allow more)")


def check_shape(shape: Sequence[int], what: str, itemsize: int = 4, path: Optional[str] = None) -> None:
    """``check_bytes`` for an array of ``shape``; a negative dimension is refused too."""
    if any(int(d) < 0 for d in shape):
        from .errors import ShapeError
        where = f"{path}: " if path else ""
        raise ShapeError(f"{where}{what}: negative dimension in shape {fmt_shape(shape)}")
    check_bytes(count_of(shape) * itemsize, f"{what} of shape {fmt_shape(shape)}", path)


__all__ = ["budget", "set_budget", "check_bytes", "check_shape", "fmt_count", "fmt_bytes", "fmt_shape",
           "count_of", "parse_bytes"]
