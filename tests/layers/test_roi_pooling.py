"""ROIPooling against a NumPy port of the Fast R-CNN fork's roi_pooling_layer.cpp CPU loops.

The oracle Caffe build has no ROIPooling, so the port (float32 bin arithmetic as the fork's
Dtype, C round()) is the reference, forward and backward.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter

FLT_MAX = float(np.finfo(np.float32).max)


def c_round(v):
    return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)


def ref_roi_pool(x, rois, PH, PW, scale, top_diff=None):
    N, C, H, W = x.shape
    R = rois.shape[0]
    top = np.full((R, C, PH, PW), -FLT_MAX, np.float32)
    arg = np.full((R, C, PH, PW), -1, np.int64)
    sc = np.float32(scale)
    geo = []
    for n in range(R):
        b = int(rois[n, 0])
        sw, sh, ew, eh = (c_round(float(np.float32(rois[n, k]) * sc)) for k in (1, 2, 3, 4))
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = np.float32(rh) / np.float32(PH), np.float32(rw) / np.float32(PW)
        geo.append((b, sw, sh, ew, eh, bh, bw))
        for c in range(C):
            for ph in range(PH):
                for pw in range(PW):
                    hs = int(math.floor(np.float32(ph) * bh))
                    ws = int(math.floor(np.float32(pw) * bw))
                    he = int(math.ceil(np.float32(ph + 1) * bh))
                    we = int(math.ceil(np.float32(pw + 1) * bw))
                    hs, he = min(max(hs + sh, 0), H), min(max(he + sh, 0), H)
                    ws, we = min(max(ws + sw, 0), W), min(max(we + sw, 0), W)
                    if he <= hs or we <= ws:
                        top[n, c, ph, pw] = 0
                        arg[n, c, ph, pw] = -1
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if x[b, c, h, w] > top[n, c, ph, pw]:
                                top[n, c, ph, pw] = x[b, c, h, w]
                                arg[n, c, ph, pw] = h * W + w
    gx = np.zeros(x.shape, np.float64)
    if top_diff is not None:  # Backward_cpu: only rows sh..eh and columns sw..ew are visited
        for n, (b, sw, sh, ew, eh, bh, bw) in enumerate(geo):
            for c in range(C):
                for h in range(max(0, sh), min(H, eh + 1)):
                    for w in range(max(0, sw), min(W, ew + 1)):
                        phs = min(max(int(math.floor(np.float32(h - sh) / bh)), 0), PH)
                        phe = min(max(int(math.ceil(np.float32(h - sh + 1) / bh)), 0), PH)
                        pws = min(max(int(math.floor(np.float32(w - sw) / bw)), 0), PW)
                        pwe = min(max(int(math.ceil(np.float32(w - sw + 1) / bw)), 0), PW)
                        for ph in range(phs, phe):
                            for pw in range(pws, pwe):
                                if arg[n, c, ph, pw] == h * W + w:
                                    gx[b, c, h, w] += top_diff[n, c, ph, pw]
    return top, arg, gx


ROIS = np.array([
    [0, 0, 0, 95, 63],          # most of image 0 at 1/16
    [1, 8, 24, 40, 56],         # image 1, exact .5 products: 8/16 = 0.5 -> 1 (half away from zero)
    [1, 40, 8, 39, 7],          # malformed (end < start): forced 1 x 1, no gradient
    [0, -30, -20, 20, 30],      # partly outside: clipped bins
    [1, 150, 100, 200, 180],    # wholly outside: empty bins -> 0
    [0, 23.9, 7.99, 24.1, 120], # rounding near .5
    [1.7, 0, 0, 10, 10],        # batch index truncates to 1
], np.float32)


@pytest.mark.parametrize("PH,PW,scale", [(3, 2, 0.0625), (2, 4, 0.0625), (5, 3, 0.125)])
def test_forward_backward_vs_fork_port(PH, PW, scale):
    x = np.round(randn((2, 3, 6, 7), seed=1) * 2) / 2      # half-integers: many ties
    layer = make_layer("ROIPooling", f"roi_pooling_param {{ pooled_h: {PH} pooled_w: {PW} spatial_scale: {scale} }}",
                       [x.shape, ROIS.shape], name="roi_pool5")
    assert layer.top_shapes == [(7, 3, PH, PW)]
    g = randn((7, 3, PH, PW), seed=2)
    want, _, want_gx = ref_roi_pool(x, ROIS, PH, PW, scale, g)
    (y,), (gx, grois), _ = run_layer(layer, [x, ROIS], [g])
    assert_close(y, want, rtol=0, atol=0)
    assert_close(gx, want_gx, atol=1e-5)
    assert not grois.any()


def test_rois_as_r5x1x1_and_fast_rcnn_shape():
    x = randn((1, 4, 9, 11), seed=3)
    rois = ROIS[:2].copy()
    rois[:, 0] = 0
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 6 pooled_w: 6 spatial_scale: 0.0625 }",
                       [x.shape, (2, 5, 1, 1)])
    (y,), _, _ = run_layer(layer, [x, rois.reshape(2, 5, 1, 1)])
    assert_close(y, ref_roi_pool(x, rois, 6, 6, 0.0625)[0], rtol=0, atol=0)


def test_bad_input():
    with pytest.raises(UnsupportedParameter, match="'roi5'.*ROIPooling.*pooled_h and pooled_w must be > 0"):
        make_layer("ROIPooling", "roi_pooling_param { pooled_w: 2 }", [(1, 2, 4, 4), (3, 5)], name="roi5")
    with pytest.raises(ShapeError, match="R x 5"):
        make_layer("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 2, 4, 4), (3, 4)], name="roi5")
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 2 pooled_w: 2 }", [(1, 2, 4, 4), (1, 5)], name="roi5")
    with pytest.raises(UnsupportedParameter, match="batch index 1.0, outside \\[0, 1\\)"):
        layer(torch.zeros(1, 2, 4, 4), torch.tensor([[1.0, 0, 0, 1, 1]]))


def test_wide_maps_many_rois_vs_fork_port():
    """Bins spanning many columns (the layer's power-of-two windows at several levels) and ties."""
    g = np.random.default_rng(5)
    x = np.round(randn((2, 3, 9, 37), seed=4) * 2) / 2
    r = 16
    x1 = g.uniform(-10, 70, r)
    y1 = g.uniform(-4, 14, r)
    rois = np.stack([g.integers(0, 2, r), x1, y1, x1 + g.uniform(0, 60, r), y1 + g.uniform(0, 16, r)],
                    1).astype(np.float32)
    layer = make_layer("ROIPooling", "roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.5 }",
                       [x.shape, rois.shape])
    gy = randn((r, 3, 3, 4), seed=6)
    want, _, want_gx = ref_roi_pool(x, rois, 3, 4, 0.5, gy)
    (y,), (gx, _), _ = run_layer(layer, [x, rois], [gy])
    assert_close(y, want, rtol=0, atol=0)
    assert_close(gx, want_gx, atol=1e-5)
