"""LRN against a float64 NumPy port of lrn_layer.cpp (both regions) and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter


def ref_across(x, size, alpha, beta, k):
    # CrossChannelForward_cpu: scale = k + alpha/size * windowed sum of squares (zero padded).
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    sq = np.zeros((N, C + size - 1, H, W))
    sq[:, pre:pre + C] = x * x
    scale = np.full(x.shape, k, dtype=np.float64)
    for c in range(C):
        scale[:, c] += alpha / size * sq[:, c:c + size].sum(axis=1)
    return x * scale ** (-beta)


def ref_within(x, size, alpha, beta):
    # WithinChannelForward: Power(x^2) -> AVE pool (size, pad (size-1)/2, stride 1) -> (1 + alpha*.)^-beta.
    N, C, H, W = x.shape
    pre = (size - 1) // 2
    sq = np.pad(x * x, [(0, 0), (0, 0), (pre, pre), (pre, pre)])
    avg = np.zeros(x.shape)
    for i in range(size):
        for j in range(size):
            avg += sq[:, :, i:i + H, j:j + W]
    avg /= size * size
    return x * (1.0 + alpha * avg) ** (-beta)


CASES = [
    ("across_k2", (2, 7, 5, 4), "lrn_param { local_size: 5 alpha: 0.3 beta: 0.75 k: 2 }"),
    ("across_3", (3, 4, 3, 6), "lrn_param { local_size: 3 alpha: 1e-2 beta: 0.6 }"),
    ("within_3", (2, 3, 6, 5), "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL k: 7 }"),
    ("within_5", (2, 2, 7, 4), "lrn_param { local_size: 5 alpha: 2 beta: 0.9 norm_region: WITHIN_CHANNEL }"),
]


@pytest.mark.parametrize("name,shape,body", CASES, ids=[c[0] for c in CASES])
def test_forward_vs_numpy_port(name, shape, body):
    layer = make_layer("LRN", body, [shape])
    x = randn(shape, seed=3, scale=2.0)
    xd = x.astype(np.float64)
    if layer.region == 0:
        want = ref_across(xd, layer.size, layer.alpha, layer.beta, layer.k)
    else:  # k is ignored by WITHIN_CHANNEL
        want = ref_within(xd, layer.size, layer.alpha, layer.beta)
    (y,), _, _ = run_layer(layer, [x])
    assert_close(y, want, what=name)


@pytest.mark.parametrize("body,shape,exc,msg", [
    ("lrn_param { local_size: 4 }", (1, 3, 4, 4), UnsupportedParameter, "local_size must be odd"),
    ("lrn_param { local_size: 3 }", (1, 3, 4), ShapeError, "4 axes"),
])
def test_bad_params(body, shape, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer("LRN", body, [shape], name="norm1")
    assert "'norm1'" in str(ei.value) and "LRN" in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    oracle_check([Case(n, "LRN", b, [randn(s, seed=i, scale=2.0)]) for i, (n, s, b) in enumerate(CASES)])
