"""Helpers shared by the single-layer tests: build one layer, build an oracle net, compare."""
from __future__ import annotations

import importlib
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np
import torch
from google.protobuf import text_format

from caffe_compat.proto import caffe_pb2


def layer_param(text: str) -> "caffe_pb2.LayerParameter":
    """A LayerParameter from prototxt text (the body of ``layer { ... }``)."""
    lp = caffe_pb2.LayerParameter()
    text_format.Parse(text, lp)
    return lp


def make_layer(type_name: str, body: str, bottom_shapes: Sequence[Sequence[int]],
               phase: str = "TEST", name: str = "L", module: str | None = None,
               n_tops: int = 1):
    """Build the registered implementation of ``type_name`` for one layer.

    ``body`` is the rest of the layer text (``pooling_param { ... }`` etc.);
    ``module`` is imported first so the type is registered even before the
    package imports every layer module itself.
    """
    if module:
        importlib.import_module(f"caffe_compat.layers.{module}")
    from caffe_compat import layers

    bottoms = "".join(f' bottom: "b{i}"' for i in range(len(bottom_shapes)))
    tops = "".join(f' top: "t{i}"' for i in range(n_tops))
    lp = layer_param(f'name: "{name}" type: "{type_name}"{bottoms}{tops} {body}')
    return layers.get(type_name)(lp, [tuple(s) for s in bottom_shapes], phase)


def input_layer(name: str, shape: Sequence[int]) -> str:
    dims = " ".join(f"dim: {int(d)}" for d in shape)
    return f'layer {{ name: "{name}" type: "Input" top: "{name}" input_param {{ shape {{ {dims} }} }} }}\n'


def oracle_net(inputs: Mapping[str, Sequence[int]], layers_text: Iterable[str]) -> str:
    """A force_backward net: one Input layer per entry of ``inputs``, then ``layers_text``."""
    out = 'name: "oracle"\nforce_backward: true\n'
    for n, s in inputs.items():
        out += input_layer(n, s)
    for t in layers_text:
        out += t if t.endswith("\n") else t + "\n"
    return out


def for_oracle(body: str) -> str:
    """Rewrite BVLC ``round_mode`` into the oracle fork's field-13 dialect (``ceil_mode``)."""
    return body.replace("round_mode: FLOOR", "ceil_mode: false").replace("round_mode: CEIL", "ceil_mode: true")


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(shape: Sequence[int], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return np.asarray(rng(seed).standard_normal(tuple(shape)) * scale, dtype=np.float32)


def t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    # reshape: ascontiguousarray turns a 0-d array (a loss top's diff) into shape (1,)
    x = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32).reshape(np.shape(a)))
    return x.requires_grad_(grad)


def assert_close(got, want, rtol: float = 1e-5, atol: float = 1e-6, what: str = "") -> None:
    """|got - want| <= atol + rtol*|want| elementwise, NaNs in the same places, shapes equal."""
    got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    want = np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64),
                               rtol=rtol, atol=atol, equal_nan=True, err_msg=what)


def run_layer(layer, bottoms: Sequence[np.ndarray], top_diffs: Sequence[np.ndarray] | None = None
              ) -> Tuple[list, list, list]:
    """Forward (+ backward when ``top_diffs``) of one layer: (tops, bottom grads, param grads)."""
    xs = [t(b, grad=top_diffs is not None) for b in bottoms]
    out = layer(*xs)
    tops = list(out) if isinstance(out, tuple) else [out]
    if top_diffs is None:
        return [o.detach().numpy() for o in tops], [], []
    for p in layer.parameters():
        p.grad = None
    pairs = [(o, t(d)) for o, d in zip(tops, top_diffs) if d is not None and o.requires_grad]
    torch.autograd.backward([o for o, _ in pairs], [d for _, d in pairs])
    gx = [x.grad.numpy() if x.grad is not None else np.zeros_like(b) for x, b in zip(xs, bottoms)]
    gp = [p.grad.numpy() if p.grad is not None else np.zeros(tuple(p.shape), np.float32)
          for p in layer.blobs]
    return [o.detach().numpy() for o in tops], gx, gp


Blobs = Dict[str, np.ndarray]


class Case:
    """One layer configuration checked against real Caffe by ``oracle_check``.

    ``bottoms``: arrays fed as Input blobs; ``params``: blob values copied into both our
    layer and Caffe's (None: ours are copied into Caffe); ``top_diff``: whether backward runs.
    """

    def __init__(self, name, type_name, body, bottoms, params=None, backward=True,
                 rtol=1e-5, atol=1e-6, oracle_body=None):
        self.name, self.type_name, self.body = name, type_name, body
        self.bottoms, self.params, self.backward = bottoms, params, backward
        self.rtol, self.atol = rtol, atol
        self.oracle_body = oracle_body if oracle_body is not None else for_oracle(body)


def oracle_check(cases, phase: str = "TEST", force_backward: bool = True, seed: int = 100):
    """Run every case in ONE real-Caffe net and compare forward, bottom and param diffs.

    Returns {case name: (ours, caffe)} for extra assertions by the caller.
    """
    import _oracle

    inputs, layers, feeds, diffs, params, ours = {}, [], {}, {}, {}, {}
    for i, c in enumerate(cases):
        names = [f"c{i}_b{j}" for j in range(len(c.bottoms))]
        for n, b in zip(names, c.bottoms):
            inputs[n] = b.shape
            feeds[n] = b
        bl = " ".join(f'bottom: "{n}"' for n in names)
        layers.append(f'layer {{ name: "c{i}" type: "{c.type_name}" {bl} top: "c{i}_t" {c.oracle_body} }}')
        layer = make_layer(c.type_name, c.body, [b.shape for b in c.bottoms], phase=phase, name=f"c{i}")
        if c.params is not None:
            for p, v in zip(layer.blobs, c.params):
                p.data.copy_(torch.from_numpy(np.asarray(v, np.float32)).reshape(p.shape))
        if len(layer.blobs):
            params[f"c{i}"] = [p.detach().numpy().copy() for p in layer.blobs]
        g = randn(layer.top_shapes[0], seed=seed + i) if c.backward else None
        if g is not None:
            diffs[f"c{i}_t"] = g
        ours[c.name] = (layer,) + run_layer(layer, c.bottoms, [g] if g is not None else None)
    net = oracle_net(inputs, layers)
    if not force_backward:
        net = net.replace("force_backward: true\n", "force_backward: false\n")
    res = _oracle.caffe_run(net, params=params, inputs=feeds, top_diffs=diffs or None, phase=phase)
    for i, c in enumerate(cases):
        layer, tops, gx, gp = ours[c.name]
        assert_close(tops[0], res["data"][f"c{i}_t"], c.rtol, c.atol, f"{c.name} forward")
        if c.backward:
            for j, g in enumerate(gx):
                if force_backward:
                    assert_close(g, res["diff"][f"c{i}_b{j}"], c.rtol, c.atol, f"{c.name} bottom[{j}] diff")
            for j, g in enumerate(gp):
                assert_close(g, res["param_diffs"][f"c{i}/{j}"], c.rtol, c.atol, f"{c.name} param[{j}] diff")
        for j, p in enumerate(layer.blobs):  # stateful layers (BatchNorm) update blobs in forward
            assert_close(p, res["params"][f"c{i}/{j}"], c.rtol, c.atol, f"{c.name} blob[{j}] after")
    return {c.name: (ours[c.name], res) for c in cases}


def labels(shape, classes: int, seed: int, ignore=None) -> np.ndarray:
    """Integer class labels in [0, classes) as float32 (Caffe's label blobs); every 4th is ``ignore``."""
    lab = np.random.default_rng(seed).integers(0, classes, size=shape).astype(np.float32)
    if ignore is not None:
        lab.reshape(-1)[::4] = ignore
    return lab
