"""Pooling: mirrors src/caffe/layers/pooling_layer.cpp (+ pooling_layer.cu for STOCHASTIC) (BVLC/caffe 9b89154).

out = int(round((H + 2p - k) / float(s))) + 1 with round = ceil (CEIL, default) or floor,
then, only if pad_h or pad_w is non-zero, out -= 1 when (out - 1)*s >= H + p.
MAX: max over [o*s - p, o*s - p + k) clipped to the bottom, starting from -FLT_MAX (a window
wholly outside the bottom stays -FLT_MAX); the first maximum in row-major order wins
(strict >), and it alone receives the gradient.  AVE: sum over the clipped window divided by
pool_size = (min(hs + k, H + p) - hs) * (same for w) with hs = o*s - p: padding counts, the
ceil overhang does not; a window wholly past H + p divides 0 by a size <= 0 (NaN or -0), as
Caffe does.  STOCHASTIC (no padding): TEST = sum(x^2)/sum(x) over the window, TRAIN = one
element drawn with probability x/sum(x) (Caffe runs these on GPU only; its CPU code is
NOT_IMPLEMENTED).

Params (pooling_param): pool (MAX/AVE/STOCHASTIC), kernel_size or kernel_h+kernel_w, stride
or stride_h+stride_w, pad or pad_h+pad_w (pad < kernel; MAX/AVE only), global_pooling,
round_mode (the fork text field ceil_mode is honoured too).  Arity: 1 bottom (N, C, H, W);
1 top, or 2 for MAX (the second is the argmax index h*W + w as float, -1 for an empty
window).  No blobs.

Where PyTorch's own pooling provably agrees (same output size: PyTorch clips the last
window even without padding, and refuses pad > k/2) it is used as is; otherwise the bottom
is padded explicitly to exactly the windows Caffe visits.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ._params import ceil_rounding, fail, pool_geometry, pool_method_name, pooled_size, shape_fail
from ._registry import register
from .base import CaffeLayer

FLT_MAX = float(torch.finfo(torch.float32).max)
MAX, AVE, STOCHASTIC = 0, 1, 2


def _torch_pooled(size: int, k: int, s: int, p: int, ceil: bool) -> int:
    # ATen's pooling_output_shape: its clip applies in ceil mode whether or not there is padding.
    out = (size + 2 * p - k + (s - 1 if ceil else 0)) // s + 1
    if ceil and (out - 1) * s >= size + p:
        out -= 1
    return out


def _ave_divisors(size: int, k: int, s: int, p: int, out: int):
    # Caffe's pool_size factor along one axis (may be <= 0 for windows past H + p).
    res = []
    for o in range(out):
        start = o * s - p
        end = min(start + k, size + p)
        res.append(end - start)
    return res


@register("Pooling", bottoms=1, tops=(1, 2))
class Pooling(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        pp = lp.pooling_param
        shape = self.bottom_shapes[0]
        if len(shape) != 4:
            raise shape_fail(self, f"the bottom must have 4 axes (num, channels, height, width); "
                                   f"got {list(shape)}")
        self.method = int(pp.pool)
        if self.method not in (MAX, AVE, STOCHASTIC):
            raise fail(self, f"unknown pool method {pp.pool}")
        n_tops = len(lp.top) or 1
        if n_tops > 1 and self.method != MAX:
            raise fail(self, f"only MAX pooling has a second (mask) top; pool: "
                             f"{pool_method_name(self.method)} has {n_tops} tops")
        self.n_tops = n_tops
        self.pp = pp
        self._geometry(shape)

    def reshape(self, bottom_shapes) -> None:
        """PoolingLayer::Reshape: the output size and windows follow a bottom whose H, W changed."""
        shape = tuple(int(d) for d in bottom_shapes[0])
        if len(shape) != 4:
            raise shape_fail(self, f"the bottom must have 4 axes (num, channels, height, width); "
                                   f"got {list(shape)}")
        self.bottom_shapes = [shape]
        self._geometry(shape)

    def _geometry(self, shape) -> None:
        pp, n_tops = self.pp, self.n_tops
        N, C, H, W = shape
        self.kernel, self.stride, self.pad = pool_geometry(self, pp, H, W)
        self.ceil = ceil_rounding(pp)
        pad_any = self.pad != [0, 0]
        self.out = [pooled_size(sz, k, s, p, self.ceil, pad_any)
                    for sz, k, s, p in zip((H, W), self.kernel, self.stride, self.pad)]
        if self.out[0] <= 0 or self.out[1] <= 0:
            raise shape_fail(self, f"pooled output {self.out} is empty (bottom {H}x{W}, kernel "
                                   f"{self.kernel}, stride {self.stride}, pad {self.pad})")
        self.top_shapes = [(N, C, self.out[0], self.out[1])] * n_tops
        self.in_hw = (H, W)
        # PyTorch agrees when its output size matches and it accepts the pad (p <= k/2).
        self.fast = self.method != STOCHASTIC and all(
            p <= k // 2 and _torch_pooled(sz, k, s, p, self.ceil) == o
            for sz, k, s, p, o in zip((H, W), self.kernel, self.stride, self.pad, self.out))
        # Explicit padding (left, right) per axis so that a VALID pool visits Caffe's windows;
        # a negative right pad crops rows no window reaches (FLOOR mode).
        p_h, p_w = (self.pad if self.method != STOCHASTIC else [0, 0])
        self.pads = (p_w, (self.out[1] - 1) * self.stride[1] + self.kernel[1] - p_w - W,
                     p_h, (self.out[0] - 1) * self.stride[0] + self.kernel[0] - p_h - H)
        if self.method == AVE and not self.fast:
            self._make_ave_factor()

    def _make_ave_factor(self) -> None:
        H, W = self.in_hw
        dh = _ave_divisors(H, self.kernel[0], self.stride[0], self.pad[0], self.out[0])
        dw = _ave_divisors(W, self.kernel[1], self.stride[1], self.pad[1], self.out[1])
        kk = float(self.kernel[0] * self.kernel[1])
        # avg_pool2d divides by k*k; rescale to Caffe's divisor (x/0 -> inf makes 0/0 NaN).
        fac = torch.tensor([[kk / (a * b) if a * b != 0 else math.inf for b in dw] for a in dh],
                           dtype=torch.float32)
        self.register_buffer("ave_factor", fac, persistent=False)

    def plain_ceil_agrees(self) -> bool:
        """Whether ceil((size + 2p - k) / s) + 1 without PyTorch's last-window rule (what ONNX's
        ``ceil_mode`` computes) gives Caffe's output size; when not, exports pad explicitly."""
        if not (self.fast and self.ceil):
            return True
        return all(-(-(sz + 2 * p - k) // s) + 1 == o for sz, k, s, p, o in
                   zip(self.in_hw, self.kernel, self.stride, self.pad, self.out))

    def explicit_padding(self, on: bool) -> None:
        """Use the explicit-padding path (``on``) or the PyTorch pooling one again."""
        if on and self.fast:
            self._fast_saved = True
            self.fast = False
            if self.method == AVE and not hasattr(self, "ave_factor"):
                self._make_ave_factor()
        elif not on and getattr(self, "_fast_saved", False):
            self.fast = True
            self._fast_saved = False

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x):
        if self.method == MAX:
            return self._max(x)
        if self.method == AVE:
            return self._ave(x)
        return self._stochastic(x)

    def _max(self, x):
        k, s = self.kernel, self.stride
        want_mask = self.n_tops == 2
        if self.fast:
            res = F.max_pool2d(x, k, s, self.pad, ceil_mode=self.ceil, return_indices=want_mask)
            if not want_mask:
                return res
            y, idx = res
            return y, idx.to(x.dtype)
        xp = F.pad(x, self.pads, value=-FLT_MAX)
        res = F.max_pool2d(xp, k, s, 0, return_indices=want_mask)
        if not want_mask:
            return res
        y, idx = res
        # Indices count in the padded plane; map back, -1 where the max is padding.
        wp = xp.shape[-1]
        hh = torch.div(idx, wp, rounding_mode="floor") - self.pads[2]
        ww = idx % wp - self.pads[0]
        H, W = self.in_hw
        inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
        mask = torch.where(inside, hh * W + ww, torch.full_like(idx, -1))
        return y, mask.to(x.dtype)

    def _ave(self, x):
        k, s = self.kernel, self.stride
        if self.fast:
            return F.avg_pool2d(x, k, s, self.pad, ceil_mode=self.ceil, count_include_pad=True)
        xp = F.pad(x, self.pads, value=0.0)
        return F.avg_pool2d(xp, k, s, 0) * self.ave_factor

    def _stochastic(self, x):
        k, s = self.kernel, self.stride
        xp = F.pad(x, self.pads, value=0.0)
        if self.phase != "TRAIN":
            # Both averages divide by k*k, so their ratio is sum(x^2) / sum(x).
            return F.avg_pool2d(xp * xp, k, s, 0) / F.avg_pool2d(xp, k, s, 0)
        # TRAIN: threshold u*sum(x); the first element (row-major) whose running sum reaches it.
        N, C = x.shape[:2]
        oh, ow = self.out
        cols = F.unfold(xp.reshape(N * C, 1, *xp.shape[-2:]), k, stride=s)  # (NC, kk, L)
        csum = torch.cumsum(cols, dim=1)
        u = torch.rand((N * C, 1, oh * ow), dtype=x.dtype, device=x.device)
        thresh = u * csum[:, -1:, :]
        pick = (csum >= thresh).to(torch.int8).argmax(dim=1, keepdim=True)
        y = torch.gather(cols, 1, pick)
        return y.reshape(N, C, oh, ow)
