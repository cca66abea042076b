"""The sweep: every fixture prototxt, every shipped net and a family of random small nets drawn
from the layer registry are loaded, run, exported to ONNX, run in onnxruntime and judged against
our module in float64 (``export_onnx_file``); nothing may end in an untyped exception.

Train/test nets among the fixtures are swept by ``converters/test_export_train_nets.py`` (their
deploy form); solvers are read.  VGG16-sized nets and the AlexNet twins of CaffeNet are in the
slow tier.
"""
from __future__ import annotations

import os
import random

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from _random_nets import NOT_GENERATED, random_net, uncovered  # noqa: E402
from caffe_compat.layers._registry import known_types  # noqa: E402
from conftest import fixture_prototxts  # noqa: E402

RANDOM_NETS = 60


def _randomized(prototxt: str, path: str) -> str:
    """A caffemodel for ``prototxt``'s export form: weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2)."""
    from caffe_compat.net import load_net
    from caffe_compat.weights import save_caffemodel
    from caffekt.converters.deploy_form import export_form

    form, _p, _d = export_form(prototxt)
    net = load_net(form)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.learnable_params():
            std = (1.0 / max(1, p[0].numel())) ** 0.5 if p.dim() > 1 else 0.1
            p.normal_(0.0, std, generator=g)
    save_caffemodel(net, path)
    return path


def _export_ok(prototxt: str, weights, tmp_path) -> None:
    from caffekt.converters.onnx_export import export_onnx_file
    rep = export_onnx_file(prototxt, weights, str(tmp_path / "net.onnx"))
    assert rep.ok and rep.written, str(rep)
    for o in rep.outputs:
        assert o.onnx_f64_err <= o.limit


# 10+ s each on a shared CPU (CaffeNet's deploy stays in the default tier for the AlexNet family)
_SLOW = ("vgg16", "9tower", "bvlc_alexnet", "alexnet_s4_deploy")


def _deploys():
    from caffekt.prototxt import path as shipped
    from caffekt import prototxt as pkg
    out = [p for p in fixture_prototxts()
           if not os.path.basename(p).startswith(("train", "test")) and "solver" not in p]
    folder = os.path.dirname(pkg.__file__)
    out += [shipped(f[:-len(".prototxt")]) for f in sorted(os.listdir(folder)) if f.endswith(".prototxt")]
    return [pytest.param(p, id=os.path.basename(os.path.dirname(p)) + "/" + os.path.basename(p),
                         marks=[pytest.mark.slow] if any(w in p.lower() for w in _SLOW) else [])
            for p in out]


@pytest.mark.parametrize("prototxt", _deploys())
def test_sweep_deploy_and_shipped_nets(prototxt, tmp_path):
    _export_ok(prototxt, _randomized(prototxt, str(tmp_path / "w.caffemodel")), tmp_path)


@pytest.mark.parametrize("solver", [p for p in fixture_prototxts() if "solver" in os.path.basename(p)])
def test_sweep_solvers_read(solver):
    from caffe_compat.io import read_solver
    sp = read_solver(solver)
    sp = sp[0] if isinstance(sp, tuple) else sp
    assert sp.base_lr > 0


def test_random_nets_cover_the_registry():
    assert uncovered(known_types()) == []
    assert len(known_types()) - len(NOT_GENERATED) >= 30


@pytest.mark.parametrize("chunk", range(4))
def test_sweep_random_nets(chunk, tmp_path):
    n = RANDOM_NETS // 4
    for i in range(chunk * n, (chunk + 1) * n):
        text = random_net(random.Random(i), f"random{i}")
        p = tmp_path / f"r{i}.prototxt"
        p.write_text(text)
        try:
            _export_ok(str(p), None, tmp_path)
        except AssertionError as e:
            raise AssertionError(f"random net {i}:\n{text}\n{e}") from None
