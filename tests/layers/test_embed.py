"""Embed against NumPy lookup and real Caffe (forward, weight/bias gradients), with index CHECKs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import Case, assert_close, make_layer, oracle_check, randn, run_layer
from caffe_compat.errors import UnsupportedParameter

BODY = "embed_param { num_output: 4 input_dim: 6 }"


def _filled(body, shape, seed):
    layer = make_layer("Embed", body, [shape], name="emb")
    vals = [randn(tuple(p.shape), seed=seed + j) for j, p in enumerate(layer.blobs)]
    for p, v in zip(layer.blobs, vals):
        p.data.copy_(torch.from_numpy(v))
    return layer, vals


def test_forward_and_weight_grads_vs_numpy():
    idx = np.array([[0, 5, 2], [2, 2, 1]], np.float32)
    layer, (w, b) = _filled(BODY, idx.shape, 3)
    g = randn((2, 3, 4), seed=9)
    (y,), (gx,), (gw, gb) = run_layer(layer, [idx], [g])
    assert_close(y, w[idx.astype(int)].astype(np.float64) + b)
    want_gw = np.zeros_like(w, dtype=np.float64)
    for (i, j), v in np.ndenumerate(idx):         # Backward_cpu: scatter-add top rows
        want_gw[int(v)] += g[i, j]
    assert_close(gw, want_gw)
    assert_close(gb, g.reshape(-1, 4).sum(0))
    assert not gx.any()                             # never backpropagates to the indices


@pytest.mark.parametrize("value,msg", [(6.0, r"outside \[0, input_dim = 6\)"), (-1.0, "outside"),
                                       (1.5, "not an integer")])
def test_index_checks(value, msg):
    layer, _ = _filled(BODY, (3,), 0)
    with pytest.raises(UnsupportedParameter, match=msg) as ei:
        layer(torch.tensor([0.0, value, 1.0]))
    assert "'emb'" in str(ei.value) and "Embed" in str(ei.value) and "(1,)" in str(ei.value)


@pytest.mark.caffe
def test_against_real_caffe():
    # No force_backward (Caffe refuses to backpropagate to Embed's bottom); loss_weight makes
    # Caffe run the layer's backward, with the top diff then replaced by ours.
    r = np.random.default_rng(4)
    cases = []
    for i, (body, shape) in enumerate([(BODY, (3, 5)), ("embed_param { num_output: 3 input_dim: 7 bias_term: false }", (4,))]):
        layer, vals = _filled(body, shape, 10 + i)
        dim = layer.input_dim
        cases.append(Case(f"embed{i}", "Embed", body, [r.integers(0, dim, shape).astype(np.float32)],
                          params=vals, oracle_body=body + " loss_weight: 1"))
    oracle_check(cases, force_backward=False)
