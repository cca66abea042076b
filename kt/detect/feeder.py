"""The fork's ``roi_data_layer.layer.RoIDataLayer`` as a data feeder of ``caffe_compat.train``.

``register(entries, num_classes, cfg)`` adds a feeder claiming every
bottomless ``Python`` layer with ``python_param { module:
'roi_data_layer.layer' layer: 'RoIDataLayer' }``; the layer's code is never
imported or run.  Tops by position as layer.py:76-104 names them: data,
rois, labels, and with BBOX_REG bbox_targets, bbox_loss_weights.  The
declared set-up shapes are the layer's (1 x 3 x 100 x 100, 1 x 5, 1, 1 x 4K;
layer.py:83-104); the net reshapes to each minibatch's real sizes.  Image
order: a permutation of the roidb, redrawn when fewer than IMS_PER_BATCH
images are left (layer.py:23-35, ``>=`` as there).  One RandomState seeded
with RNG_SEED (+ rank under torchrun) draws permutations, scales and ROI
samples, as the fork's single ``numpy.random`` stream does; its state and
the position are saved in snapshots, so a resumed run continues the stream.
"""
from __future__ import annotations

import ast
from typing import Dict, Sequence

import numpy as np
import torch

from caffe_compat.errors import UnsupportedParameter

from .minibatch import get_minibatch, next_indices

FEEDER_NAME = "fast-rcnn-roi-data"
TOP_ORDER = ("data", "rois", "labels", "bbox_targets", "bbox_loss_weights")


def is_roi_data_layer(lp) -> bool:
    p = lp.python_param
    return (lp.type == "Python" and not len(lp.bottom) and p.module == "roi_data_layer.layer"
            and p.layer == "RoIDataLayer")


def param_num_classes(lp, where: str):
    """``num_classes`` of param_str (a YAML/Python dict body such as ``'num_classes': 21``), read as a literal."""
    text = lp.python_param.param_str.strip()
    if not text:
        return None
    body = text if text.startswith("{") else "{" + text + "}"
    try:
        d = ast.literal_eval(body)
    except (ValueError, SyntaxError):
        try:
            import yaml
            d = yaml.safe_load(text)
        except Exception:   # noqa: BLE001 - any parse failure is the same bad param_str
            raise UnsupportedParameter(f"{where}: python_param.param_str {text!r} is not a dict literal") from None
    if not isinstance(d, dict) or "num_classes" not in d:
        return None
    return int(d["num_classes"])


class RoIFeeder:
    """Minibatches of the roidb for the net's RoIDataLayer tops."""

    def __init__(self, lp, ctx, entries: Sequence[dict], num_classes: int, cfg):
        self.tops = list(lp.top)
        n_tops = 5 if cfg["TRAIN"]["BBOX_REG"] else 3
        if len(self.tops) != n_tops:
            raise UnsupportedParameter(f"{ctx.where}: RoIDataLayer has {len(self.tops)} tops; with "
                                       f"TRAIN.BBOX_REG={cfg['TRAIN']['BBOX_REG']} it gives {n_tops} "
                                       f"({', '.join(TOP_ORDER[:n_tops])})")
        declared = param_num_classes(lp, ctx.where)
        if declared is not None and declared != num_classes:
            raise UnsupportedParameter(f"{ctx.where}: the net is for num_classes {declared} (param_str) but the "
                                       f"dataset's class list has {num_classes} (background included)")
        if not entries:
            raise UnsupportedParameter(f"{ctx.where}: the training roidb is empty")
        self.entries, self.num_classes, self.cfg = list(entries), int(num_classes), cfg
        self.seed = int(cfg["RNG_SEED"]) + int(ctx.rank)
        self.rng = np.random.RandomState(self.seed)
        self.perm, self.cur = None, 0

    def shapes(self) -> Dict[str, tuple]:
        k4 = 4 * self.num_classes
        shapes = [(1, 3, 100, 100), (1, 5), (1,), (1, k4), (1, k4)]
        return dict(zip(self.tops, shapes))

    def __call__(self) -> Dict[str, torch.Tensor]:
        ims = self.cfg["TRAIN"]["IMS_PER_BATCH"]
        inds, self.perm, self.cur = next_indices(self.perm, self.cur, len(self.entries), ims, self.rng)
        blobs = get_minibatch([self.entries[i] for i in inds], self.num_classes, self.cfg, self.rng)
        return {t: torch.from_numpy(np.ascontiguousarray(blobs[name]))
                for t, name in zip(self.tops, TOP_ORDER)}

    def state_dict(self) -> dict:
        name, keys, pos, has_gauss, gauss = self.rng.get_state()
        return {"rng": [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
                "perm": None if self.perm is None else self.perm.tolist(), "cur": int(self.cur),
                "size": len(self.entries)}

    def load_state_dict(self, d) -> None:
        if int(d.get("size", len(self.entries))) != len(self.entries):
            raise UnsupportedParameter(f"the saved RoIDataLayer position is for {d['size']} roidb entries, "
                                       f"this dataset has {len(self.entries)}")
        name, keys, pos, has_gauss, gauss = d["rng"]
        self.rng.set_state((name, np.asarray(keys, np.uint32), pos, has_gauss, gauss))
        self.perm = None if d["perm"] is None else np.asarray(d["perm"], np.int64)
        self.cur = int(d["cur"])


def register(entries: Sequence[dict], num_classes: int, cfg) -> None:
    """Make ``caffe_compat.train`` feed RoIDataLayer layers from ``entries`` (replaces an earlier registration)."""
    from caffe_compat.train import register_data_feeder
    register_data_feeder(FEEDER_NAME, is_roi_data_layer,
                         lambda lp, ctx: RoIFeeder(lp, ctx, entries, num_classes, cfg))


def unregister() -> None:
    from caffe_compat.train import DATA_FEEDERS
    DATA_FEEDERS[:] = [e for e in DATA_FEEDERS if e[0] != FEEDER_NAME]
