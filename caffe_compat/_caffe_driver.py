"""The half of the real-Caffe runner that lives inside the oracle's own Python.

``caffe_compat.parity.caffe_forward`` (and through it ``tests/_oracle.py``)
starts ``<oracle python> -I _caffe_driver.py REQUEST.json``; ``-I`` keeps this
folder off ``sys.path`` (its ``io.py`` etc. must not shadow anything), and
this file imports nothing from caffekt: the oracle's venv does not have it.
The request names a prototxt, an ``.npz`` of arrays to load and an ``.npz`` to
write.  Array keys are ``kind|name`` (``param|conv1|0``, ``input|data``,
``topdiff|prob``); result keys are ``data|blob``, ``diff|blob``,
``params|layer/i`` and ``param_diffs|layer/i``.

Only this process ever imports caffe: a glog CHECK failure aborts it, not
the test run, and torch never shares an address space with libcaffe.
"""
import json
import os
import random
import sys

import numpy as np


def _load_arrays(path):
    params, inputs, topdiffs = {}, {}, {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            kind, rest = key.split("|", 1)
            if kind == "param":
                layer, index = rest.rsplit("|", 1)
                params[(layer, int(index))] = z[key]
            elif kind == "input":
                inputs[rest] = z[key]
            elif kind == "topdiff":
                topdiffs[rest] = z[key]
            else:
                raise ValueError(f"unknown array kind {kind!r} in {key!r}")
    return params, inputs, topdiffs


def _set_params(net, params):
    for (layer, index), a in params.items():
        if layer not in net.params:
            raise KeyError(f"layer {layer!r} has no learnable blobs in this net "
                           f"(layers with params: {sorted(net.params.keys())})")
        blob = net.params[layer][index]
        if blob.data.shape != a.shape:
            if blob.data.size != a.size:
                raise ValueError(f"param {layer}/{index}: net wants shape {blob.data.shape}, "
                                 f"got {a.shape}")
            a = a.reshape(blob.data.shape)  # e.g. legacy 4-D InnerProduct weights
        blob.data[...] = a


def _set_inputs(net, inputs):
    for name, a in inputs.items():
        if name not in net.blobs:
            raise KeyError(f"no blob {name!r} in the net (blobs: {list(net.blobs.keys())})")
        net.blobs[name].reshape(*a.shape)
    if inputs:
        net.reshape()  # propagate the new input shapes through every layer
    for name, a in inputs.items():
        net.blobs[name].data[...] = a


def main():
    with open(sys.argv[1]) as f:
        req = json.load(f)
    # Seed everything that might draw numbers before caffe is touched: fillers
    # run inside the Net constructor, Dropout masks inside forward.
    seed = req.get("seed")
    if seed is not None:
        random.seed(seed)
        np.random.seed(seed)

    import caffe  # the only place caffe is imported

    caffe.set_mode_cpu()
    if seed is not None:
        caffe.set_random_seed(int(seed))
    phase = {"TRAIN": caffe.TRAIN, "TEST": caffe.TEST}[req["phase"]]
    if req.get("weights"):
        net = caffe.Net(req["prototxt"], phase, weights=req["weights"])
    else:
        net = caffe.Net(req["prototxt"], phase)

    params, inputs, topdiffs = _load_arrays(req["arrays"])
    _set_params(net, params)
    _set_inputs(net, inputs)
    net.forward()

    out = {}
    for name, blob in net.blobs.items():
        out[f"data|{name}"] = blob.data.copy()
    if req.get("backward"):
        for name, a in topdiffs.items():
            net.blobs[name].diff[...] = a.reshape(net.blobs[name].diff.shape)
        net.backward()
        for name, blob in net.blobs.items():
            out[f"diff|{name}"] = blob.diff.copy()
        for layer, blobs in net.params.items():
            for i, b in enumerate(blobs):
                out[f"param_diffs|{layer}/{i}"] = b.diff.copy()
    for layer, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out[f"params|{layer}/{i}"] = b.data.copy()
    out["meta|layers"] = np.array([f"{n}\t{l.type}" for n, l in zip(net._layer_names, net.layers)])

    if req.get("save"):
        net.save(req["save"])
    tmp = req["out"] + ".part.npz"
    np.savez(tmp, **out)
    os.replace(tmp, req["out"])


if __name__ == "__main__":
    main()
