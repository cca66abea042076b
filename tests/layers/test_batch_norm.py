"""BatchNorm against a float64 NumPy port of batch_norm_layer.cpp and real Caffe (TEST and TRAIN)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import UnsupportedParameter


def ref_bn(x, blobs, global_stats, maf, eps):
    """(top, updated blobs) as Forward_cpu computes them."""
    C = 1 if x.ndim == 1 else x.shape[1]
    x3 = x.reshape(x.shape[0], C, -1)
    b0, b1, b2 = (np.array(b, np.float64) for b in blobs)
    if global_stats:
        f = 0.0 if b2[0] == 0 else 1.0 / b2[0]
        mean, var = f * b0, f * b1
    else:
        mean = x3.mean(axis=(0, 2))
        var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
        m = x.size // C
        b2 = b2 * maf + 1
        b0 = mean + maf * b0
        b1 = (m / (m - 1) if m > 1 else 1) * var + maf * b1
    y = (x3 - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None]
    return y.reshape(x.shape), [b0, b1, b2]


def blobs_for(C, seed, s):
    r = np.random.default_rng(seed)
    return [r.standard_normal(C).astype(np.float32) * s, (r.random(C).astype(np.float32) + 0.5) * s,
            np.array([s], np.float32)]


TEST_CASES = [
    ("scale4", (2, 3, 4, 5), "", blobs_for(3, 1, 4.0)),
    ("scale0", (2, 3, 4, 5), "", blobs_for(3, 2, 0.0)),          # s == 0 -> mean = var = 0
    ("eps_2d", (5, 4), "batch_norm_param { eps: 0.01 }", blobs_for(4, 3, 1.0)),
]
TRAIN_CASES = [
    ("train4d", (3, 2, 4, 5), "", blobs_for(2, 4, 2.0)),
    ("train_maf", (4, 3, 2, 3), "batch_norm_param { moving_average_fraction: 0.9 eps: 1e-3 }", blobs_for(3, 5, 1.5)),
    ("train_2d", (6, 3), "", blobs_for(3, 6, 0.0)),
]


@pytest.mark.parametrize("phase,case", [("TEST", c) for c in TEST_CASES] + [("TRAIN", c) for c in TRAIN_CASES],
                         ids=[c[0] for c in TEST_CASES + TRAIN_CASES])
def test_vs_numpy_port(phase, case):
    name, shape, body, blobs = case
    layer = make_layer("BatchNorm", body, [shape], phase=phase)
    assert [tuple(b.shape) for b in layer.blobs] == [(shape[1],), (shape[1],), (1,)]
    for p, v in zip(layer.blobs, blobs):
        p.data.copy_(torch.from_numpy(v))
    x = randn(shape, seed=7, scale=3.0) + 1.0
    want, want_blobs = ref_bn(x.astype(np.float64), blobs, phase == "TEST", layer.maf, layer.eps)
    (y,), (gx,), gp = run_layer(layer, [x], [randn(shape, seed=8)])
    assert_close(y, want, what=name)
    for p, w in zip(layer.blobs, want_blobs):
        assert_close(p, w, what=name + " blobs")
    assert all(not g.any() for g in gp)  # statistics get no gradient


def test_use_global_stats_override_and_lr_mult_check():
    assert make_layer("BatchNorm", "", [(2, 3)], phase="TRAIN").use_global_stats is False
    assert make_layer("BatchNorm", "batch_norm_param { use_global_stats: true }", [(2, 3)],
                      phase="TRAIN").use_global_stats is True
    assert make_layer("BatchNorm", "batch_norm_param { use_global_stats: false }", [(2, 3)],
                      phase="TEST").use_global_stats is False
    with pytest.raises(UnsupportedParameter, match="lr_mult must be 0") as ei:
        make_layer("BatchNorm", "param { lr_mult: 0 } param { lr_mult: 1 }", [(2, 3)], name="bn2")
    assert "'bn2'" in str(ei.value) and "BatchNorm" in str(ei.value)


@pytest.mark.caffe
def test_test_phase_against_real_caffe():
    oracle_check([Case(n, "BatchNorm", b, [randn(s, seed=i, scale=3.0)], params=bl)
                  for i, (n, s, b, bl) in enumerate(TEST_CASES)], phase="TEST")


@pytest.mark.caffe
def test_train_phase_forward_backward_and_updates_against_real_caffe():
    # oracle_check also compares the three blobs after the forward pass (the running sums).
    oracle_check([Case(n, "BatchNorm", b, [randn(s, seed=i, scale=3.0) + 1.0], params=bl, atol=1e-5)
                  for i, (n, s, b, bl) in enumerate(TRAIN_CASES)], phase="TRAIN")
