"""Network definitions shipped with caffekt (installed as ``caffekt.prototxt``)."""
from __future__ import annotations

import os

HERE = os.path.dirname(os.path.abspath(__file__))


def path(name: str) -> str:
    """Absolute path of a shipped prototxt, by file name (``.prototxt`` optional)."""
    fn = name if name.endswith(".prototxt") else name + ".prototxt"
    p = os.path.join(HERE, fn)
    if not os.path.isfile(p):
        known = sorted(f for f in os.listdir(HERE) if f.endswith(".prototxt"))
        raise FileNotFoundError(f"no shipped prototxt {fn!r}; shipped: {', '.join(known)}")
    return p
