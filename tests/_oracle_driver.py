"""Runs inside the oracle's own Python (with pycaffe); see _oracle.caffe_run."""
import json
import sys

import numpy as np


def main():
    req = json.loads(sys.argv[1])
    import caffe  # only ever imported here, in the oracle's own process

    caffe.set_mode_cpu()
    if req.get("seed") is not None:
        caffe.set_random_seed(int(req["seed"]))
    phase = caffe.TRAIN if req["phase"] == "TRAIN" else caffe.TEST
    if req.get("weights"):
        net = caffe.Net(req["prototxt"], phase, weights=req["weights"])
    else:
        net = caffe.Net(req["prototxt"], phase)
    with np.load(req["arrays"]) as z:
        arrays = {k: z[k] for k in z.files}
    topdiffs = {}
    for key, a in arrays.items():
        kind, rest = key.split("|", 1)
        if kind == "param":
            name, i = rest.rsplit("|", 1)
            blob = net.params[name][int(i)]
            blob.reshape(*a.shape) if blob.data.size != a.size else None
            blob.data[...] = a.reshape(blob.data.shape)
        elif kind == "input":
            net.blobs[rest].reshape(*a.shape)
            net.blobs[rest].data[...] = a
        elif kind == "topdiff":
            topdiffs[rest] = a
    if any(k.startswith("input|") for k in arrays):
        net.reshape()
        for key, a in arrays.items():  # reshape() keeps data, but be explicit
            if key.startswith("input|"):
                net.blobs[key.split("|", 1)[1]].data[...] = a
    net.forward()
    out = {}
    if req.get("backward"):
        for name, a in topdiffs.items():
            net.blobs[name].diff[...] = a.reshape(net.blobs[name].diff.shape)
        net.backward()
        for name, blob in net.blobs.items():
            out[f"diff|{name}"] = blob.diff.copy()
        for name, blobs in net.params.items():
            for i, b in enumerate(blobs):
                out[f"param_diffs|{name}/{i}"] = b.diff.copy()
    for name, blob in net.blobs.items():
        out[f"data|{name}"] = blob.data.copy()
    for name, blobs in net.params.items():
        for i, b in enumerate(blobs):
            out[f"params|{name}/{i}"] = b.data.copy()
    if req.get("save"):
        net.save(req["save"])
    np.savez(req["out"], **out)


if __name__ == "__main__":
    main()
