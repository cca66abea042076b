"""Many single-layer cases in ONE real-Caffe net (one subprocess), compared with ours.

A case is a dict: ``name``, ``type``, ``body`` (the layer's param text), ``bottoms`` (arrays),
``n_tops`` (1), ``diffs`` (one array or None per top; None everywhere = forward only),
``grad`` (indices of bottoms whose gradient is compared; default all), ``params`` (arrays
copied into both Caffe's and our blobs), ``dynamic_shape`` (skip the top_shapes check), ``tol`` ((rtol, atol), default (1e-5, 1e-6)).
Each case gets its own input blobs, so gradients never mix between cases.
"""
from __future__ import annotations

import numpy as np
import torch

import _oracle
from _util import assert_close, make_layer, oracle_net, run_layer


def _net(cases) -> str:
    inputs, layers = {}, []
    for c in cases:
        names = [f'{c["name"]}_b{i}' for i in range(len(c["bottoms"]))]
        for n, a in zip(names, c["bottoms"]):
            inputs[n] = a.shape
        bottoms = "".join(f' bottom: "{n}"' for n in names)
        tops = "".join(f' top: "{c["name"]}_t{j}"' for j in range(c.get("n_tops", 1)))
        layers.append(f'layer {{ name: "{c["name"]}" type: "{c["type"]}"{bottoms}{tops} {c.get("body", "")} }}')
    return oracle_net(inputs, layers)


def ours(c, phase="TEST"):
    layer = make_layer(c["type"], c.get("body", ""), [a.shape for a in c["bottoms"]], phase=phase,
                       name=c["name"], module=c.get("module"), n_tops=c.get("n_tops", 1))
    with torch.no_grad():
        for p, v in zip(layer.blobs, c.get("params", [])):
            p.copy_(torch.from_numpy(np.asarray(v, np.float32)))
    diffs = c.get("diffs")
    return layer, run_layer(layer, c["bottoms"], diffs)


def check_against_caffe(cases, phase="TEST"):
    """Run every case in real Caffe (one net) and in caffekt; assert forward and backward agree."""
    _oracle.require_oracle()
    feeds = {f'{c["name"]}_b{i}': a for c in cases for i, a in enumerate(c["bottoms"])}
    diffs = {f'{c["name"]}_t{j}': d for c in cases for j, d in enumerate(c.get("diffs") or []) if d is not None}
    params = {c["name"]: c["params"] for c in cases if c.get("params")}
    res = _oracle.caffe_run(_net(cases), params=params, inputs=feeds, top_diffs=diffs or None, phase=phase)
    for c in cases:
        rtol, atol = c.get("tol", (1e-5, 1e-6))
        layer, (tops, gx, gp) = ours(c, phase)
        for j, top in enumerate(tops):
            want = res["data"][f'{c["name"]}_t{j}']
            if not c.get("dynamic_shape"):  # Filter: the top's length depends on the data
                assert tuple(layer.top_shapes[j]) == want.shape, f'{c["name"]}: top_shapes[{j}]'
            assert_close(top, want, rtol, atol, f'{c["name"]} top {j}')
        if diffs:
            for i in c.get("grad", range(len(c["bottoms"]))):
                assert_close(gx[i], res["diff"][f'{c["name"]}_b{i}'], rtol, atol, f'{c["name"]} d bottom {i}')
            for k, g in enumerate(gp):
                assert_close(g, res["param_diffs"][f'{c["name"]}/{k}'], rtol, atol, f'{c["name"]} d param {k}')
    return res
