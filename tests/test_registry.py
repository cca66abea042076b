"""The layer registry: one entry per Caffe type, each documented and tested; user registration."""
from __future__ import annotations

import glob
import inspect
import os
import pkgutil
import re

import pytest
import torch

import caffe_compat as cc
from caffe_compat import layers as L
from caffe_compat.errors import UnknownLayerType

TESTS = os.path.dirname(os.path.abspath(__file__))
# Every BVLC type the issue lists, the fork layers the paper needs, and the data types.
EXPECTED = {
    "AbsVal", "Accuracy", "ArgMax", "BNLL", "BatchNorm", "BatchReindex", "Bias", "Clip", "Concat",
    "ContrastiveLoss", "Convolution", "Crop", "Data", "Deconvolution", "Dropout", "DummyData", "ELU",
    "Eltwise", "Embed", "EuclideanLoss", "Exp", "Filter", "Flatten", "HDF5Data", "HingeLoss", "Im2col",
    "ImageData", "InfogainLoss", "InnerProduct", "Input", "LRN", "LSTM", "LSTMUnit", "Log", "MVN",
    "MemoryData", "MergeData", "MultinomialLogisticLoss", "PReLU", "Parameter", "Pooling", "Power",
    "RNN", "ROIPooling", "ReLU", "Reduction", "Reshape", "SPP", "Scale", "Sigmoid",
    "SigmoidCrossEntropyLoss", "Silence", "Slice", "SmoothL1Loss", "Softmax", "SoftmaxWithLoss", "Split",
    "Swish", "TanH", "Threshold", "Tile", "WindowData",
}


# tests/layers files that check every type at once rather than one module
CROSS_CUTTING = {"gradcheck"}


def _module_test_file(cls) -> str:
    """tests/layers/test_<module>.py for the module that implements ``cls`` (tests mirror the package)."""
    return os.path.join(TESTS, "layers", f"test_{cls.__module__.rsplit('.', 1)[-1]}.py")


def test_registry_holds_exactly_the_expected_types():
    assert set(L.known_types()) == EXPECTED


@pytest.mark.parametrize("type_name", sorted(EXPECTED))
def test_each_type_names_its_caffe_source_and_is_tested(type_name):
    cls = L.get(type_name)
    doc = (inspect.getmodule(cls).__doc__ or "") + (cls.__doc__ or "")
    assert re.search(r"\w+\.(cpp|cu|hpp)\b", doc), f"{type_name}: docstring names no Caffe source file"
    # its module's own test file exists and builds it: the type string appears quoted there
    path = _module_test_file(cls)
    assert os.path.isfile(path), f"{type_name}: {cls.__module__} has no test file {os.path.relpath(path, TESTS)}"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert re.search(rf"""["']{re.escape(type_name)}["']""", text), \
        f"{type_name}: {os.path.relpath(path, TESTS)} does not mention it"


def test_every_layer_module_has_its_test_file():
    mods = {L.get(t).__module__.rsplit(".", 1)[-1] for t in EXPECTED}
    files = {os.path.basename(p)[5:-3] for p in glob.glob(os.path.join(TESTS, "layers", "test_*.py"))}
    assert not mods - files, f"layer modules without tests/layers/test_<module>.py: {sorted(mods - files)}"
    # The other direction too: a test file outlives no module (renames), bar the cross-cutting ones.
    package = {m.name for m in pkgutil.iter_modules(L.__path__)}
    stray = files - package - CROSS_CUTTING
    assert not stray, f"tests/layers files naming no module of caffe_compat/layers: {sorted(stray)}"


def test_unknown_type_lists_known_types_and_the_closest():
    with pytest.raises(UnknownLayerType) as e:
        L.get("Convolutoin", "c1")
    msg = str(e.value)
    assert "layer 'c1'" in msg and "Did you mean 'Convolution'" in msg and "Known types: AbsVal" in msg


def test_python_layers_are_refused_with_the_way_out():
    with pytest.raises(UnknownLayerType, match="Python layers run arbitrary code.*register"):
        L.get("Python")


def test_user_registration_and_duplicates():
    with pytest.raises(ValueError, match="'ReLU' is already registered"):
        @L.register("ReLU")
        class Again(L.CaffeLayer):
            pass

    @L.register("TimesTwoForTest", bottoms=1, tops=1)
    class TimesTwo(L.CaffeLayer):
        """TimesTwoForTest: y = 2x (a user layer; no Caffe source)."""

        def __init__(self, lp, bottom_shapes, phase):
            super().__init__(lp, bottom_shapes, phase)
            self.top_shapes = [self.bottom_shapes[0]]

        def forward(self, x):
            return x * 2

    try:
        net = cc.load_net(cc.read_prototxt(
            'layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 2 dim: 3 } } }\n'
            'layer { name: "t" type: "TimesTwoForTest" bottom: "d" top: "t" }'))
        x = torch.arange(6.0).reshape(2, 3)
        assert torch.equal(net(x)["t"], 2 * x)
        with pytest.raises(Exception, match="takes exactly 1 bottom"):
            cc.load_net(cc.read_prototxt(
                'layer { name: "d" type: "Input" top: "d" top: "e" input_param { shape { dim: 1 } } }\n'
                'layer { name: "t" type: "TimesTwoForTest" bottom: "d" bottom: "e" top: "t" }'))
    finally:
        L._registry._REGISTRY.pop("TimesTwoForTest", None)
