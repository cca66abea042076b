"""SPP (spp_layer.cpp) against a NumPy port (pyramid of pooling_layer.cpp windows) and real Caffe."""
from __future__ import annotations

import math

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from test_pooling import ref_pool
from caffe_compat.errors import UnsupportedParameter


SPP = [
    ("max3", (2, 3, 7, 9), "spp_param { pyramid_height: 3 pool: MAX }"),
    ("ave2", (2, 2, 6, 5), "spp_param { pyramid_height: 2 pool: AVE }"),
    ("h1", (1, 3, 5, 4), "spp_param { pyramid_height: 1 }"),
]


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
    layer = make_layer("SPP", body, [shape], module="spp")
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
    cases = [Case("spp-" + n, "SPP", b, [randn(s, seed=10 + i)]) for i, (n, s, b) in enumerate(SPP)]
    oracle_check(cases)
