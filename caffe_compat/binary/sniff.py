"""Which binary Caffe file is this: the top-level field numbers say."""
from __future__ import annotations

from typing import Dict, List


from .. import wire
from ..errors import WireFormatError
from ..wire import I32, I64, LEN, VARINT


# ================================================================ sniffing

# message -> {field number: allowed wire types}; enough to tell Caffe's binary kinds apart
_SHAPES = {
    "caffemodel": {1: {LEN}, 2: {LEN}, 3: {LEN}, 4: {VARINT, LEN}, 5: {VARINT}, 6: {LEN},
                   7: {VARINT}, 8: {LEN}, 100: {LEN}},
    "solverstate": {1: {VARINT}, 2: {LEN}, 3: {LEN}, 4: {VARINT}},
    "binaryproto": {1: {VARINT}, 2: {VARINT}, 3: {VARINT}, 4: {VARINT}, 5: {LEN, I32},
                    6: {LEN, I32}, 7: {LEN}, 8: {LEN, I64}, 9: {LEN, I64}, 10: {VARINT}, 12: {LEN}},
    "datum": {1: {VARINT}, 2: {VARINT}, 3: {VARINT}, 4: {LEN}, 5: {VARINT}, 6: {LEN, I32},
              7: {VARINT}},
}
# fields that, when present, single a kind out
_DECISIVE = {"caffemodel": {100, 2}, "solverstate": {3}, "binaryproto": {5, 7, 8}, "datum": {4}}


def sniff_binary(buf, max_fields: int = 64) -> List[str]:
    """Which Caffe binary kinds the top-level fields of ``buf`` are consistent with.

    Looks at up to ``max_fields`` fields (no payload is decoded) and returns
    the consistent kinds, most likely first: a kind whose decisive field
    (caffemodel 100/2, solverstate 3, binaryproto 5/7/8, datum 4) is present
    ranks first.  ``[]`` means not a Caffe protobuf at all; several entries
    mean the bytes are ambiguous (an empty file is every kind).
    """
    seen: Dict[int, set] = {}
    try:
        for i, (number, wt, *_rest) in enumerate(wire.iter_fields(buf, 0, len(buf))):
            seen.setdefault(number, set()).add(wt)
            if i + 1 >= max_fields:
                break
    except WireFormatError:
        return []
    kinds = [k for k, shape in _SHAPES.items()
             if all(n in shape and wts <= shape[n] for n, wts in seen.items())]
    return sorted(kinds, key=lambda k: (not (_DECISIVE[k] & set(seen)), list(_SHAPES).index(k)))
