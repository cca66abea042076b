"""Prototxt text: parse with located errors, fold the pooling dialects, write.

Parsing is ``google.protobuf.text_format`` (the same grammar as Caffe's
``ReadProtoFromTextFile``, ``src/caffe/util/io.cpp``), but every failure becomes
one ``TextFormatError`` naming the file, ``line:col``, the token found there
and what was expected; an unknown field also names its message type and, when
one is close, the field that was probably meant.

Two spellings of pooling's rounding are accepted: BVLC's ``round_mode:
CEIL|FLOOR`` and the fork dialect ``ceil_mode: true|false``.  Right after
parsing, ``ceil_mode`` is folded into ``round_mode`` (``ceil_mode: false`` ->
``FLOOR``) and cleared, so only BVLC's form is ever written.  Which layers said
either one explicitly is kept in ``TextInfo.pool_rounding`` (the prototxt wins
over a conflicting field 13 in a caffemodel).
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Dict, Iterator, Optional, Set, Tuple

from google.protobuf import text_format
from google.protobuf.message import Message

from .files import atomic_output
from .errors import TextFormatError
from .proto import caffe_pb2

KINDS = {"net": caffe_pb2.NetParameter, "solver": caffe_pb2.SolverParameter}

_RE_UNKNOWN_FIELD = re.compile(r'Message type "([\w.]+)" has no field named "([^"]+)"')
_RE_DUPLICATE = re.compile(r'Message type "([\w.]+)" should not have multiple "([^"]+)" fields')
_RE_UNKNOWN_ENUM = re.compile(r'Enum type "([\w.]+)" has no value named (\S+?)\.?$')
# text_format quotes the offending source line before its message: drop it.
_RE_QUOTED_LINE = re.compile(r"^'.*?': ", re.S)
# One lexical token of the text format: a (possibly unterminated) string,
# an identifier, a number, or any single other character.
_RE_TOKEN = re.compile(r""""(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?|[A-Za-z_][\w.]*|[-+]?\.?\d[\w.+-]*|\S""")


@dataclass
class TextInfo:
    """What a net's text said beyond the message itself.

    ``pool_rounding``: layer name -> ``round_mode`` value (0 CEIL, 1 FLOOR)
    for every pooling layer whose text set ``round_mode`` or ``ceil_mode``.
    ``dialects``: which of ``"round_mode"`` / ``"ceil_mode"`` occurred.
    """
    path: Optional[str] = None
    pool_rounding: Dict[str, int] = field(default_factory=dict)
    dialects: Set[str] = field(default_factory=set)


def _short_type(full_name: str) -> str:
    # caffekt.caffe.LayerParameter -> caffe.LayerParameter, as Caffe names it
    return full_name[len("caffekt."):] if full_name.startswith("caffekt.") else full_name


def _descriptor_by_name(full_name: str):
    try:
        return caffe_pb2.DESCRIPTOR.pool.FindMessageTypeByName(full_name)
    except KeyError:
        return None


def _token_at(text: str, line: int, column: int) -> Tuple[str, bool]:
    """The token at 1-based ``line:column`` and whether only comments follow it."""
    lines = text.splitlines()
    if line < 1 or line > len(lines):
        return "end of input", True
    src = lines[line - 1]
    i = max(column - 1, 0)
    if i >= len(src):
        tok = ""
    else:
        m = _RE_TOKEN.match(src, i)
        tok = m.group(0) if m else src[i]
    rest = "\n".join([src[i + len(tok):]] + lines[line:])
    return tok or "end of line", not re.sub(r"#[^\n]*", "", rest).strip()


def _explain(err: text_format.ParseError) -> Tuple[str, Optional[str]]:
    """Turn protobuf's message into (our message, the field name if unknown)."""
    raw = str(err)
    raw = re.sub(r"^\d+:\d+ : ", "", raw[:200]) + raw[200:]
    if raw.startswith("'") and "': " in raw:   # the quoted source line (split: no backtracking)
        raw = raw.split("': ", 1)[1]
    if len(raw) > 400:   # a huge unclosed string is quoted whole; the start says enough
        raw = raw[:400] + " ..."
    m = _RE_UNKNOWN_FIELD.search(raw)
    if m:
        msg_type, name = m.group(1), m.group(2)
        text = f"unknown field '{name}' in message {_short_type(msg_type)}"
        desc = _descriptor_by_name(msg_type)
        if desc is not None:
            close = difflib.get_close_matches(name, [f.name for f in desc.fields], n=1, cutoff=0.75)
            if close:
                text += f" (did you mean '{close[0]}'?)"
            else:
                text += "; expected a field of that message"
        return text, name
    m = _RE_UNKNOWN_ENUM.search(raw)
    if m:
        enum_type, value = m.group(1), m.group(2)
        try:
            names = [v.name for v in caffe_pb2.DESCRIPTOR.pool.FindEnumTypeByName(enum_type).values]
            expected = "expected one of " + ", ".join(names)
        except KeyError:
            expected = "expected a value of that enum"
        return f"unknown value {value} for enum {_short_type(enum_type)}; {expected}", None
    m = _RE_DUPLICATE.search(raw)
    if m:
        return (f"field '{m.group(2)}' given twice in message {_short_type(m.group(1))}; "
                "expected it at most once"), m.group(2)
    return raw.rstrip(".").replace('"caffekt.caffe.', '"caffe.'), None


def parse_text(text: str, message_type, path: Optional[str] = None) -> Message:
    """Parse ``text`` into a new ``message_type``; errors become ``TextFormatError``."""
    msg = message_type()
    if text.startswith("\ufeff"):  # a BOM is not part of the grammar
        text = text[1:]
    try:
        text_format.Parse(text, msg)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        what, _ = _explain(e)
        if len(what) > 400:   # an unclosed string is quoted whole
            what = what[:400] + " ..."
        if line is None:
            raise TextFormatError(f"cannot parse as {_short_type(msg.DESCRIPTOR.full_name)}: {what}",
                                  path) from None
        token, last = _token_at(text, line, col)
        token = token if len(token) <= 80 else token[:80] + "..."
        if last and what.startswith("Expected") and "found" not in what and " got " not in what:
            # text_format reports a premature end at the last token it read
            shown, token = f"{what}, found end of input after '{token}'", "end of input"
        else:
            shown = what if "found" in what else f"{what}, found '{token}'"
        raise TextFormatError(shown, path, line, col, token) from None
    return msg


def _pooling_params(net) -> Iterator[Tuple[str, Message]]:
    """(layer name, PoolingParameter) of every layer that carries one, V1 and V2."""
    for coll in (net.layer, net.layers):
        for lp in coll:
            if lp.HasField("pooling_param"):
                yield lp.name, lp.pooling_param


def fold_pool_dialect(net, path: Optional[str] = None, info: Optional[TextInfo] = None) -> TextInfo:
    """Move the fork's ``ceil_mode`` into BVLC's ``round_mode`` in place.

    Refuses a layer whose text says both and disagrees (which one would
    Caffe mean? BVLC would reject ``ceil_mode`` outright).
    """
    info = info if info is not None else TextInfo(path=path)
    P = caffe_pb2.PoolingParameter
    for name, pp in _pooling_params(net):
        has_round, has_ceil = pp.HasField("round_mode"), pp.HasField("ceil_mode")
        if has_ceil:
            info.dialects.add("ceil_mode")
            from_ceil = P.CEIL if pp.ceil_mode else P.FLOOR
            if has_round and pp.round_mode != from_ceil:
                raise TextFormatError(
                    f"layer '{name}': pooling_param says both ceil_mode: "
                    f"{str(pp.ceil_mode).lower()} and round_mode: {P.RoundMode.Name(pp.round_mode)}; "
                    "expected one of them (or agreeing values)", path)
            pp.round_mode = from_ceil
            pp.ClearField("ceil_mode")
        elif has_round:
            info.dialects.add("round_mode")
        if has_round or has_ceil:
            info.pool_rounding[name] = pp.round_mode
    return info


def _fold_solver(solver, path: Optional[str]) -> None:
    nets = [solver.net_param, solver.train_net_param, *solver.test_net_param]
    for n in nets:
        fold_pool_dialect(n, path)


def parse_net_text(text: str, path: Optional[str] = None) -> Tuple[Message, TextInfo]:
    """Parse a net prototxt (not upgraded) and fold the pooling dialect."""
    net = parse_text(text, caffe_pb2.NetParameter, path)
    return net, fold_pool_dialect(net, path)


def parse_solver_text(text: str, path: Optional[str] = None) -> Message:
    """Parse a solver prototxt (not upgraded); embedded nets get the dialect fold."""
    solver = parse_text(text, caffe_pb2.SolverParameter, path)
    _fold_solver(solver, path)
    return solver


def read_text_file(path: str) -> str:
    """The file's text; non-UTF-8 bytes are a ``TextFormatError`` at their line:col."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        col = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise TextFormatError(f"byte 0x{data[e.start]:02x} is not UTF-8 text; expected a text prototxt",
                              path, line, col, repr(data[e.start:e.start + 1])) from None


def format_text(msg: Message) -> str:
    """Caffe's text style (two-space indent, ``name: value``, ``name {``).

    Any ``ceil_mode`` still set (a message built by hand) is folded first, on
    a copy, so the output is always BVLC's dialect.
    """
    if isinstance(msg, caffe_pb2.NetParameter):
        if any(pp.HasField("ceil_mode") for _, pp in _pooling_params(msg)):
            msg = _copy(msg)
            fold_pool_dialect(msg)
    elif isinstance(msg, caffe_pb2.SolverParameter):
        msg = _copy(msg)
        _fold_solver(msg, None)
    return text_format.MessageToString(msg)


def _copy(msg: Message) -> Message:
    out = type(msg)()
    out.CopyFrom(msg)
    return out


def write_prototxt(msg: Message, path: str) -> None:
    """Write ``msg`` as text to ``path`` atomically."""
    data = format_text(msg).encode("utf-8")
    with atomic_output(path) as f:
        f.write(data)


__all__ = ["KINDS", "TextInfo", "parse_text", "parse_net_text", "parse_solver_text",
           "fold_pool_dialect", "read_text_file", "format_text", "write_prototxt"]
