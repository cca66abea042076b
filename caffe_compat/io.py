"""Reading and writing every Caffe file: the public facade.

Text nets and solvers go through ``prototxt.py`` and are upgraded as Caffe's
``ReadNetParamsFromTextFileOrDie`` / ``ReadSolverParamsFromTextFileOrDie``
(src/caffe/util/upgrade_proto.cpp) do; binary files go through ``binary.py``
(mmap, zero-copy blobs) and caffemodels through the same upgrade, with each
layer's blobs following it.  ``detect_kind`` tells the kinds apart from the
bytes, so a caller asking for one kind and handed another gets
``WrongFileKind`` naming both instead of a confusing parse error.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import List, Optional, Tuple, Union

from . import binary
from .binary import (CaffeModel, LayerBlobs, SolverState, write_blobproto, write_caffemodel,  # noqa: F401
                     write_solverstate)
from .errors import WrongFileKind
from .prototxt import (TextInfo, parse_net_text, parse_solver_text, read_text_file,  # noqa: F401
                       write_prototxt)
from .proto import caffe_pb2
from .upgrade import resolve_snapshot_prefix, upgrade_net, upgrade_net_traced, upgrade_solver

PathOrText = Union[str, os.PathLike]

TEXT_KINDS = ("net", "solver")
BINARY_KINDS = ("caffemodel", "solverstate", "binaryproto", "datum")
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_EXT_HINT = {".caffemodel": "caffemodel", ".solverstate": "solverstate", ".binaryproto": "binaryproto"}
_SNIFF_BYTES = 1 << 16
_MAX_TEXT_BYTES = 64 << 20  # a prototxt is kilobytes; refuse to slurp a huge "text" file

# Control bytes never found in a prototxt but in nearly every protobuf binary
# (tags and lengths below 0x20).
_BINARY_BYTES = re.compile(rb"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_COMMENT_OR_STRING = re.compile(r"#[^\n]*|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'")
_NET_FIELDS = frozenset(caffe_pb2.NetParameter.DESCRIPTOR.fields_by_name)
_SOLVER_FIELDS = frozenset(caffe_pb2.SolverParameter.DESCRIPTOR.fields_by_name)


# ------------------------------------------------------------------ detection

def _looks_like_text(head: bytes) -> bool:
    if _BINARY_BYTES.search(head):
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:  # a multi-byte character cut by the sniff window is fine
        return e.start >= len(head) - 3 and e.reason.startswith("unexpected end")
    return True


def _top_level_names(text: str) -> List[str]:
    """Field names at brace depth 0 of a prototxt (comments and strings skipped)."""
    text = _COMMENT_OR_STRING.sub(" ", text)
    names, depth = [], 0
    # (?<!\w): a name starts after a non-word character; without it a long run of word
    # characters is rescanned from each of its positions (quadratic: 47 KB took seconds)
    for m in re.finditer(r"[{}]|(?<!\w)([A-Za-z_]\w*)\s*[:{]", text):
        tok = m.group(0)
        if tok == "{":
            depth += 1
        elif tok == "}":
            depth -= 1
        else:
            if depth == 0:
                names.append(m.group(1))
            if tok.endswith("{"):
                depth += 1
    return names


def text_kind(text: str) -> str:
    """``"net"``, ``"solver"`` or ``"unknown"`` from the top-level field names."""
    names = set(_top_level_names(text))
    net, solver = len(names & _NET_FIELDS), len(names & _SOLVER_FIELDS)
    if not net and not solver:
        return "unknown"
    if names <= _NET_FIELDS and net >= solver:
        return "net"
    if names <= _SOLVER_FIELDS:
        return "solver"
    return "net" if net > solver else "solver"


def _candidate_kinds(path: str) -> List[str]:
    """Every kind the bytes of ``path`` are consistent with, most likely first."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    if head.startswith(_HDF5_MAGIC):
        return ["hdf5"]
    if not head:
        return []
    if _looks_like_text(head):
        if size > _MAX_TEXT_BYTES:
            return []
        with open(path, "rb") as f:
            data = f.read()
        try:
            kind = text_kind(data.decode("utf-8"))
        except UnicodeDecodeError:
            return []
        return [] if kind == "unknown" else [kind]
    buf = binary.map_file(path)
    try:
        kinds = binary.sniff_binary(buf)
    finally:
        binary.release_map(buf)
    hint = _EXT_HINT.get(os.path.splitext(path)[1].lower())
    if hint in kinds:  # the extension breaks ties between consistent kinds
        kinds.remove(hint)
        kinds.insert(0, hint)
    return kinds


def detect_kind(path: PathOrText) -> str:
    """What Caffe file ``path`` holds, from its bytes (the extension only breaks ties).

    One of ``"net"``, ``"solver"`` (prototxt text), ``"caffemodel"``,
    ``"solverstate"``, ``"binaryproto"``, ``"datum"`` (binary protobuf),
    ``"hdf5"`` (``.caffemodel.h5`` / ``.solverstate.h5``) or ``"unknown"``
    (an empty file is ``"unknown"``).
    """
    kinds = _candidate_kinds(os.fspath(path))
    return kinds[0] if kinds else "unknown"


def _expect(path: str, wanted: Tuple[str, ...], allow_unknown_text: bool = False) -> str:
    """The kind of ``path`` among ``wanted``, else ``WrongFileKind`` naming both."""
    kinds = _candidate_kinds(path)
    for k in kinds:
        if k in wanted:
            return k
    if not kinds and allow_unknown_text:
        return "unknown"  # let the text parser say what is wrong, at its line:col
    want = " or ".join(wanted)
    if kinds:
        raise WrongFileKind(f"holds a {kinds[0]} file, expected a {want} file", path)
    raise WrongFileKind(f"is not a recognisable Caffe file (empty or foreign bytes); expected a {want} file",
                        path)


# ------------------------------------------------------------------ text

def _is_texty(path: str) -> bool:
    with open(path, "rb") as f:
        head = f.read(_SNIFF_BYTES)
    return bool(head) and _looks_like_text(head) and not head.startswith(_HDF5_MAGIC)


def _is_text_arg(s) -> bool:
    if isinstance(s, os.PathLike):
        return False
    if os.path.exists(s):
        return False
    return "\n" in s or "{" in s or ":" in s


def read_prototxt_info(path_or_text: PathOrText, kind: str = "net", upgrade: bool = True):
    """``read_prototxt`` plus what the text said beyond the message.

    Returns ``(message, TextInfo or None, applied upgrade step names)``;
    ``TextInfo`` (nets only) holds the pooling rounding each layer's text set.
    """
    if kind not in TEXT_KINDS:
        raise ValueError(f"kind must be one of {TEXT_KINDS}, got {kind!r}")
    if _is_text_arg(path_or_text):
        text, path = str(path_or_text), None
        found = text_kind(text)
    else:
        path = os.fspath(path_or_text)
        found = _expect(path, TEXT_KINDS, allow_unknown_text=_is_texty(path))
        text = read_text_file(path)
    if found != "unknown" and found != kind:
        raise WrongFileKind(f"holds a {found} prototxt, expected a {kind} prototxt", path)
    if kind == "net":
        msg, info = parse_net_text(text, path)
        applied = upgrade_net(msg, path)[1] if upgrade else []
        return msg, info, applied
    msg = parse_solver_text(text, path)
    applied = upgrade_solver(msg, path)[1] if upgrade else []
    return msg, None, applied


def read_prototxt(path_or_text: PathOrText, kind: str = "net", upgrade: bool = True):
    """A net (``NetParameter``) or solver (``SolverParameter``) from prototxt text.

    ``path_or_text``: a file path, or the text itself (anything holding a
    newline, ``{`` or ``:`` that is not an existing path).  ``upgrade``:
    apply Caffe's upgrade_proto steps (V0/V1 nets, input fields, solver_type).
    Raises ``TextFormatError`` (with line:col), ``WrongFileKind``, ``UpgradeError``.
    """
    return read_prototxt_info(path_or_text, kind, upgrade)[0]


def read_net(path: PathOrText):
    """The upgraded ``NetParameter`` of a prototxt or a caffemodel (detected).

    For a caffemodel the message carries the layer parameters but no blob
    data (use ``read_caffemodel`` for the weights).
    """
    path = os.fspath(path)
    kind = _expect(path, ("net", "caffemodel"), allow_unknown_text=_is_texty(path))
    if kind == "caffemodel":
        model = read_caffemodel(path, check_finite=False)
        net = model.net
        model.close()
        return net
    return read_prototxt(path, "net")


def read_solver(path: PathOrText):
    """A solver as ``caffe train --solver`` reads it (ReadSolverParamsFromTextFileOrDie).

    Upgraded (``solver_type`` -> ``type``), and ``snapshot_prefix`` filled in
    the way Caffe does (see ``upgrade.resolve_snapshot_prefix``).
    """
    path = os.fspath(path)
    solver = read_prototxt(path, "solver")
    resolve_snapshot_prefix(solver, path)
    return solver


# ------------------------------------------------------------------ binary

def upgrade_caffemodel(model: CaffeModel) -> List[str]:
    """Upgrade ``model.net`` in place, moving each layer's blobs along with it.

    Returns the applied step names (also stored as ``model.upgrades``).
    """
    _net, applied, origin = upgrade_net_traced(model.net, model.path)
    if applied:
        old, old_diffs = model.layers, model.diffs
        new = []
        for lp, src in zip(model.net.layer, origin):
            new.append(LayerBlobs(lp.name, lp.type, [] if src is None else old[src].blobs))
        model.layers = new
        if old_diffs is not None:
            model.diffs = [[] if src is None else old_diffs[src] for src in origin]
    model.upgrades = applied  # informational; CaffeModel has no such field yet
    return applied


def read_caffemodel(path: PathOrText, upgrade: bool = True, *, check_finite: Optional[bool] = None,
                    with_diff: bool = False) -> CaffeModel:
    """Weights of a caffemodel: ``.blobs`` (layer name -> arrays), ``.layers`` (file order).

    Arrays are zero-copy views of the mapped file where Caffe's packed layout
    allows.  ``.format`` is the version as found on disk (V0/V1/V2),
    ``.pooling_field13`` / ``.fork_fields`` the dialect evidence.  With
    ``upgrade`` (default) the net and layer list are in V2 form, and
    ``.upgrades`` lists the applied steps.
    """
    path = os.fspath(path)
    _expect(path, ("caffemodel",))
    model = binary.read_caffemodel(path, check_finite=check_finite, with_diff=with_diff)
    if upgrade:
        try:
            upgrade_caffemodel(model)
        except BaseException:
            model.close()
            raise
    else:
        model.upgrades = []
    return model


def read_solverstate(path: PathOrText) -> SolverState:
    """A ``.solverstate`` (binary proto form): iter, learned_net, history, current_step."""
    path = os.fspath(path)
    _expect(path, ("solverstate",))
    return binary.read_solverstate(path)


def read_blobproto(path: PathOrText):
    """A ``.binaryproto`` blob (mean file) as a float32 array shaped as Caffe would."""
    path = os.fspath(path)
    _expect(path, ("binaryproto",))
    return binary.read_blobproto(path)


def upgrade_file(src: str, dst: str) -> "tuple[str, list]":
    """Upgrade the file ``src`` into ``dst`` (same kind, written atomically); return
    ``(kind, applied step names)``.  What Caffe's upgrade_net_proto_text,
    upgrade_net_proto_binary and upgrade_solver_proto_text tools do (tools/*.cpp)."""
    kind = detect_kind(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the caller reports the steps instead
        if kind in ("net", "solver"):
            msg, _info, _ = read_prototxt_info(src, kind, upgrade=False)
            applied = (upgrade_net if kind == "net" else upgrade_solver)(msg, src)[1]
            write_prototxt(msg, dst)
        elif kind == "caffemodel":
            model = read_caffemodel(src, check_finite=False)
            with model:
                applied = list(model.upgrades)
                blobs = {}
                for lb in model.layers:
                    if lb.blobs:
                        if lb.name in blobs:
                            raise WrongFileKind(f"two layers named '{lb.name}' both carry blobs; "
                                                "expected unique names for layers with weights", src)
                        blobs[lb.name] = lb.blobs
                # blobs still in the net message would be written twice: the reader keeps none
                write_caffemodel(dst, model.net, blobs)
        else:
            raise WrongFileKind(f"holds a {kind} file; expected a prototxt net or solver, or a "
                                "caffemodel (other kinds have no legacy forms to upgrade)", src)
    return kind, applied


__all__ = ["upgrade_file", "detect_kind", "text_kind", "read_prototxt", "read_prototxt_info", "write_prototxt",
           "read_net", "read_solver", "read_caffemodel", "upgrade_caffemodel", "write_caffemodel",
           "read_solverstate", "write_solverstate", "read_blobproto", "write_blobproto",
           "CaffeModel", "SolverState", "TextInfo", "TEXT_KINDS", "BINARY_KINDS"]
