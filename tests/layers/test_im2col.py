"""Im2col (im2col_layer.cpp, util/im2col.cpp) against a NumPy port and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer


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
@pytest.mark.parametrize("name,shape,body", IM2COL, ids=[c[0] for c in IM2COL])
def test_im2col_vs_numpy(name, shape, body):
    layer = make_layer("Im2col", body, [shape], module="im2col")
    x = randn(shape, seed=1)
    want = ref_im2col(x.astype(np.float64), layer.kernel, layer.stride, layer.pad, layer.dilation)
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, want, rtol=0, atol=0, what=name)


def test_backward_is_col2im():
    # util/im2col.cpp col2im_cpu: every column entry adds its diff back to the pixel it came from,
    # so <im2col(x), g> == <x, col2im(g)> for every g (the adjoint identity), checked in float64.
    name, shape, body = IM2COL[1]
    layer = make_layer("Im2col", body, [shape], module="im2col")
    x, g = randn(shape, seed=1), randn(layer.top_shapes[0], seed=2)
    _, (gx,), _ = run_layer(layer, [x], [g])
    cols = ref_im2col(x.astype(np.float64), layer.kernel, layer.stride, layer.pad, layer.dilation)
    basis = np.eye(x.size).reshape((x.size,) + shape)
    want = np.array([(ref_im2col(e, layer.kernel, layer.stride, layer.pad, layer.dilation) * g).sum() for e in basis])
    assert_close(gx, want.reshape(shape), what=name)
    assert np.isclose((cols * g).sum(), (x.astype(np.float64) * gx).sum(), rtol=1e-5)


@pytest.mark.caffe
def test_against_real_caffe():
    oracle_check([Case("im2col-" + n, "Im2col", b, [randn(s, seed=i)]) for i, (n, s, b) in enumerate(IM2COL)])
