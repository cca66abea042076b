"""Deconvolution (deconv_layer.cpp) against a NumPy port (gemm + col2im semantics) and real Caffe."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import ShapeError
from test_convolution import _build, conv_vs_caffe


def ref_deconv(x, w, b, stride, pad, dil, group):
    """Caffe's deconv (gemm + col2im): every input pixel scatters W into the output, float64."""
    N, C = x.shape[:2]
    sp = x.shape[2:]
    Og = w.shape[1]
    ks = w.shape[2:]
    O = Og * group
    full = [st * (s - 1) + d * (k - 1) + 1 for s, k, st, d in zip(sp, ks, stride, dil)]
    y = np.zeros((N, O) + tuple(full))
    Cg = C // group
    for g in range(group):
        for off in itertools.product(*[range(k) for k in ks]):
            sl = tuple(slice(o * d, o * d + st * (n - 1) + 1, st) for o, d, st, n in zip(off, dil, stride, sp))
            wk = w[(slice(g * Cg, (g + 1) * Cg), slice(None)) + off]  # (Cg, Og)
            y[(slice(None), slice(g * Og, (g + 1) * Og)) + sl] += np.einsum(
                "nc...,co->no...", x[:, g * Cg:(g + 1) * Cg], wk)
    crop = tuple(slice(p, f - p) for p, f in zip(pad, full))
    y = y[(slice(None), slice(None)) + crop]
    if b is not None:
        y += b.reshape((1, O) + (1,) * len(sp))
    return y


# name, bottom shape, convolution_param body, (stride, pad, dilation) as resolved by Caffe
DECONV = [
    ("2d_group_pad", (2, 4, 5, 6), "num_output: 6 kernel_size: 4 stride: 2 pad: 1 group: 2", ([2, 2], [1, 1], [1, 1])),
    ("2d_hw_dilated", (2, 3, 4, 5), "num_output: 5 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 1 "
                                    "pad_h: 1 pad_w: 0 dilation: 2", ([3, 1], [1, 0], [2, 2])),
    ("1d", (3, 2, 7), "num_output: 4 kernel_size: 3 stride: 2 bias_term: false", ([2], [0], [1])),
    ("3d", (1, 2, 3, 4, 2), "num_output: 2 kernel_size: 2 stride: 2", ([2, 2, 2], [0, 0, 0], [1, 1, 1])),
]


@pytest.mark.parametrize("case", DECONV, ids=[f"deconv-{c[0]}" for c in DECONV])
def test_forward_vs_numpy_port(case):
    name, shape, body, (stride, pad, dil) = case
    layer, params = _build("Deconvolution", shape, body, seed=3)
    assert (layer.stride, layer.pad, layer.dilation) == (stride, pad, dil)
    x = randn(shape, seed=1)
    want = ref_deconv(x.astype(np.float64), params[0].astype(np.float64),
                      params[1].astype(np.float64) if len(params) > 1 else None, stride, pad, dil, layer.group)
    (y,), _, _ = run_layer(layer, [x])
    assert y.shape == layer.top_shapes[0]
    assert_close(y, want, rtol=1e-5, atol=1e-5, what=f"Deconvolution {name}")


def test_backward_is_the_adjoint_of_forward():
    # deconv_layer.cpp Backward: bottom diff = conv of the top diff with the same weights, i.e. the
    # adjoint of the (bias-free) forward map: <deconv(x), g> == <x, d x> for every x.
    name, shape, body, (stride, pad, dil) = DECONV[0]
    layer, params = _build("Deconvolution", shape, body, seed=3)
    x, g = randn(shape, seed=1), randn(layer.top_shapes[0], seed=2)
    _, (gx,), (gw, gb) = run_layer(layer, [x], [g])
    w = params[0].astype(np.float64)
    basis = np.eye(x.size).reshape((x.size,) + shape)
    want = np.array([(ref_deconv(e, w, None, stride, pad, dil, layer.group) * g).sum() for e in basis])
    assert_close(gx, want.reshape(shape), rtol=1e-5, atol=1e-5, what=name)
    assert_close(gb, g.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5, what=name + " bias")


def test_weight_shapes():
    deconv = make_layer("Deconvolution", "convolution_param { num_output: 6 kernel_size: 3 group: 3 }",
                        [(2, 9, 5, 5)], module="deconvolution")
    assert [tuple(b.shape) for b in deconv.blobs] == [(9, 2, 3, 3), (6,)]
    assert deconv.top_shapes == [(2, 6, 7, 7)]


@pytest.mark.parametrize("kind,body,shapes,exc,msg", [
    ("Deconvolution", "num_output: 2 kernel_size: 1 pad: 1", [(1, 2, 1, 1)], ShapeError, "not positive"),
])
def test_bad_params(kind, body, shapes, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer(kind, f"convolution_param {{ {body} }}", shapes, module=kind.lower(), name="c7",
                   n_tops=len(shapes))
    assert "'c7'" in str(ei.value) and kind in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    conv_vs_caffe([("Deconvolution", c) for c in DECONV])
