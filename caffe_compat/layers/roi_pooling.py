"""ROIPooling: mirrors src/caffe/layers/roi_pooling_layer.cpp of the Fast R-CNN fork (rbgirshick/caffe-fast-rcnn).

For ROI r = [b, x1, y1, x2, y2] (input-image pixels): start/end = round(coord * spatial_scale)
(C round: half away from zero), roi_h = max(y2' - y1' + 1, 1) (same for w), bin = roi_h /
pooled_h (float32); bin ph covers rows [floor(ph*bin), ceil((ph+1)*bin)) + y1', clipped to
[0, H); top = max over the bin (first maximum in row-major order), 0 for an empty bin.

Params (roi_pooling_param): pooled_h, pooled_w (> 0), spatial_scale (1).  Arity: 2 bottoms,
features (N, C, H, W) and rois (R, 5) (or R x 5 x 1 x 1) -> 1 top (R, C, pooled_h, pooled_w).
No blobs.  Backward: each bin's gradient goes to its argmax element -- but, as the fork's
backward only visits rows y1'..y2' and columns x1'..x2', a malformed ROI (end < start,
forced to 1 x 1) gets none; nothing reaches the rois.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._grad import straight_through
from ._params import count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


def _c_round(v: torch.Tensor) -> torch.Tensor:
    # C's round(): half away from zero, evaluated in double as the C++ call promotes it.
    v = v.double()
    return (torch.sign(v) * torch.floor(v.abs() + 0.5)).long()


def _eager() -> bool:
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


@register("ROIPooling", bottoms=2, tops=1)
class ROIPooling(CaffeLayer):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.roi_pooling_param
        self.ph, self.pw = int(p.pooled_h), int(p.pooled_w)
        if self.ph <= 0 or self.pw <= 0:
            raise fail(self, f"pooled_h and pooled_w must be > 0 (got {self.ph}, {self.pw})")
        self.spatial_scale = float(p.spatial_scale)
        feat, rois = self.bottom_shapes
        if len(feat) != 4:
            raise shape_fail(self, f"bottom[0] must be (N, C, H, W); got {list(feat)}")
        if len(rois) < 1 or count(rois, 1) != 5:
            raise shape_fail(self, f"bottom[1] (rois) must be R x 5 [batch, x1, y1, x2, y2]; "
                                   f"got {list(rois)}")
        self.top_shapes = [(rois[0], feat[1], self.ph, self.pw)]

    def _bins(self, start, size, pooled: int, limit: int):
        # [lo, hi) per ROI and bin, in float32 like the fork's Dtype arithmetic.
        binsz = size.float() / float(pooled)
        k = torch.arange(pooled, dtype=torch.float32, device=start.device)
        lo = torch.floor(k[None, :] * binsz[:, None]).long() + start[:, None]
        hi = torch.ceil((k[None, :] + 1) * binsz[:, None]).long() + start[:, None]
        return lo.clamp(0, limit), hi.clamp(0, limit)

    def _column_bin_max(self, xd, bidx, ws, we):
        """(values, column indices) of the first maximum of x[b, c, h, ws_j:we_j] for every ROI and column bin."""
        N, C, H, W = xd.shape
        vals = [xd]
        args = [torch.arange(W, device=xd.device).expand(N, C, H, W)]
        step = 1
        while 2 * step <= W:
            v, a = vals[-1], args[-1]
            n = W - 2 * step + 1
            lv, rv = v[..., :n], v[..., step:step + n]
            left = lv >= rv
            pad = W - n
            vals.append(F.pad(torch.where(left, lv, rv), (0, pad), value=float("-inf")))
            args.append(F.pad(torch.where(left, a[..., :n], a[..., step:step + n]), (0, pad)))
            step *= 2
        table_v = torch.stack(vals)              # (K, N, C, H, W)
        table_a = torch.stack(args)
        length = (we - ws).clamp(min=1, max=W)   # empty bins read any window; they are zeroed later
        log2 = torch.tensor([max(n.bit_length() - 1, 0) for n in range(W + 1)], device=xd.device)
        k = log2[length]                         # (R, PW)
        lo = ws.clamp(0, W - 1)
        hi = (lo + length - (1 << k)).clamp(0, W - 1)
        b = bidx[:, None].expand_as(k)
        lv, la = table_v[k, b, :, :, lo], table_a[k, b, :, :, lo]     # (R, PW, C, H)
        rv, ra = table_v[k, b, :, :, hi], table_a[k, b, :, :, hi]
        left = lv >= rv
        val = torch.where(left, lv, rv).permute(0, 2, 3, 1)
        arg = torch.where(left, la, ra).permute(0, 2, 3, 1)
        return val, arg

    def forward(self, x, rois):
        N, C, H, W = x.shape
        r = rois.detach().reshape(rois.shape[0], 5)
        scaled = r[:, 1:].float() * torch.tensor(self.spatial_scale, dtype=torch.float32)
        x1, y1, x2, y2 = _c_round(scaled).unbind(1)
        bidx = r[:, 0].long()  # C++ int conversion truncates toward zero
        if _eager() and bool(((bidx < 0) | (bidx >= N)).any()):
            bad = int(((bidx < 0) | (bidx >= N)).nonzero()[0, 0])
            raise fail(self, f"roi {bad} has batch index {float(r[bad, 0])!r}, outside [0, {N})")
        rh = torch.clamp(y2 - y1 + 1, min=1)
        rw = torch.clamp(x2 - x1 + 1, min=1)
        hs, he = self._bins(y1, rh, self.ph, H)      # (R, PH)
        ws, we = self._bins(x1, rw, self.pw, W)      # (R, PW)
        hh = torch.arange(H, device=x.device)
        in_h = (hh[None, None, :] >= hs[:, :, None]) & (hh[None, None, :] < he[:, :, None])  # (R, PH, H)
        neg = torch.tensor(float("-inf"), dtype=x.dtype, device=x.device)
        # Max over each column bin, per row, from a sparse table over W of the shared feature map (no
        # per-ROI copy of it): a bin [ws, we) is the union of two power-of-two windows.  Ties keep the
        # left window, whose first maximum comes first, so this is the first maximum in the row.
        col_val, col_arg = self._column_bin_max(x.detach(), bidx, ws, we)   # (R, C, H, PW)
        arg_h, arg_w = [], []
        for i in range(self.ph):
            v, a = torch.where(in_h[:, i, None, :, None], col_val, neg).max(dim=2)  # (R, C, PW)
            arg_h.append(a)
            arg_w.append(torch.gather(col_arg, 2, a.unsqueeze(2)).squeeze(2))
        arg_h = torch.stack(arg_h, dim=2)        # (R, C, PH, PW)
        arg_w = torch.stack(arg_w, dim=2)
        R = rois.shape[0]
        flat = (arg_h * W + arg_w).reshape(R, C, -1)
        chan = torch.arange(C, device=x.device)[None, :, None]
        picked = x.reshape(N, C, H * W)[bidx[:, None, None], chan, flat].reshape(arg_h.shape)
        empty = ((he <= hs)[:, None, :, None] | (we <= ws)[:, None, None, :])
        value = torch.where(empty, torch.zeros_like(picked), picked)
        # The fork's backward visits only rows y1'..y2' and columns x1'..x2'.
        reach = (~empty) & (arg_h <= y2[:, None, None, None]) & (arg_w <= x2[:, None, None, None])
        return straight_through(value, picked * reach.to(picked.dtype))
