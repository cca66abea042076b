"""Crop against NumPy slicing and real Caffe (offsets none / one / per axis, axis forms)."""
from __future__ import annotations

import numpy as np
import pytest

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import ShapeError, UnsupportedParameter

A = (3, 4, 9, 8)
CASES = [  # name, body, reference shape, expected index tuple
    ("default", "", (1, 1, 5, 6), np.s_[:, :, 0:5, 0:6]),
    ("one_offset", "crop_param { offset: 2 }", (2, 2, 5, 4), np.s_[:, :, 2:7, 2:6]),
    ("per_axis", "crop_param { axis: 1 offset: 1 offset: 3 offset: 0 }", (5, 2, 6, 7), np.s_[:, 1:3, 3:9, 0:7]),
    ("neg_axis", "crop_param { axis: -1 offset: 1 }", (1, 1, 1, 5), np.s_[:, :, :, 1:6]),
    ("axis0", "crop_param { axis: 0 offset: 1 offset: 0 offset: 2 offset: 1 }", (2, 3, 7, 6), np.s_[1:3, 0:3, 2:9, 1:7]),
]


@pytest.mark.parametrize("name,body,ref,sl", CASES, ids=[c[0] for c in CASES])
def test_vs_numpy(name, body, ref, sl):
    layer = make_layer("Crop", body, [A, ref])
    x = randn(A, seed=1)
    g = randn(layer.top_shapes[0], seed=2)
    (y,), (gx, gr), _ = run_layer(layer, [x, randn(ref, seed=3)], [g])
    assert_close(y, x[sl], rtol=0, atol=0, what=name)
    want = np.zeros(A, np.float32)
    want[sl] = g
    assert_close(gx, want, rtol=0, atol=0)
    assert not gr.any()


@pytest.mark.parametrize("body,ref,exc,msg", [
    ("crop_param { offset: 5 }", (1, 1, 5, 6), ShapeError, "invalid crop in axis 2"),
    ("crop_param { offset: 1 offset: 2 offset: 3 }", (1, 1, 5, 6), UnsupportedParameter, "once per cropped axis"),
    ("", (1, 1, 5), ShapeError, "same number of axes"),
])
def test_bad_params(body, ref, exc, msg):
    with pytest.raises(exc, match=msg) as ei:
        make_layer("Crop", body, [A, ref], name="crop1")
    assert "'crop1'" in str(ei.value) and "Crop" in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    oracle_check([Case(n, "Crop", b, [randn(A, seed=i), randn(r, seed=10 + i)]) for i, (n, b, r, _) in enumerate(CASES)])
