"""lr policies vs values computed by hand from sgd_solver.cpp's formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from caffe_compat.errors import UnsupportedParameter
from caffe_compat.solver.lr_policy import check_lr_policy, learning_rate
from caffe_compat.solver.settings import SolverSettings


def S(**kw):
    return SolverSettings(base_lr=0.01, **kw)


def f32(x):
    return float(np.float32(x))


def test_fixed():
    assert learning_rate(S(lr_policy="fixed"), 12345, 3) == (f32(0.01), 3)


@pytest.mark.parametrize("it,expect_step", [(0, 0), (99, 0), (100, 1), (250, 2)])
def test_step_sets_current_step(it, expect_step):
    s = S(lr_policy="step", gamma=0.1, stepsize=100)
    rate, cur = learning_rate(s, it, 7)  # the stored step is recomputed, not trusted
    assert cur == expect_step
    assert rate == f32(f32(0.01) * f32(0.1) ** expect_step)


def test_exp():
    s = S(lr_policy="exp", gamma=0.99)
    assert learning_rate(s, 10, 0)[0] == pytest.approx(0.01 * 0.99 ** 10, rel=1e-6)


def test_inv():
    s = S(lr_policy="inv", gamma=1e-4, power=0.75)
    assert learning_rate(s, 5000, 0)[0] == pytest.approx(0.01 * (1 + 1e-4 * 5000) ** -0.75, rel=1e-6)
    assert learning_rate(s, 5000, 0)[0] == pytest.approx(0.00737788, rel=1e-5)  # 1.5^-0.75


def test_multistep_one_increment_per_call():
    s = S(lr_policy="multistep", gamma=0.5, stepvalue=[2, 3, 4])
    cur, seen = 0, []
    for it in range(6):
        rate, cur = learning_rate(s, it, cur)
        seen.append((cur, rate))
    assert [c for c, _ in seen] == [0, 0, 1, 2, 3, 3]
    assert seen[3][1] == pytest.approx(0.01 * 0.25, rel=1e-7)
    # resumed far past all step values with a stale counter: still one step per call
    rate, cur = learning_rate(s, 100, 0)
    assert (cur, rate) == (1, pytest.approx(0.005, rel=1e-7))
    rate, cur = learning_rate(s, 101, cur)
    assert cur == 2


def test_poly():
    s = S(lr_policy="poly", power=2.0, max_iter=100)
    assert learning_rate(s, 25, 0)[0] == pytest.approx(0.01 * 0.75 ** 2, rel=1e-6)
    assert learning_rate(s, 100, 0)[0] == 0.0


def test_sigmoid():
    s = S(lr_policy="sigmoid", gamma=0.05, stepsize=100)
    assert learning_rate(s, 100, 0)[0] == pytest.approx(0.005, rel=1e-6)
    assert learning_rate(s, 40, 0)[0] == pytest.approx(0.01 / (1 + math.exp(3.0)), rel=1e-6)
    assert learning_rate(s, 10 ** 6, 0)[0] == pytest.approx(0.01, rel=1e-7)
    assert learning_rate(S(lr_policy="sigmoid", gamma=10.0, stepsize=100), 0, 0)[0] == 0.0


def test_rates_are_float32_values():
    s = S(lr_policy="inv", gamma=1e-4, power=0.75)
    r, _ = learning_rate(s, 777, 0)
    assert r == float(np.float32(r))


def test_unknown_policy_named():
    with pytest.raises(UnsupportedParameter, match=r"solver.prototxt: unknown lr_policy 'cosine'; "
                                                   r"expected one of fixed, step"):
        check_lr_policy(S(lr_policy="cosine"), "solver.prototxt")
    with pytest.raises(UnsupportedParameter, match="unknown lr_policy ''"):
        learning_rate(S(), 0, 0)


@pytest.mark.parametrize("kw,msg", [
    (dict(lr_policy="step", gamma=0.1), "needs stepsize > 0, got 0"),
    (dict(lr_policy="sigmoid", gamma=0.1), "needs stepsize > 0"),
    (dict(lr_policy="exp", gamma=-1.0), "needs gamma >= 0, got -1.0"),
    (dict(lr_policy="poly", power=1.0), "'poly' needs max_iter > 0"),
])
def test_policy_checks(kw, msg):
    with pytest.raises(UnsupportedParameter, match=msg):
        check_lr_policy(S(**kw))
