"""Caffe's weight fillers (include/caffe/filler.hpp), drawing from torch's default generator.

Each filler writes into a float tensor in place; the formula it mirrors is in
its docstring.  Seed with ``torch.manual_seed`` for reproducible nets (the
draws are not Caffe's boost draws, so values differ from Caffe's; the
distributions and every deterministic value are Caffe's).
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import torch

from ..errors import UnsupportedParameter

_VARIANCE_NORMS = {0: "FAN_IN", 1: "FAN_OUT", 2: "AVERAGE"}


def _param(fp, name, default):
    # Works for protobuf messages (HasField-aware defaults) and simple objects.
    return getattr(fp, name, default) if fp is not None else default


def _no_sparse(kind: str, fp, where: str) -> None:
    # Only the gaussian filler knows `sparse`; Caffe CHECKs it is -1 elsewhere.
    if int(_param(fp, "sparse", -1)) != -1:
        raise UnsupportedParameter(f"{where}filler {kind!r} does not support sparse "
                                   f"(sparse: {_param(fp, 'sparse', -1)}); only 'gaussian' does")


def _fans(t: torch.Tensor):
    # filler.hpp: fan_in = count/shape(0); fan_out = count/shape(1), or count for a 1-d blob.
    count = t.numel()
    fan_in = count // t.shape[0]
    fan_out = count // t.shape[1] if t.dim() > 1 else count
    return fan_in, fan_out


def _norm_n(t: torch.Tensor, fp) -> float:
    fan_in, fan_out = _fans(t)
    norm = _VARIANCE_NORMS.get(int(_param(fp, "variance_norm", 0)), "FAN_IN")
    if norm == "AVERAGE":
        return (fan_in + fan_out) / 2.0
    if norm == "FAN_OUT":
        return float(fan_out)
    return float(fan_in)


def constant(t: torch.Tensor, fp, where: str = "") -> None:
    """ConstantFiller: x = value."""
    t.fill_(float(_param(fp, "value", 0.0)))
    _no_sparse("constant", fp, where)


def uniform(t: torch.Tensor, fp, where: str = "") -> None:
    """UniformFiller: x ~ U[min, max)."""
    t.uniform_(float(_param(fp, "min", 0.0)), float(_param(fp, "max", 1.0)))
    _no_sparse("uniform", fp, where)


def gaussian(t: torch.Tensor, fp, where: str = "") -> None:
    """GaussianFiller: x ~ N(mean, std); with sparse >= 0, x *= Bernoulli(sparse / shape(0))."""
    t.normal_(float(_param(fp, "mean", 0.0)), float(_param(fp, "std", 1.0)))
    sparse = int(_param(fp, "sparse", -1))
    if sparse < -1:
        raise UnsupportedParameter(f"{where}gaussian filler: sparse must be >= -1, got {sparse}")
    if sparse >= 0:
        if t.dim() < 1:
            raise UnsupportedParameter(f"{where}gaussian filler: sparse needs a blob with >= 1 axis")
        p = min(1.0, sparse / float(t.shape[0]))
        t.mul_(torch.bernoulli(torch.full_like(t, p)))


def positive_unitball(t: torch.Tensor, fp, where: str = "") -> None:
    """PositiveUnitballFiller: x ~ U[0,1), then each of the shape(0) rows divided by its sum."""
    t.uniform_(0.0, 1.0)
    rows = t.view(t.shape[0], -1)
    rows.div_(rows.sum(dim=1, keepdim=True))
    _no_sparse("positive_unitball", fp, where)


def xavier(t: torch.Tensor, fp, where: str = "") -> None:
    """XavierFiller: x ~ U[-sqrt(3/n), sqrt(3/n)), n = fan_in, fan_out or their mean (variance_norm)."""
    scale = math.sqrt(3.0 / _norm_n(t, fp))
    t.uniform_(-scale, scale)
    _no_sparse("xavier", fp, where)


def msra(t: torch.Tensor, fp, where: str = "") -> None:
    """MSRAFiller: x ~ N(0, sqrt(2/n)), n = fan_in, fan_out or their mean (variance_norm)."""
    t.normal_(0.0, math.sqrt(2.0 / _norm_n(t, fp)))
    _no_sparse("msra", fp, where)


def bilinear(t: torch.Tensor, fp, where: str = "") -> None:
    """BilinearFiller: f=ceil(K/2), c=(K-1)/(2f); w[y,x] = (1-|x/f-c|)(1-|y/f-c|) for every (n, c)."""
    if t.dim() != 4:
        raise UnsupportedParameter(f"{where}bilinear filler needs a 4-d blob, got shape {tuple(t.shape)}")
    k_h, k_w = t.shape[2], t.shape[3]
    if k_h != k_w:
        raise UnsupportedParameter(f"{where}bilinear filler needs a square kernel, got {k_h}x{k_w}")
    f = math.ceil(k_w / 2.0)
    # Caffe computes c in double, stores it as float, and does the rest in float.
    c = torch.tensor((k_w - 1) / (2.0 * f), dtype=torch.float32)
    ax = 1.0 - (torch.arange(k_w, dtype=torch.float32) / f - c).abs()
    t.copy_((ax[:, None] * ax[None, :]).expand(t.shape))
    _no_sparse("bilinear", fp, where)


FILLERS: Dict[str, Callable] = {
    "constant": constant, "uniform": uniform, "gaussian": gaussian,
    "positive_unitball": positive_unitball, "xavier": xavier, "msra": msra, "bilinear": bilinear,
}


def fill(t: torch.Tensor, fp, layer_name: str | None = None) -> torch.Tensor:
    """Fill ``t`` in place as Caffe's ``GetFiller(fp)->Fill`` would; returns ``t``.

    ``fp`` is a ``FillerParameter`` (its ``type`` defaults to "constant").
    """
    where = f"layer {layer_name!r}: " if layer_name else ""
    kind = str(_param(fp, "type", "constant"))
    fn = FILLERS.get(kind)
    if fn is None:
        raise UnsupportedParameter(f"{where}unknown filler type {kind!r}; "
                                   f"known: {', '.join(sorted(FILLERS))}")
    if t.numel() == 0:
        raise UnsupportedParameter(f"{where}filler {kind!r} on an empty blob of shape {tuple(t.shape)}")
    with torch.no_grad():
        try:
            fn(t, fp, where)
        except (RuntimeError, ValueError, OverflowError, ZeroDivisionError) as e:
            if isinstance(e, UnsupportedParameter):
                raise
            # torch's own refusals (std nan or < 0, min > max, ...) of values the prototxt gave
            msg = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UnsupportedParameter(f"{where}filler {kind!r}: {msg}") from None
    return t
