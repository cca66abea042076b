"""The real-Caffe oracle for tests, always in a subprocess (never imported here).

The oracle is a CPU pycaffe built by ``tools/build_caffe_oracle.sh``.  Its
Python is found from ``$CAFFEKT_ORACLE_PYTHON``, else the default build prefix
``${XDG_CACHE_HOME:-~/.cache}/caffekt/caffe-oracle/venv/bin/python``.  The
subprocess runner itself is ``caffe_compat.caffe_oracle`` (``caffekt parity
--backend caffe`` uses it too); this module adds the pytest policy.

Tests marked ``@pytest.mark.caffe`` call ``require_oracle()``: it skips when no
oracle is built, unless ``CAFFEKT_REQUIRE_ORACLE=1`` (set by CI), where a
missing oracle is a failure.

Facts about this oracle that tests must respect (it is the inisis fork of
BVLC Caffe): PoolingParameter field 13 is ``ceil_mode: bool`` (``caffe_run``
rewrites ``round_mode`` for it, see ``to_oracle_dialect``); there are no Clip,
Swish or Python layers.
"""
from __future__ import annotations

import os
import sys
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
import pytest

from caffe_compat import caffe_oracle as _co
from caffe_compat.caffe_oracle import OracleError, oracle_env, with_force_backward  # noqa: F401

# BVLC's round_mode -> the fork's ceil_mode (shared with `caffekt parity`).
to_oracle_dialect = _co.to_ceil_mode_text
oracle_prefix = _co.default_prefix


def oracle_python() -> Optional[str]:
    return _co.find_python()


def require_oracle() -> str:
    exe = oracle_python()
    if exe is None:
        msg = ("real Caffe oracle not built: run tools/build_caffe_oracle.sh "
               "(or set CAFFEKT_ORACLE_PYTHON)")
        if os.environ.get("CAFFEKT_REQUIRE_ORACLE") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return exe


def run_script(code: str, timeout: float = 300):
    """Run Python ``code`` with the oracle's interpreter; ``OracleError`` with its stderr tail."""
    return _co.run_code(require_oracle(), code, timeout=timeout)


def caffe_run(prototxt_text: str,
              params: Optional[Mapping[str, Sequence[np.ndarray]]] = None,
              inputs: Optional[Mapping[str, np.ndarray]] = None,
              top_diffs: Optional[Mapping[str, np.ndarray]] = None,
              phase: str = "TEST",
              weights_file: Optional[str] = None,
              save_caffemodel: Optional[str] = None,
              seed: Optional[int] = None,
              backward: bool = False,
              timeout: float = 300) -> Dict[str, Dict]:
    """One forward (and optional backward) pass in the real Caffe.

    See ``caffe_compat.caffe_oracle.run_net`` for the arguments.  Returns
    ``{"data": {blob: arr}, "diff": {blob: arr}, "params": {"layer/i": arr},
    "param_diffs": {"layer/i": arr}, "layer_params": {layer: [arr, ...]},
    "layer_param_diffs": {layer: [...]}, "layers": [(name, type), ...]}``.
    """
    return _co.run_net(require_oracle(), prototxt_text, params=params, inputs=inputs,
                       top_diffs=top_diffs, phase=phase, weights_file=weights_file,
                       save_caffemodel=save_caffemodel, seed=seed, backward=backward,
                       timeout=timeout)


if __name__ == "__main__":  # pragma: no cover - manual check
    print(oracle_python() or "no oracle", file=sys.stderr)
