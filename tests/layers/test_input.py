"""Input, the data layers and DummyData (input.py): the top shapes each Caffe DataLayerSetUp sets
(input_layer.cpp, data_layer.cpp, image_data_layer.cpp, window_data_layer.cpp, memory_data_layer.cpp,
hdf5_data_layer.cpp) and DummyData's fillers (dummy_data_layer.cpp).

Net-level behaviour (tops becoming named inputs) is tested in tests/test_net.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _layer_cases import check_against_caffe, ours
from _util import layer_param, make_layer
from caffe_compat import layers as L
from caffe_compat.errors import ShapeError, UnsupportedParameter


def build(type_name, body, tops=("data",), input_shapes=None):
    """A data layer with the given tops (no bottoms), as the net builder makes it."""
    t = "".join(f' top: "{n}"' for n in tops)
    lp = layer_param(f'name: "d" type: "{type_name}"{t} {body}')
    return L.get(type_name)(lp, [], "TEST", input_shapes=input_shapes)


@pytest.mark.parametrize("type_name,body,tops,want", [
    ("Input", "input_param { shape { dim: 2 dim: 3 } }", ("a", "b"), [(2, 3), (2, 3)]),
    ("Input", "input_param { shape { dim: 2 } shape { dim: 4 dim: 1 } }", ("a", "b"), [(2,), (4, 1)]),
    ("Data", "transform_param { crop_size: 5 } data_param { batch_size: 8 }", ("data", "label"), None),
    ("ImageData", "image_data_param { batch_size: 4 new_height: 40 new_width: 50 }", ("data", "label"),
     [(4, 3, 40, 50), (4,)]),
    ("ImageData", "image_data_param { batch_size: 4 is_color: false } transform_param { crop_size: 32 }",
     ("data",), [(4, 1, 32, 32)]),
    ("WindowData", "window_data_param { batch_size: 6 } transform_param { crop_size: 24 }", ("data", "label"),
     [(6, 3, 24, 24), (6,)]),
    ("MemoryData", "memory_data_param { batch_size: 5 channels: 2 height: 7 width: 9 }", ("data", "label"),
     [(5, 2, 7, 9), (5,)]),
])
def test_declared_top_shapes(type_name, body, tops, want):
    if want is None:  # Data: C lives in the database
        with pytest.raises(ShapeError, match=r"layer 'd' \(type Data\) becomes a net input.*"
                                             r"input_shapes=\{'data': \(8, \?, 5, 5\)\}"):
            build(type_name, body, tops)
        want = [(8, 3, 5, 5), (8,)]
        lay = build(type_name, body, tops, input_shapes={"data": (8, 3, 5, 5)})
    else:
        lay = build(type_name, body, tops)
    assert lay.top_shapes == want
    xs = [torch.randn(s) for s in want]
    out = lay(*xs)
    out = out if isinstance(out, tuple) else (out,)
    assert all(o is x for o, x in zip(out, xs))  # the fed tensors pass through unchanged


def test_fork_siamese_data_shapes_and_hint():
    body = "transform_param { siamese_size: 9 patch_size: 64 } data_param { batch_size: 8 }"
    with pytest.raises(ShapeError, match=r"siamese_size 9 x the database's channels, e\.g\. 27.*\(8, \?, 64, 64\)"):
        build("Data", body, ("data", "label"))
    assert build("Data", body, ("data", "label"), {"data": (8, 27, 64, 64)}).top_shapes == [(8, 27, 64, 64), (8,)]


def test_input_errors_and_overrides():
    with pytest.raises(UnsupportedParameter, match=r"layer 'd' \(type Input\): input_param.shape must be given once, "
                                                    r"once per top blob, or not at all: 3 tops vs\. 2 shapes"):
        build("Input", "input_param { shape { dim: 1 } shape { dim: 2 } }", ("a", "b", "c"))
    with pytest.raises(ShapeError, match=r"shape of its top\(s\) 'a' cannot be told"):
        build("Input", "", ("a",))
    with pytest.raises(ShapeError, match=r"input_shapes\['a'\] = \[2, -1\] has a negative dimension"):
        build("Input", "", ("a",), {"a": (2, -1)})
    lay = build("Input", "input_param { shape { dim: 2 dim: 3 } }", ("a",), {"a": (7, 3)})
    assert lay.top_shapes == [(7, 3)]  # input_shapes wins over the prototxt
    with pytest.raises(ShapeError, match=r"HDF5Data shapes live in the \.h5 files"):
        build("HDF5Data", "hdf5_data_param { batch_size: 2 }", ("data", "label"))
    assert build("HDF5Data", "hdf5_data_param { batch_size: 2 }", ("x",), {"x": (2, 4)}).top_shapes == [(2, 4)]


def test_dummy_data_shapes_and_fillers():
    lay = make_layer("DummyData", "dummy_data_param { num: 2 channels: 3 height: 4 width: 5 num: 1 channels: 1 "
                     "height: 1 width: 2 data_filler { type: 'constant' value: 1.5 } }", [], module="input", n_tops=2)
    assert lay.top_shapes == [(2, 3, 4, 5), (1, 1, 1, 2)]
    a, b = lay()
    assert torch.equal(a, torch.full((2, 3, 4, 5), 1.5)) and torch.equal(b, torch.full((1, 1, 1, 2), 1.5))
    lay = make_layer("DummyData", "dummy_data_param { shape { dim: 4000 } data_filler { type: 'gaussian' std: 2 } }",
                     [], module="input")
    y1, y2 = lay(), lay()
    assert not torch.equal(y1, y2)  # refilled at every forward, as Caffe's refill_
    assert abs(float(y1.mean())) < 0.15 and abs(float(y1.std()) - 2.0) < 0.15  # 4000 draws: sd of mean 0.03
    assert torch.equal(make_layer("DummyData", "dummy_data_param { shape { dim: 3 } }", [], module="input")(),
                       torch.zeros(3))  # no filler: constant 0


@pytest.mark.parametrize("body,n_tops,msg", [
    ("dummy_data_param { shape { dim: 1 } data_filler { } data_filler { } }", 3,
     "number of data fillers must be 0, 1 or equal to the number of tops: 3; you specified 2"),
    ("dummy_data_param { num: 1 channels: 1 height: 1 width: 1 shape { dim: 1 } }", 1,
     "both shape and legacy fields were specified"),
    ("dummy_data_param { num: 1 num: 1 channels: 1 height: 1 width: 1 }", 3, r"must specify 'num' once, or once per top blob \(3\); specified 2"),
    ("dummy_data_param { shape { dim: 1 } shape { dim: 2 } }", 3, r"must specify 'shape' once, or once per top blob \(3\); specified 2"),
])
def test_dummy_data_errors(body, n_tops, msg):
    with pytest.raises(UnsupportedParameter, match=r"layer 'L' \(type DummyData\): " + msg):
        make_layer("DummyData", body, [], module="input", n_tops=n_tops)


def test_dummy_data_case_runs_in_the_default_tier():
    lay, (tops, _, _) = ours(_dummy_cases()[0])
    assert lay.top_shapes == [(2, 3), (4,)]
    assert np.array_equal(tops[0], np.full((2, 3), 7.0)) and np.array_equal(tops[1], np.full((4,), -0.5))


def _dummy_cases():
    return [dict(name="dd", type="DummyData", bottoms=[], n_tops=2, module="input",
                 body="dummy_data_param { shape { dim: 2 dim: 3 } shape { dim: 4 } "
                      "data_filler { type: 'constant' value: 7 } data_filler { type: 'constant' value: -0.5 } }")]


@pytest.mark.caffe
def test_dummy_data_vs_caffe():
    check_against_caffe(_dummy_cases())
