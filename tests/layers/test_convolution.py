"""Convolution (conv_layer.cpp) against a NumPy port (im2col + gemm semantics) and real Caffe."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import _oracle
from _util import assert_close, make_layer, oracle_net, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter


def ref_conv(x, w, b, stride, pad, dil, group):
    """Caffe's conv (im2col + gemm per group) written as a sum over kernel offsets, float64."""
    N, C = x.shape[:2]
    sp = x.shape[2:]
    O, Cg = w.shape[:2]
    ks = w.shape[2:]
    out = [(s + 2 * p - (d * (k - 1) + 1)) // st + 1 for s, k, st, p, d in zip(sp, ks, stride, pad, dil)]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    y = np.zeros((N, O) + tuple(out))
    Og = O // group
    for g in range(group):
        for off in itertools.product(*[range(k) for k in ks]):
            sl = tuple(slice(o * d, o * d + st * (n - 1) + 1, st) for o, d, st, n in zip(off, dil, stride, out))
            patch = xp[(slice(None), slice(g * Cg, (g + 1) * Cg)) + sl]
            wk = w[(slice(g * Og, (g + 1) * Og), slice(None)) + off]
            y[:, g * Og:(g + 1) * Og] += np.einsum("nc...,oc->no...", patch, wk)
    if b is not None:
        y += b.reshape((1, O) + (1,) * len(sp))
    return y


# name, bottom shape, convolution_param body, (stride, pad, dilation) as resolved by Caffe
CONV = [
    ("2d_group_pad", (2, 4, 7, 6), "num_output: 6 kernel_size: 3 stride: 2 pad: 1 group: 2", ([2, 2], [1, 1], [1, 1])),
    ("2d_hw_dilated", (3, 3, 9, 8), "num_output: 5 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 "
                                    "pad_h: 0 pad_w: 1 dilation: 2", ([2, 1], [0, 1], [2, 2])),
    ("2d_1x1_nobias", (2, 5, 4, 3), "num_output: 2 kernel_size: 1 bias_term: false", ([1, 1], [0, 0], [1, 1])),
    ("1d", (2, 3, 11), "num_output: 4 kernel_size: 3 stride: 2 pad: 1 dilation: 2", ([2], [1], [2])),
    ("3d_per_axis", (2, 2, 5, 6, 4), "num_output: 3 kernel_size: 3 kernel_size: 2 kernel_size: 2 "
                                     "stride: 1 stride: 2 stride: 1 pad: 1 pad: 0 pad: 1", ([1, 2, 1], [1, 0, 1], [1, 1, 1])),
]
def _build(kind, shape, body, seed):
    layer = make_layer(kind, f"convolution_param {{ {body} }}", [shape], module=kind.lower())
    params = [randn(tuple(p.shape), seed=seed + j) for j, p in enumerate(layer.blobs)]
    for p, v in zip(layer.blobs, params):
        p.data.copy_(torch.from_numpy(v))
    return layer, params


@pytest.mark.parametrize("kind,case", [("Convolution", c) for c in CONV], ids=[f"conv-{c[0]}" for c in CONV])
def test_forward_vs_numpy_port(kind, case):
    name, shape, body, (stride, pad, dil) = case
    layer, params = _build(kind, shape, body, seed=3)
    assert (layer.stride, layer.pad, layer.dilation) == (stride, pad, dil)
    x = randn(shape, seed=1)
    group = layer.group
    want = ref_conv(x.astype(np.float64), params[0].astype(np.float64),
               params[1].astype(np.float64) if len(params) > 1 else None, stride, pad, dil, group)
    (y,), _, _ = run_layer(layer, [x])
    assert y.shape == layer.top_shapes[0]
    assert_close(y, want, rtol=1e-5, atol=1e-5, what=f"{kind} {name}")


def test_weight_shapes_and_axis():
    conv = make_layer("Convolution", "convolution_param { num_output: 6 kernel_size: 3 group: 3 }",
                      [(2, 9, 5, 5)], module="convolution")
    assert [tuple(b.shape) for b in conv.blobs] == [(6, 3, 3, 3), (6,)]
    # axis 2: the first two axes are batch; one conv over (C=4, 6, 5).
    ax = make_layer("Convolution", "convolution_param { num_output: 2 kernel_size: 2 axis: 2 }",
                    [(2, 3, 4, 6, 5)], module="convolution")
    assert ax.top_shapes == [(2, 3, 2, 5, 4)]
    x = randn((2, 3, 4, 6, 5), seed=7)
    (y,), _, _ = run_layer(ax, [x])
    w, b = (p.detach().numpy().astype(np.float64) for p in ax.blobs)
    want = ref_conv(x.reshape(6, 4, 6, 5).astype(np.float64), w, b, [1, 1], [0, 0], [1, 1], 1)
    assert_close(y, want.reshape(2, 3, 2, 5, 4), atol=1e-5)


def test_two_bottoms_share_weights():
    layer = make_layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }",
                       [(1, 2, 5, 5), (1, 2, 5, 5)], module="convolution", n_tops=2)
    a, b = randn((1, 2, 5, 5), seed=1), randn((1, 2, 5, 5), seed=2)
    ya, yb = layer(*[torch.from_numpy(v) for v in (a, b)])
    for x, y in ((a, ya), (b, yb)):
        (y1,), _, _ = run_layer(make_like(layer), [x])
        assert_close(y, y1)


def make_like(layer):
    one = make_layer("Convolution", "convolution_param { num_output: 2 kernel_size: 3 }",
                     [(1, 2, 5, 5)], module="convolution")
    for p, q in zip(one.blobs, layer.blobs):
        p.data.copy_(q.data)
    return one


@pytest.mark.parametrize("kind,body,shapes,exc,msg", [
    ("Convolution", "num_output: 4 kernel_size: 3 group: 3", [(1, 4, 5, 5)], UnsupportedParameter, "group 3 must divide"),
    ("Convolution", "num_output: 5 kernel_size: 3 group: 2", [(1, 6, 5, 5)], UnsupportedParameter, "multiple of group"),
    ("Convolution", "num_output: 4 kernel_size: 3 kernel_size: 3 kernel_size: 3", [(1, 2, 5, 5)],
     UnsupportedParameter, "given 3 times; 2 spatial axes"),
    ("Convolution", "num_output: 4 kernel_h: 3 kernel_w: 3", [(1, 2, 5, 5, 5)], UnsupportedParameter, "only be used for 2-D"),
    ("Convolution", "num_output: 4 kernel_size: 3 kernel_h: 3 kernel_w: 3", [(1, 2, 5, 5)], UnsupportedParameter, "not both"),
    ("Convolution", "num_output: 4", [(1, 2, 5, 5)], UnsupportedParameter, "kernel_size is required"),
    ("Convolution", "kernel_size: 3", [(1, 2, 5, 5)], UnsupportedParameter, "num_output must be > 0"),
    ("Convolution", "num_output: 2 kernel_size: 7", [(1, 2, 5, 5)], ShapeError, "smaller than the dilated kernel"),
    ("Convolution", "num_output: 2 kernel_size: 3", [(1, 2, 5, 5), (1, 2, 5, 4)], ShapeError, "same shape"),
])
def test_bad_params(kind, body, shapes, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer(kind, f"convolution_param {{ {body} }}", shapes, module=kind.lower(), name="c7",
                   n_tops=len(shapes))
    assert "'c7'" in str(ei.value) and kind in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    conv_vs_caffe([("Convolution", c) for c in CONV])


def conv_vs_caffe(cases):
    """Forward, bottom diff and param diffs of every (kind, case) in one real-Caffe net."""
    _oracle.require_oracle()
    inputs, layers, feeds, diffs, params, ours = {}, [], {}, {}, {}, {}
    for i, (kind, (name, shape, body, _)) in enumerate(cases):
        inputs[f"x{i}"] = shape
        layers.append(f'layer {{ name: "c{i}" type: "{kind}" bottom: "x{i}" top: "y{i}" '
                      f'convolution_param {{ {body} }} }}')
        layer, params[f"c{i}"] = _build(kind, shape, body, seed=20 + i)
        feeds[f"x{i}"] = randn(shape, seed=40 + i)
        diffs[f"y{i}"] = randn(layer.top_shapes[0], seed=60 + i)
        ours[i] = run_layer(layer, [feeds[f"x{i}"]], [diffs[f"y{i}"]])
    res = _oracle.caffe_run(oracle_net(inputs, layers), params=params, inputs=feeds, top_diffs=diffs)
    for i, (kind, (name, *_)) in enumerate(cases):
        (y,), (gx,), gp = ours[i]
        what = f"{kind} {name}"
        # Sums of up to ~100 float32 products: atol 1e-5 on O(1..10) values.
        assert_close(y, res["data"][f"y{i}"], atol=1e-5, what=what + " forward")
        assert_close(gx, res["diff"][f"x{i}"], atol=1e-5, what=what + " bottom diff")
        for j, g in enumerate(gp):
            assert_close(g, res["param_diffs"][f"c{i}/{j}"], atol=1e-5, what=f"{what} param {j} diff")
