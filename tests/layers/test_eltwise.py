"""Eltwise (eltwise_layer.cpp): SUM with coefficients, PROD (stable and unstable gradient), MAX ties."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn, run_layer
from caffe_compat.errors import UnsupportedParameter

S = (2, 3, 5, 4)


def test_eltwise_max_tie_rule():
    # Caffe: bottom 0 vs 1 is "a > b ? 0 : 1" (a tie goes to 1); later bottoms need strict >.
    a = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
    b = np.array([[1.0, 5.0, 3.0, 0.0]], np.float32)
    c = np.array([[0.0, 5.0, 3.0, 4.0]], np.float32)
    lay = make_layer("Eltwise", "eltwise_param { operation: MAX }", [a.shape] * 3, module="eltwise")
    (y,), (ga, gb, gc), _ = run_layer(lay, [a, b, c], [np.ones_like(a)])
    assert_close(y, [[1, 5, 3, 4]])
    assert_close(ga, [[0, 0, 0, 1]])
    assert_close(gb, [[1, 1, 1, 0]])
    assert_close(gc, [[0, 0, 0, 0]])


def test_eltwise_prod_unstable_grad_is_y_over_x():
    a = np.array([[0.0, 2.0]], np.float32)
    b = np.array([[3.0, 4.0]], np.float32)
    lay = make_layer("Eltwise", "eltwise_param { operation: PROD stable_prod_grad: false }", [a.shape] * 2,
                     module="eltwise")
    (y,), (ga, gb), _ = run_layer(lay, [a, b], [np.ones_like(a)])
    assert_close(y, [[0, 8]])
    assert np.isnan(ga[0, 0]) and ga[0, 1] == 4.0  # 0/0 where Caffe divides by x == 0
    assert_close(gb, [[0, 2]])


def test_errors_name_layer_and_field():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Eltwise\): eltwise_param.coeff is only allowed with operation SUM \(got PROD\)"):
        make_layer("Eltwise", "eltwise_param { operation: PROD coeff: 1 coeff: 2 }", [S, S], module="eltwise")
    with pytest.raises(UnsupportedParameter, match=r"eltwise_param.coeff needs one entry per bottom \(2 bottoms, 1 coeffs\)"):
        make_layer("Eltwise", "eltwise_param { coeff: 1 }", [S, S], module="eltwise")


def _cases():
    a, b, c = randn(S, 1), randn(S, 2), randn(S, 3)
    a.reshape(-1)[::5] = b.reshape(-1)[::5]  # ties for MAX
    d = lambda shape, k: randn(shape, 200 + k)  # noqa: E731
    cs = [
        dict(name="el_sum", type="Eltwise", body="", bottoms=[a, b, c], diffs=[d(S, 10)]),
        dict(name="el_coef", type="Eltwise", body="eltwise_param { coeff: 0.5 coeff: -2 coeff: 3 }", bottoms=[a, b, c], diffs=[d(S, 11)]),
        dict(name="el_prod", type="Eltwise", body="eltwise_param { operation: PROD }", bottoms=[a, b, c], diffs=[d(S, 12)]),
        dict(name="el_produ", type="Eltwise", body="eltwise_param { operation: PROD stable_prod_grad: false }",
             bottoms=[a, b], diffs=[d(S, 13)], tol=(1e-4, 1e-5)),  # y/x_i loses digits when x_i is small
        dict(name="el_max", type="Eltwise", body="eltwise_param { operation: MAX }", bottoms=[a, b, c], diffs=[d(S, 14)]),
    ]
    for c_ in cs:
        c_["module"] = "eltwise"
    return cs


def test_cases_vs_numpy():
    # The NumPy truth for the oracle cases, so the default tier checks the same configurations.
    refs = {"el_sum": lambda b: b[0] + b[1] + b[2],
            "el_coef": lambda b: 0.5 * b[0] - 2 * b[1] + 3 * b[2], "el_prod": lambda b: b[0] * b[1] * b[2],
            "el_produ": lambda b: b[0] * b[1], "el_max": lambda b: np.max(np.stack(b), 0)}
    for c in _cases():
        _, (tops, _, _) = ours(dict(c, diffs=None))
        assert_close(tops[0], refs[c["name"]](c["bottoms"]), what=c["name"])


@pytest.mark.caffe
def test_eltwise_vs_caffe():
    check_against_caffe(_cases())
