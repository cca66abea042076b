"""The layering of the code: caffe_compat (formats -> layers -> net -> solver -> train) never reaches up
into caffekt.kt / caffekt.converters, and no two modules import each other, directly or in a ring.

Imports are read from the source (module level and inside functions alike), so a lazy import counts.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, Set

from conftest import REPO

# installed package name -> folder in the repository
PACKAGES = {"caffe_compat": "caffe_compat", "caffekt.kt": "kt", "caffekt.converters": "converters"}


def _modules() -> Dict[str, str]:
    """module name -> file, for every module of the three packages."""
    out = {}
    for pkg, folder in PACKAGES.items():
        root = os.path.join(REPO, folder)
        for dirpath, _dirs, files in os.walk(root):
            for f in files:
                if not f.endswith(".py") or f.endswith("_pb2.py"):
                    continue
                rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                out[".".join([pkg] + rel)] = os.path.join(dirpath, f)
    return out


def _imports(name: str, path: str, known: Set[str]) -> Set[str]:
    """The known modules ``name`` imports (``from .x import y`` counts y when it is a module)."""
    is_pkg = path.endswith("__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    found = set()

    def add(mod: str) -> None:
        while mod and mod not in known:
            mod = mod.rpartition(".")[0]
        if mod and mod != name:
            found.add(mod)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                add(a.name)
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level:
                parent = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(parent + ([mod] if mod else []))
            for a in node.names:
                full = f"{mod}.{a.name}"
                add(full if full in known else mod)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                node.value.startswith("caffekt.") and node.value.count(".") >= 1 and " " not in node.value:
            add(node.value)   # importlib.import_module("caffekt.kt.x") and the like
    return found


def _graph():
    mods = _modules()
    known = set(mods)
    return {m: _imports(m, p, known) for m, p in mods.items()}


def test_caffe_compat_never_imports_caffekt():
    g = _graph()
    up = sorted(f"{m} -> {t}" for m, ts in g.items() if m.startswith("caffe_compat")
                for t in ts if t.startswith("caffekt"))
    assert not up, "caffe_compat reaches up into caffekt:\n" + "\n".join(up)


def test_no_import_circles():
    g = _graph()
    # a package's __init__ re-exporting its own submodules is not a circle with them
    edges = {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in g.items()}
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if t.startswith(m + "."):
                continue
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_graph_sees_known_edges():
    g = _graph()   # the scan itself must work, or the two tests above prove nothing
    assert "caffe_compat.files" in g["caffe_compat.binary.caffemodel"]
    assert "caffe_compat.data.jps" in g["caffe_compat.train.feeders"]
    assert "caffe_compat.train" in g["caffekt.kt.jigsaw.train"]
