"""Fast R-CNN options (lib/fast_rcnn/config.py), read from JSON or the fork's YAML files.

Keys and defaults are the fork's (``TRAIN.SCALES`` ... ``RNG_SEED``), so its
``experiments/cfgs/*.yml`` load as they are (``!!python/tuple`` is read as a
list; nothing in the file is executed).  As ``_merge_a_into_b``
(config.py:145-171) does, an unknown key or a value of another type is an
error.  One addition: a ``SOLVER`` section whose fields replace those of the
solver prototxt (the paper's schedule ships this way, ``configs/``).
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any, Dict, Mapping, Optional

from caffe_compat.errors import CaffeFormatError, UnsupportedParameter

CONFIG_DIR = os.path.join(os.path.dirname(__file__), "configs")

# lib/fast_rcnn/config.py:34-125 (the Python defaults, not a yml's)
DEFAULTS: Dict[str, Any] = {
    "TRAIN": {
        "SCALES": [600], "MAX_SIZE": 1000, "IMS_PER_BATCH": 2, "BATCH_SIZE": 128,
        "FG_FRACTION": 0.25, "FG_THRESH": 0.5, "BG_THRESH_HI": 0.5, "BG_THRESH_LO": 0.1,
        "USE_FLIPPED": True, "BBOX_REG": True, "BBOX_THRESH": 0.5, "SNAPSHOT_ITERS": 10000,
        "SNAPSHOT_INFIX": "", "USE_PREFETCH": False,
    },
    "TEST": {"SCALES": [600], "MAX_SIZE": 1000, "NMS": 0.3, "SVM": False, "BBOX_REG": True,
             # test_net's constants (lib/fast_rcnn/test.py:253, 255)
             "MAX_PER_IMAGE": 100, "MAX_PER_SET_FACTOR": 40},
    "DEDUP_BOXES": 1.0 / 16.0,
    "PIXEL_MEANS": [102.9801, 115.9465, 122.7717],   # BGR
    "RNG_SEED": 3,
    "EPS": 1e-14,
    "EXP_DIR": "default",
    "SOLVER": {},
}


def _kind(v):
    if isinstance(v, bool):
        return bool
    if isinstance(v, (int, float)):
        return float
    if isinstance(v, (list, tuple)):
        return list
    return type(v)


def _merge(src: Mapping, dst: Dict, path: str, where: str) -> None:
    for k, v in src.items():
        if str(k).startswith("_"):
            continue   # "_comment" and the like
        key = f"{path}{k}"
        if k not in dst:
            raise UnsupportedParameter(f"{where}: {key} is not a Fast R-CNN config key "
                                       f"(known here: {', '.join(sorted(dst))})")
        if k == "SOLVER":
            if not isinstance(v, Mapping):
                raise UnsupportedParameter(f"{where}: SOLVER must be a mapping of solver fields")
            dst[k] = dict(v)
        elif isinstance(dst[k], dict):
            if not isinstance(v, Mapping):
                raise UnsupportedParameter(f"{where}: {key} must be a mapping")
            _merge(v, dst[k], key + ".", where)
        else:
            if _kind(v) is not _kind(dst[k]):
                raise UnsupportedParameter(f"{where}: type mismatch for {key}: "
                                           f"{type(v).__name__} vs. {type(dst[k]).__name__}")
            dst[k] = list(v) if isinstance(v, (list, tuple)) else v


def _yaml(path: str):
    try:
        import yaml
    except ImportError:
        raise UnsupportedParameter(f"{path}: reading YAML needs PyYAML (pip install pyyaml), "
                                   "or give the same keys as JSON") from None

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("tag:yaml.org,2002:python/tuple",
                           lambda loader, node: loader.construct_sequence(node))
    try:
        with open(path, encoding="utf-8") as f:
            return yaml.load(f, Loader=Loader) or {}
    except yaml.YAMLError as e:
        raise CaffeFormatError(f"not a valid YAML config: {e}", path) from None


def shipped(name: str) -> Optional[str]:
    """Path of a config shipped in ``configs/`` by name (with or without .json), or None."""
    for cand in (name, name + ".json"):
        p = os.path.join(CONFIG_DIR, cand)
        if os.path.isfile(p):
            return p
    return None


def load(path: Optional[str] = None, overrides: Optional[Mapping] = None) -> Dict[str, Any]:
    """DEFAULTS merged with the file (a path or a shipped name) and then ``overrides``."""
    cfg = copy.deepcopy(DEFAULTS)
    if path:
        real = path if os.path.isfile(path) else shipped(path)
        if real is None:
            raise CaffeFormatError("config file not found (nor a shipped config of that name: "
                                   f"{', '.join(sorted(os.listdir(CONFIG_DIR)))})", path)
        if real.endswith((".yml", ".yaml")):
            data = _yaml(real)
        else:
            try:
                with open(real, encoding="utf-8") as f:
                    data = json.load(f)
            except json.JSONDecodeError as e:
                raise CaffeFormatError(f"not valid JSON: {e}", real) from None
        if not isinstance(data, Mapping):
            raise CaffeFormatError("a config must be a mapping of keys", real)
        _merge(data, cfg, "", real)
    if overrides:
        _merge(overrides, cfg, "", "config overrides")
    _check(cfg)
    return cfg


def _check(cfg) -> None:
    t = cfg["TRAIN"]
    if not t["SCALES"] or not cfg["TEST"]["SCALES"]:
        raise UnsupportedParameter("TRAIN.SCALES and TEST.SCALES must name at least one scale")
    if t["IMS_PER_BATCH"] <= 0 or t["BATCH_SIZE"] % t["IMS_PER_BATCH"]:
        # minibatch.py:22-24
        raise UnsupportedParameter(f"TRAIN.IMS_PER_BATCH ({t['IMS_PER_BATCH']}) must divide "
                                   f"TRAIN.BATCH_SIZE ({t['BATCH_SIZE']})")
    if len(cfg["PIXEL_MEANS"]) != 3:
        raise UnsupportedParameter("PIXEL_MEANS must be three values (B, G, R)")
