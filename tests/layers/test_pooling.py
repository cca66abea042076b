"""Pooling against a float64 NumPy port of pooling_layer.cpp and against real Caffe."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import _oracle
from _util import assert_close, for_oracle, make_layer, oracle_net, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter

FLT_MAX = float(np.finfo(np.float32).max)


# ---- NumPy port of Caffe's CPU loops (pooling_layer.cpp Reshape/Forward_cpu/Backward_cpu) ----
def ref_shape(H, W, kh, kw, sh, sw, ph, pw, ceil=True):
    rnd = math.ceil if ceil else math.floor
    oh = int(rnd((H + 2 * ph - kh) / float(sh))) + 1
    ow = int(rnd((W + 2 * pw - kw) / float(sw))) + 1
    if ph or pw:
        if (oh - 1) * sh >= H + ph:
            oh -= 1
        if (ow - 1) * sw >= W + pw:
            ow -= 1
    return oh, ow


def ref_pool(x, k, s, p, method="MAX", ceil=True, top_diff=None):
    """Returns (top, mask, bottom_diff) exactly as the C++ loops compute them (float64)."""
    kh, kw = k
    sh, sw = s
    ph, pw = p
    N, C, H, W = x.shape
    oh, ow = ref_shape(H, W, kh, kw, sh, sw, ph, pw, ceil)
    top = np.zeros((N, C, oh, ow))
    mask = np.full((N, C, oh, ow), -1.0)
    gx = np.zeros(x.shape)
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    if method == "MAX":
                        hs, ws = i * sh - ph, j * sw - pw
                        he, we = min(hs + kh, H), min(ws + kw, W)
                        hs, ws = max(hs, 0), max(ws, 0)
                        best, arg = -FLT_MAX, -1
                        for h in range(hs, he):
                            for w in range(ws, we):
                                if x[n, c, h, w] > best:
                                    best, arg = x[n, c, h, w], h * W + w
                        top[n, c, i, j], mask[n, c, i, j] = best, arg
                        if top_diff is not None and arg >= 0:
                            gx[n, c, arg // W, arg % W] += top_diff[n, c, i, j]
                    else:
                        hs, ws = i * sh - ph, j * sw - pw
                        he, we = min(hs + kh, H + ph), min(ws + kw, W + pw)
                        size = (he - hs) * (we - ws)
                        hs, ws = max(hs, 0), max(ws, 0)
                        he, we = min(he, H), min(we, W)
                        acc = 0.0
                        for h in range(hs, he):
                            for w in range(ws, we):
                                acc += x[n, c, h, w]
                        with np.errstate(invalid="ignore", divide="ignore"):
                            top[n, c, i, j] = np.float64(acc) / size if size else np.nan
                        if top_diff is not None:
                            for h in range(hs, he):
                                for w in range(ws, we):
                                    gx[n, c, h, w] += top_diff[n, c, i, j] / size
    return top, mask, gx


def ref_stochastic_test(x, k, s, ceil=True):
    N, C, H, W = x.shape
    oh, ow = ref_shape(H, W, k[0], k[1], s[0], s[1], 0, 0, ceil)
    top = np.zeros((N, C, oh, ow))
    for n in range(N):
        for c in range(C):
            for i in range(oh):
                for j in range(ow):
                    hs, ws = i * s[0], j * s[1]
                    win = x[n, c, hs:min(hs + k[0], H), ws:min(ws + k[1], W)]
                    top[n, c, i, j] = (win * win).sum() / win.sum()
    return top


# (H, W, body, method) -- the hard cases of the notes' table plus rectangular/global ones.
CASES = [
    ("max_8_3_2_0", (2, 3, 8, 8), "pool: MAX kernel_size: 3 stride: 2"),
    ("max_8_3_2_1", (2, 3, 8, 9), "pool: MAX kernel_size: 3 stride: 2 pad: 1"),
    ("ave_7_3_2_1", (2, 3, 7, 6), "pool: AVE kernel_size: 3 stride: 2 pad: 1"),
    ("ave_6_2_2_1", (2, 3, 6, 7), "pool: AVE kernel_size: 2 stride: 2 pad: 1"),
    ("ave_7_2_3_1", (2, 3, 7, 8), "pool: AVE kernel_size: 2 stride: 3 pad: 1"),
    ("ave_9_4_4_2", (2, 3, 9, 10), "pool: AVE kernel_size: 4 stride: 4 pad: 2"),
    ("ave_5_3_2_2", (2, 3, 5, 6), "pool: AVE kernel_size: 3 stride: 2 pad: 2"),
    ("max_5_3_2_2", (2, 3, 5, 6), "pool: MAX kernel_size: 3 stride: 2 pad: 2"),
    ("max_6_1_3_0", (2, 3, 6, 7), "pool: MAX kernel_size: 1 stride: 3"),
    ("ave_6_1_4_0", (2, 3, 6, 7), "pool: AVE kernel_size: 1 stride: 4"),
    ("max_rect", (2, 3, 9, 7), "pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0"),
    ("ave_rect", (2, 3, 9, 7), "pool: AVE kernel_h: 2 kernel_w: 4 stride_h: 3 stride_w: 2 pad_h: 0 pad_w: 1"),
    ("max_floor", (2, 3, 8, 7), "pool: MAX kernel_size: 3 stride: 2 round_mode: FLOOR"),
    ("ave_floor_pad", (2, 3, 7, 8), "pool: AVE kernel_size: 3 stride: 2 pad: 1 round_mode: FLOOR"),
    ("max_global", (2, 3, 5, 7), "pool: MAX global_pooling: true"),
    ("ave_global", (2, 3, 5, 7), "pool: AVE global_pooling: true"),
]


def _geom(layer):
    return layer.kernel, layer.stride, layer.pad


@pytest.mark.parametrize("name,shape,body", CASES, ids=[c[0] for c in CASES])
def test_forward_backward_vs_numpy_port(name, shape, body):
    layer = make_layer("Pooling", f"pooling_param {{ {body} }}", [shape], module="pooling")
    x = randn(shape, seed=1)
    method = "MAX" if "MAX" in body else "AVE"
    ceil = "FLOOR" not in body
    k, s, p = _geom(layer)
    g = randn(layer.top_shapes[0], seed=2)
    want, _, want_gx = ref_pool(x.astype(np.float64), k, s, p, method, ceil, g.astype(np.float64))
    (y,), (gx,), _ = run_layer(layer, [x], [g])
    assert y.shape == want.shape == layer.top_shapes[0]
    # Windows wholly outside the bottom: MAX keeps -FLT_MAX, AVE gives 0/size (NaN or -0).
    assert_close(y, want, what=f"{name} forward")
    gx_finite = np.where(np.isfinite(want_gx), want_gx, 0)
    assert_close(gx, gx_finite, what=f"{name} backward")


def test_hard_case_shapes_and_edge_values():
    # 6,1,3,0: Caffe keeps a third window wholly outside (PyTorch would give 2x2).
    layer = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 1 stride: 3 }",
                       [(1, 1, 6, 6)], module="pooling")
    assert layer.top_shapes == [(1, 1, 3, 3)]
    y = layer(torch.ones(1, 1, 6, 6)).detach().numpy()
    assert y[0, 0, 2, 2] == -FLT_MAX and y[0, 0, 0, 0] == 1.0
    ave = make_layer("Pooling", "pooling_param { pool: AVE kernel_size: 1 stride: 3 }",
                     [(1, 1, 6, 6)], module="pooling")
    ya = ave(torch.ones(1, 1, 6, 6)).detach().numpy()
    assert np.isnan(ya[0, 0, 2, 2]) and np.isnan(ya[0, 0, 0, 2]) and ya[0, 0, 0, 0] == 1.0
    # Clip rule fires only with padding: 7,2,3,1 -> 3x3 ; 9,4,4,2 -> 3x3 ; 5,3,2,2 -> 4x4.
    for H, k, s, p, want in [(7, 2, 3, 1, 3), (9, 4, 4, 2, 3), (5, 3, 2, 2, 4), (8, 3, 2, 0, 4)]:
        l2 = make_layer("Pooling", f"pooling_param {{ pool: AVE kernel_size: {k} stride: {s} pad: {p} }}",
                        [(1, 2, H, H)], module="pooling")
        assert l2.top_shapes == [(1, 2, want, want)], (H, k, s, p)
    # round_mode FLOOR and the fork's ceil_mode: false agree.
    a = make_layer("Pooling", "pooling_param { kernel_size: 3 stride: 2 round_mode: FLOOR }",
                   [(1, 1, 8, 8)], module="pooling")
    b = make_layer("Pooling", "pooling_param { kernel_size: 3 stride: 2 ceil_mode: false }",
                   [(1, 1, 8, 8)], module="pooling")
    assert a.top_shapes == b.top_shapes == [(1, 1, 3, 3)]


def test_max_ties_first_wins_and_mask_top():
    x = np.zeros((1, 2, 5, 6), np.float32)
    x[0, 0, :2, :2] = 3.0          # a 4-way tie in the first window
    x[0, 1] = np.arange(30).reshape(5, 6) % 3
    layer = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 2 stride: 1 pad: 1 }",
                       [x.shape], module="pooling", n_tops=2)
    g = randn(layer.top_shapes[0], seed=4)
    want, want_mask, want_gx = ref_pool(x.astype(np.float64), *_geom(layer), "MAX", True, g.astype(np.float64))
    (y, mask), (gx,), _ = run_layer(layer, [x], [g, None])
    assert_close(y, want)
    assert_close(mask, want_mask, rtol=0, atol=0)
    assert_close(gx, want_gx)
    # Slow path too (pad > k/2 forces explicit padding), with the -1 mask for pad maxima.
    slow = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 2 }",
                      [x.shape], module="pooling", n_tops=2)
    assert not slow.fast
    want, want_mask, _ = ref_pool(x.astype(np.float64), *_geom(slow), "MAX", True)
    y, mask = slow(torch.from_numpy(-np.abs(x) - 1))
    want, want_mask, _ = ref_pool(-np.abs(x.astype(np.float64)) - 1, *_geom(slow), "MAX", True)
    assert_close(y, want)
    assert_close(mask, want_mask, rtol=0, atol=0)


def test_fast_path_only_when_equivalent():
    fast = make_layer("Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 }",
                      [(1, 1, 8, 8)], module="pooling")
    assert fast.fast
    for body in ["pool: AVE kernel_size: 3 stride: 2 pad: 2", "pool: MAX kernel_size: 1 stride: 3"]:
        assert not make_layer("Pooling", f"pooling_param {{ {body} }}", [(1, 1, 6, 6)],
                              module="pooling").fast


def test_stochastic_test_phase_and_train_sampling():
    x = np.abs(randn((2, 3, 7, 8), seed=5)) + 0.1
    layer = make_layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }",
                       [x.shape], module="pooling")
    assert_close(layer(torch.from_numpy(x)), ref_stochastic_test(x.astype(np.float64), [3, 3], [2, 2]))
    tr = make_layer("Pooling", "pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }",
                    [x.shape], phase="TRAIN", module="pooling")
    torch.manual_seed(0)
    y = tr(torch.from_numpy(x)).numpy()
    torch.manual_seed(0)
    assert y.shape == (2, 3, 3, 4)
    u = torch.rand((2 * 3, 1, 3 * 4)).numpy().reshape(2, 3, 3, 4)
    for n, c, i, j in np.ndindex(2, 3, 3, 4):  # GPU kernel StoPoolForwardTrain (float32 sums)
        win = x[n, c, 2 * i:min(2 * i + 3, 7), 2 * j:min(2 * j + 3, 8)].ravel()
        csum = np.cumsum(win, dtype=np.float32)
        thr = u[n, c, i, j] * csum[-1]
        assert y[n, c, i, j] == win[np.argmax(csum >= thr)]


@pytest.mark.parametrize("body,shape,exc,msg", [
    ("pool: MAX kernel_size: 3 pad: 3", (1, 1, 8, 8), UnsupportedParameter, "pad must be smaller than the kernel"),
    ("pool: STOCHASTIC kernel_size: 3 pad: 1", (1, 1, 8, 8), UnsupportedParameter, "padding is implemented only"),
    ("pool: MAX global_pooling: true kernel_size: 2", (1, 1, 8, 8), UnsupportedParameter, "kernel size cannot"),
    ("pool: MAX global_pooling: true stride: 2", (1, 1, 8, 8), UnsupportedParameter, "only pad 0 and stride 1"),
    ("pool: MAX kernel_size: 3 kernel_h: 2 kernel_w: 2", (1, 1, 8, 8), UnsupportedParameter, "exactly one form"),
    ("pool: MAX kernel_h: 2", (1, 1, 8, 8), UnsupportedParameter, "exactly one form"),
    ("pool: MAX kernel_size: 3 pad: 1 pad_h: 1 pad_w: 1", (1, 1, 8, 8), UnsupportedParameter, "pad_h and pad_w"),
    ("pool: MAX kernel_size: 0", (1, 1, 8, 8), UnsupportedParameter, "greater than zero"),
    ("pool: MAX kernel_size: 2", (1, 8, 8), ShapeError, "4 axes"),
])
def test_bad_params(body, shape, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer("Pooling", f"pooling_param {{ {body} }}", [shape], module="pooling", name="pool9")
    assert "pool9" in str(ei.value) and "Pooling" in str(ei.value)


NO_BACKWARD = {"max_6_1_3_0"}


@pytest.mark.caffe
def test_against_real_caffe():
    _oracle.require_oracle()
    # Caffe's MAX backward writes bottom_diff[-1] for a window wholly outside the bottom
    # (heap corruption in the oracle, and force_backward overrides propagate_down), so such
    # cases run in a second, forward-only net; their gradient is checked against the NumPy
    # port above, which skips argmax -1.
    groups = {True: ({}, [], {}, {}), False: ({}, [], {}, None)}
    ours = {}
    for i, (name, shape, body) in enumerate(CASES):
        inputs, layers, feeds, diffs = groups[name not in NO_BACKWARD]
        inputs[f"x{i}"] = shape
        layers.append(f'layer {{ name: "p{i}" type: "Pooling" bottom: "x{i}" top: "y{i}" '
                      f'pooling_param {{ {for_oracle(body)} }} }}')
        layer = make_layer("Pooling", f"pooling_param {{ {body} }}", [shape], module="pooling")
        feeds[f"x{i}"] = randn(shape, seed=10 + i)
        if i % 2:  # integer data: many ties, so the tie rule is exercised
            feeds[f"x{i}"] = np.round(feeds[f"x{i}"])
        g = randn(layer.top_shapes[0], seed=50 + i)
        if diffs is not None:
            diffs[f"y{i}"] = g
        ours[i] = run_layer(layer, [feeds[f"x{i}"]], [g])
    res = {}
    for bw, (inputs, layers, feeds, diffs) in groups.items():
        out = _oracle.caffe_run(oracle_net(inputs, layers), inputs=feeds, top_diffs=diffs)
        for kind in ("data", "diff"):
            res.setdefault(kind, {}).update(out[kind] if bw or kind == "data" else {})
    for i, (name, _shape, _body) in enumerate(CASES):
        (y,), (gx,), _ = ours[i]
        assert_close(y, res["data"][f"y{i}"], what=f"{name} forward")
        if name not in NO_BACKWARD:
            assert_close(gx, res["diff"][f"x{i}"], what=f"{name} backward")
