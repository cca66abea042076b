"""Flatten, Reshape and Tile (flatten_layer.cpp, reshape_layer.cpp, tile_layer.cpp) vs NumPy and real Caffe."""
from __future__ import annotations

import numpy as np
import pytest

from _layer_cases import check_against_caffe, ours
from _util import assert_close, make_layer, randn
from caffe_compat.errors import ShapeError, UnsupportedParameter

S = (2, 3, 5, 4)


def test_errors_name_layer_and_field():
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Reshape\): reshape_param.shape \[-1, -1\] contains more than one -1"):
        make_layer("Reshape", "reshape_param { shape { dim: -1 dim: -1 } }", [S], module="shape_ops")
    with pytest.raises(ShapeError, match=r"bottom count 120 \(\(2, 3, 5, 4\)\) is not divisible by the product of the given dimensions \(7\)"):
        make_layer("Reshape", "reshape_param { shape { dim: 7 dim: -1 } }", [S], module="shape_ops")
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type Tile\): tile_param.tiles must be given and positive \(got 0\)"):
        make_layer("Tile", "tile_param { tiles: 0 }", [S], module="shape_ops")


def test_reshape_shapes():
    def top(body, shape=S):
        return make_layer("Reshape", f"reshape_param {{ {body} }}", [shape], module="shape_ops").top_shapes[0]
    assert top("shape { dim: 0 dim: -1 }") == (2, 60)
    assert top("shape { dim: 0 dim: 0 dim: 2 dim: -1 }") == (2, 3, 2, 10)
    assert top("axis: 1 num_axes: 2 shape { dim: -1 }") == (2, 15, 4)
    assert top("axis: -1 num_axes: 0 shape { dim: 1 }") == (2, 3, 5, 4, 1)
    assert top("axis: 0 num_axes: 0 shape { dim: 1 }") == (1, 2, 3, 5, 4)


def _cases():
    a, b = randn(S, 1), randn(S, 2)
    a.reshape(-1)[::5] = b.reshape(-1)[::5]  # same inputs as the other shape-layer files
    d = lambda shape, k: randn(shape, 200 + k)  # noqa: E731
    cs = [
        dict(name="fl", type="Flatten", body="", bottoms=[a], diffs=[d((2, 60), 15)]),
        dict(name="fl2", type="Flatten", body="flatten_param { axis: 1 end_axis: 2 }", bottoms=[a], diffs=[d((2, 15, 4), 16)]),
        dict(name="rs", type="Reshape", body="reshape_param { shape { dim: 0 dim: -1 dim: 2 } }", bottoms=[a], diffs=[d((2, 30, 2), 17)]),
        dict(name="rs2", type="Reshape", body="reshape_param { axis: 1 num_axes: 2 shape { dim: -1 } }", bottoms=[a], diffs=[d((2, 15, 4), 18)]),
        dict(name="tile", type="Tile", body="tile_param { tiles: 3 }", bottoms=[a], diffs=[d((2, 9, 5, 4), 19)]),
        dict(name="tile3", type="Tile", body="tile_param { axis: -1 tiles: 2 }", bottoms=[a], diffs=[d((2, 3, 5, 8), 20)]),
    ]
    for c_ in cs:
        c_["module"] = "shape_ops"
    return cs


def test_cases_vs_numpy():
    # The NumPy truth for the oracle cases, so the default tier checks the same configurations.
    a = randn(S, 1)
    refs = {"fl": lambda b: b[0].reshape(2, 60), "fl2": lambda b: b[0].reshape(2, 15, 4),
            "rs": lambda b: b[0].reshape(2, 30, 2), "rs2": lambda b: b[0].reshape(2, 15, 4),
            "tile": lambda b: np.tile(b[0], (1, 3, 1, 1)), "tile3": lambda b: np.tile(b[0], (1, 1, 1, 2))}
    for c in _cases():
        _, (tops, gx, _) = ours(c)
        assert_close(tops[0], refs[c["name"]](c["bottoms"]), what=c["name"])
        g = c["diffs"][0]
        if c["type"] == "Tile":  # tile_layer.cpp Backward: the sum over the tiles
            n = 3 if c["name"] == "tile" else 2
            axis = 1 if c["name"] == "tile" else 3
            want = sum(np.split(g.astype(np.float64), n, axis))
        else:  # Flatten/Reshape share the diff: the same values in the bottom's shape
            want = g.reshape(S)
        assert_close(gx[0], want, what=f'{c["name"]} backward')
    assert a.shape == S


@pytest.mark.caffe
def test_shape_ops_vs_caffe():
    check_against_caffe(_cases())
