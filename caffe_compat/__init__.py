"""caffe_compat: Caffe's file formats and layer semantics, without pycaffe.

The public API is imported lazily (``import caffe_compat`` does not import
torch): formats -> layers -> net -> solver, each in its own module.
"""
from __future__ import annotations

from ._lazy import lazy_getattr

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    # errors
    "CaffeCompatError": "errors", "CaffeFormatError": "errors", "WireFormatError": "errors",
    "TextFormatError": "errors", "WrongFileKind": "errors", "BadPayload": "errors",
    "UpgradeError": "errors", "UnknownLayerType": "errors", "ShapeError": "errors",
    "UnsupportedParameter": "errors",
    # schema
    "caffe_pb2": "proto",
    # formats
    "read_prototxt": "io", "write_prototxt": "io", "read_net": "io", "read_solver": "io",
    "read_caffemodel": "io", "write_caffemodel": "io",
    "read_solverstate": "io", "write_solverstate": "io",
    "read_blobproto": "io", "write_blobproto": "io",
    "detect_kind": "io",
    "upgrade_net": "upgrade", "upgrade_solver": "upgrade",
    # nets
    "load_net": "net", "Net": "net",
    "copy_trained_layers": "weights", "save_caffemodel": "weights", "LoadReport": "weights",
    # training
    "Solver": "solver", "SolverSettings": "solver",
}

__all__ = sorted(_API)


__getattr__ = lazy_getattr(__name__, _API, globals())
