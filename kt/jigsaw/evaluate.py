"""Puzzle accuracy of a trained net on puzzles of held-out images."""
from __future__ import annotations

import os
from typing import Dict, Optional

import numpy as np
import torch

from ..puzzle import TILE
from .feed import _authors_shapes, _merge_module, check_perms_fit, feed_spec
from .merge import NTILES, DrawStream
from .source import PuzzleSource


@torch.no_grad()
def evaluate(net, source: PuzzleSource, *, puzzles: Optional[int] = None, device=None) -> Dict[str, float]:
    """Puzzle accuracy of ``net`` (TEST phase) on ``puzzles`` puzzles: image ``p % n`` in round ``p // n``.

    The order is fixed (no shuffle), so an evaluation is repeatable; the
    source's seed should differ from the training seed.
    """
    spec = feed_spec(net)
    check_perms_fit(len(source.perms), spec, getattr(net, "path", None) or "net")
    n = puzzles or len(source)
    was_training = net.training
    net.eval()
    dev = device or next((p.device for p in net.parameters()), torch.device("cpu"))
    b = int(net.blob_shapes[spec.data][0])  # loss layers fix the batch: pad the last one, count the real part
    correct = total = 0
    for start in range(0, n, b):
        real = min(n, start + b) - start
        keys = [((p % n) // len(source), (p % n) % len(source)) for p in range(start, start + b)]
        parts = [source.parts(i, e) for e, i in keys]
        label = torch.tensor([p.label for p in parts], dtype=torch.int64, device=dev)
        if spec.style == "tiles":
            tiles = np.stack([source.merged(p) for p in parts]).reshape(b, 3 * NTILES, TILE, TILE)
            out = net.forward_all(**{spec.data: torch.from_numpy(tiles).to(dev), spec.label: label})
        else:
            stream = DrawStream([v for p in parts for v in p.draws])
            _merge_module(net, spec.merge_layer)._rand = stream
            d0 = np.stack([p.tiles for p in parts]).reshape(b, -1, TILE, TILE)
            dr = np.stack([p.other for p in parts]).reshape(b, -1, TILE, TILE)
            out = net.forward_all(**{spec.data: torch.from_numpy(d0).to(dev),
                                     spec.other: torch.from_numpy(dr).to(dev), spec.label: label})
            stream.check_consumed()
        pred = out[spec.score].reshape(b, -1).argmax(dim=1)
        correct += int((pred[:real] == label[:real]).sum())
        total += real
    net.train(was_training)
    return {"accuracy": correct / max(total, 1), "puzzles": total, "chance": 1.0 / len(source.perms),
            "permutations": len(source.perms)}


def load_eval_net(model: str, *, batch_size: int = 50):
    """``PROTOTXT:WEIGHTS`` or a caffemodel written by ``train`` (its own layer list is the net)."""
    from caffe_compat.net import load_net

    if ":" in model and not os.path.exists(model):
        proto, weights = model.rsplit(":", 1)
    else:
        proto = weights = model
    shapes = _authors_shapes(proto, batch_size, "TEST")
    net = load_net(proto, weights=weights, phase="TEST", input_shapes=shapes)
    net.path = proto
    return net
