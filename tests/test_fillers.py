"""Fillers (include/caffe/filler.hpp): exact values where deterministic, statistics otherwise."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from caffe_compat.errors import UnsupportedParameter
from caffe_compat.layers.fillers import fill
from caffe_compat.proto import caffe_pb2


def fp(**kw):
    return caffe_pb2.FillerParameter(**kw)


def _bilinear_loop(shape):
    # NumPy port of BilinearFiller::Fill, in float32 like Caffe's Dtype=float.
    n = int(np.prod(shape))
    width, height = shape[3], shape[2]
    f = math.ceil(width / 2.0)
    c = np.float32((width - 1) / (2.0 * f))
    out = np.empty(n, np.float32)
    for i in range(n):
        x = np.float32(i % width)
        y = np.float32((i // width) % height)
        out[i] = (np.float32(1) - abs(x / np.float32(f) - c)) * (np.float32(1) - abs(y / np.float32(f) - c))
    return out.reshape(shape)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 7, 8])
def test_bilinear_exact(k):
    t = fill(torch.empty(2, 1, k, k), fp(type="bilinear"))
    np.testing.assert_array_equal(t.numpy(), _bilinear_loop((2, 1, k, k)))


def test_bilinear_known_kernel():
    # factor 2 upsampling kernel (K=4): [0.25, 0.75, 0.75, 0.25] outer itself
    t = fill(torch.empty(1, 1, 4, 4), fp(type="bilinear"))
    a = np.array([0.25, 0.75, 0.75, 0.25], np.float32)
    np.testing.assert_array_equal(t[0, 0].numpy(), np.outer(a, a))


def test_bilinear_refuses_non_square():
    with pytest.raises(UnsupportedParameter, match="layer 'up': bilinear filler needs a square kernel, got 3x4"):
        fill(torch.empty(1, 1, 3, 4), fp(type="bilinear"), layer_name="up")


def test_constant_and_default():
    assert torch.equal(fill(torch.empty(3), fp(type="constant", value=2.5)), torch.full((3,), 2.5))
    assert torch.equal(fill(torch.ones(3), fp()), torch.zeros(3))  # type defaults to constant 0


def test_uniform_range_and_mean():
    torch.manual_seed(0)
    t = fill(torch.empty(100000), fp(type="uniform", min=-2, max=3))
    assert t.min() >= -2 and t.max() < 3
    assert abs(t.mean().item() - 0.5) < 0.03


def test_gaussian_stats_and_sparse():
    torch.manual_seed(0)
    t = fill(torch.empty(200, 500), fp(type="gaussian", mean=1, std=0.5))
    assert abs(t.mean().item() - 1) < 0.01 and abs(t.std().item() - 0.5) < 0.01
    t = fill(torch.empty(200, 500), fp(type="gaussian", std=1, sparse=50))
    frac = (t != 0).float().mean().item()  # p = sparse / num_outputs = 50/200
    assert abs(frac - 0.25) < 0.01


def test_positive_unitball_rows_sum_to_one():
    torch.manual_seed(0)
    t = fill(torch.empty(5, 3, 4), fp(type="positive_unitball"))
    assert (t >= 0).all()
    torch.testing.assert_close(t.reshape(5, -1).sum(1), torch.ones(5))


@pytest.mark.parametrize("norm,n", [(0, 3 * 5 * 5), (1, 64 * 5 * 5), (2, (3 * 25 + 64 * 25) / 2)])
def test_xavier_bound(norm, n):
    torch.manual_seed(0)
    t = fill(torch.empty(64, 3, 5, 5), fp(type="xavier", variance_norm=norm))
    bound = math.sqrt(3.0 / n)
    assert t.abs().max() <= bound and t.abs().max() > 0.95 * bound
    assert abs(t.std().item() - bound / math.sqrt(3)) < 0.05 * bound


@pytest.mark.parametrize("norm,n", [(0, 30), (1, 200), (2, 115)])
def test_msra_std(norm, n):
    torch.manual_seed(0)
    t = fill(torch.empty(200, 30, 10), fp(type="msra", variance_norm=norm))  # fan_in 300, fan_out 2000
    n = {0: 300, 1: 2000, 2: 1150}[norm]
    assert abs(t.std().item() - math.sqrt(2.0 / n)) < 0.02 * math.sqrt(2.0 / n)


def test_fans_of_1d_blob():
    torch.manual_seed(0)
    t = fill(torch.empty(10000), fp(type="xavier", variance_norm=1))  # fan_out = count for 1-d
    assert t.abs().max() <= math.sqrt(3.0 / 10000)


def test_errors():
    with pytest.raises(UnsupportedParameter, match="layer 'c': unknown filler type 'gausian'"):
        fill(torch.empty(3), fp(type="gausian"), layer_name="c")
    with pytest.raises(UnsupportedParameter, match="filler 'xavier' does not support sparse"):
        fill(torch.empty(3, 3), fp(type="xavier", sparse=2))


def test_seeded_fill_is_reproducible():
    torch.manual_seed(7)
    a = fill(torch.empty(4, 4), fp(type="gaussian"))
    torch.manual_seed(7)
    b = fill(torch.empty(4, 4), fp(type="gaussian"))
    assert torch.equal(a, b)
