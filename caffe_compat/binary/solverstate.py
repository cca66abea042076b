"""solverstate files (SolverState: iter, learned_net, history, current_step)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from .. import wire
from ..errors import WireFormatError
from ..wire import LEN, VARINT
from .blobs import CAFFE_MAX_BYTES, _blob_out, map_file, _write_blobs_file, decode_blob


# ================================================================ solverstate

SS_ITER, SS_LEARNED_NET, SS_HISTORY, SS_CURRENT_STEP = 1, 2, 3, 4


@dataclass
class SolverState:
    """``SolverState`` (caffe.proto): iteration, weights file, per-param history, lr step."""

    iter: int = 0
    learned_net: str = ""
    history: List[np.ndarray] = field(default_factory=list)
    current_step: int = 0


def parse_solverstate(buf, path: Optional[str] = None) -> SolverState:
    """Decode a binary SolverState; ``history`` arrays may be read-only views of ``buf``."""
    st = SolverState()
    for number, wt, a, b, tag_at in wire.iter_fields(buf, 0, len(buf), path):
        expect = {SS_ITER: VARINT, SS_CURRENT_STEP: VARINT, SS_LEARNED_NET: LEN, SS_HISTORY: LEN}.get(number)
        if expect is None:
            continue  # unknown field: skipped, as protobuf does
        if wt != expect:
            raise WireFormatError(f"SolverState field {number} has wire type {wt}; expected {expect}",
                                  path, f"byte {tag_at}")
        if number == SS_ITER:
            st.iter = wire.as_int32(a)
        elif number == SS_CURRENT_STEP:
            st.current_step = wire.as_int32(a)
        elif number == SS_LEARNED_NET:
            st.learned_net = wire.read_string(buf, a, b)
        else:
            st.history.append(decode_blob(buf, a, b, path, f"history blob {len(st.history)}").data)
    return st


def read_solverstate(path: str) -> SolverState:
    """Read a ``.solverstate`` written by Caffe's SGD-family solvers (binary proto form)."""
    return parse_solverstate(map_file(path), path)


def write_solverstate(path: str, state: SolverState, *, max_bytes: int = CAFFE_MAX_BYTES) -> int:
    """Write ``state`` atomically; all four fields are written, as Caffe's snapshot sets them all."""
    pieces: list = [wire.field_varint(SS_ITER, state.iter),
                    wire.field_bytes(SS_LEARNED_NET, state.learned_net.encode("utf-8"))]
    pieces += [(SS_HISTORY, _blob_out(h, f"history blob {i}")) for i, h in enumerate(state.history)]
    pieces.append(wire.field_varint(SS_CURRENT_STEP, state.current_step))
    return _write_blobs_file(path, pieces, max_bytes)
