"""Im2col and SPP against NumPy ports and real Caffe."""
from __future__ import annotations

import math

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from test_pooling import ref_pool
from caffe_compat.errors import UnsupportedParameter


def ref_im2col(x, k, s, p, d):
    # util/im2col.cpp: row (c*kh + i)*kw + j, column (y, x); zero outside the bottom.
    N, C, H, W = x.shape
    oh = (H + 2 * p[0] - (d[0] * (k[0] - 1) + 1)) // s[0] + 1
    ow = (W + 2 * p[1] - (d[1] * (k[1] - 1) + 1)) // s[1] + 1
    out = np.zeros((N, C * k[0] * k[1], oh, ow))
    for c in range(C):
        for i in range(k[0]):
            for j in range(k[1]):
                for y in range(oh):
                    for xx in range(ow):
                        h, w = y * s[0] - p[0] + i * d[0], xx * s[1] - p[1] + j * d[1]
                        if 0 <= h < H and 0 <= w < W:
                            out[:, (c * k[0] + i) * k[1] + j, y, xx] = x[:, c, h, w]
    return out


IM2COL = [
    ("k3s2p1", (2, 3, 7, 6), "convolution_param { kernel_size: 3 stride: 2 pad: 1 }"),
    ("hw_dil", (1, 2, 8, 9), "convolution_param { kernel_h: 2 kernel_w: 3 stride_h: 1 stride_w: 2 pad_h: 1 pad_w: 0 dilation: 2 }"),
]
SPP = [
    ("max3", (2, 3, 7, 9), "spp_param { pyramid_height: 3 pool: MAX }"),
    ("ave2", (2, 2, 6, 5), "spp_param { pyramid_height: 2 pool: AVE }"),
    ("h1", (1, 3, 5, 4), "spp_param { pyramid_height: 1 }"),
]


@pytest.mark.parametrize("name,shape,body", IM2COL, ids=[c[0] for c in IM2COL])
def test_im2col_vs_numpy(name, shape, body):
    layer = make_layer("Im2col", body, [shape])
    x = randn(shape, seed=1)
    want = ref_im2col(x.astype(np.float64), layer.kernel, layer.stride, layer.pad, layer.dilation)
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, want, rtol=0, atol=0, what=name)


def ref_spp(x, height, method):
    N, C, H, W = x.shape
    outs = []
    for lvl in range(height):
        bins = 2 ** lvl
        kh, kw = math.ceil(H / bins), math.ceil(W / bins)
        ph, pw = (kh * bins - H + 1) // 2, (kw * bins - W + 1) // 2
        top, _, _ = ref_pool(x, (kh, kw), (kh, kw), (ph, pw), method)
        outs.append(top if height == 1 else top.reshape(N, -1))
    return outs[0] if height == 1 else np.concatenate(outs, axis=1)


@pytest.mark.parametrize("name,shape,body", SPP, ids=[c[0] for c in SPP])
def test_spp_vs_numpy(name, shape, body):
    layer = make_layer("SPP", body, [shape])
    x = randn(shape, seed=2)
    want = ref_spp(x.astype(np.float64), layer.height, "AVE" if "AVE" in body else "MAX")
    (y,), _, _ = run_layer(layer, [x])
    assert y.shape == layer.top_shapes[0]
    assert_close(y, want, what=name)


def test_spp_level_too_fine_is_refused_like_caffe():
    # H = 3 at 4 bins: kernel 1, pad 1 -> the Pooling sublayer's pad < kernel CHECK.
    with pytest.raises(UnsupportedParameter, match="'spp1/level2'.*pad must be smaller"):
        make_layer("SPP", "spp_param { pyramid_height: 3 }", [(1, 1, 3, 8)], name="spp1")


@pytest.mark.caffe
def test_against_real_caffe():
    cases = [Case("im2col-" + n, "Im2col", b, [randn(s, seed=i)]) for i, (n, s, b) in enumerate(IM2COL)]
    cases += [Case("spp-" + n, "SPP", b, [randn(s, seed=10 + i)]) for i, (n, s, b) in enumerate(SPP)]
    oracle_check(cases)
