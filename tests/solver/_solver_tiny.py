"""A tiny net for solver parity: three InnerProducts (ip1/ip2 share a weight by
param name), TanH, EuclideanLoss; data and target are Input blobs set once."""
from __future__ import annotations

import os
import textwrap

import numpy as np

NET = textwrap.dedent("""\
    name: "tiny"
    layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 4 dim: 6 } } }
    layer { name: "target" type: "Input" top: "target" input_param { shape { dim: 4 dim: 3 } } }
    layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "h1"
      param { name: "shared_w" lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
      inner_product_param { num_output: 6 } }
    layer { name: "t1" type: "TanH" bottom: "h1" top: "h1" }
    layer { name: "ip2" type: "InnerProduct" bottom: "h1" top: "h2"
      param { name: "shared_w" } param { lr_mult: 1 decay_mult: 1 }
      inner_product_param { num_output: 6 } }
    layer { name: "t2" type: "TanH" bottom: "h2" top: "h2" }
    layer { name: "ip3" type: "InnerProduct" bottom: "h2" top: "out"
      param { lr_mult: 0.5 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
      inner_product_param { num_output: 3 } }
    layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "target" top: "loss" }
    """)

# layer -> blob shapes; ip2's weight is ip1's (shared), so it is never set separately
SHAPES = {"ip1": [(6, 6), (6,)], "ip2": [(6, 6), (6,)], "ip3": [(3, 6), (3,)]}


def initial(seed: int = 0):
    rng = np.random.default_rng(seed)
    w = {name: [(rng.standard_normal(s) * 0.5).astype(np.float32) for s in shapes]
         for name, shapes in SHAPES.items()}
    w["ip2"][0] = w["ip1"][0]
    data = rng.standard_normal((4, 6)).astype(np.float32)
    target = rng.standard_normal((4, 3)).astype(np.float32)
    return w, data, target


def solver_text(net_path: str, prefix: str, **fields) -> str:
    lines = [f'net: "{net_path}"', f'snapshot_prefix: "{prefix}"', "solver_mode: CPU", "display: 0"]
    for k, v in fields.items():
        if isinstance(v, (list, tuple)):
            lines += [f"{k}: {x}" for x in v]
        elif isinstance(v, str):
            lines.append(f'{k}: "{v}"')
        else:
            lines.append(f"{k}: {v}")
    return "\n".join(lines) + "\n"


def write_case(d: str, name: str, **fields) -> str:
    """Write net + solver files under ``d``; returns the solver path."""
    os.makedirs(os.path.join(d, name), exist_ok=True)
    net_path = os.path.join(d, "net.prototxt")
    if not os.path.exists(net_path):
        with open(net_path, "w") as f:
            f.write(NET)
    sp = os.path.join(d, name, "solver.prototxt")
    with open(sp, "w") as f:
        f.write(solver_text(net_path, os.path.join(d, name, "snap"), **fields))
    return sp


# runs in the oracle's Python: one solver per case, weights after every iteration
DRIVER = textwrap.dedent("""\
    import json, sys
    import numpy as np
    import caffe
    caffe.set_mode_cpu()
    req = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.loads(REQ)
    init = np.load(req["init"])
    out = {}
    for case in req["cases"]:
        s = caffe.get_solver(case["solver"])
        net = s.net
        for name in ("ip1", "ip2", "ip3"):
            for i, b in enumerate(net.params[name]):
                b.data[...] = init[name + "/" + str(i)]
        net.blobs["data"].data[...] = init["data"]
        net.blobs["target"].data[...] = init["target"]
        if case.get("restore"):
            s.restore(case["restore"])
        for k in range(case["iters"]):
            s.step(1)
            for name in ("ip1", "ip2", "ip3"):
                for i, b in enumerate(net.params[name]):
                    out[case["name"] + "|" + str(s.iter) + "|" + name + "/" + str(i)] = b.data.copy()
        if case.get("snapshot_at_end"):
            s.snapshot()
    np.savez(req["out"], **out)
    """)


# Settings for each of Caffe's six solver types, shared by the NumPy-port and real-Caffe tests.
SOLVER_TYPE_SETTINGS = {
    "SGD": dict(base_lr=0.05, momentum=0.9),
    "Nesterov": dict(base_lr=0.05, momentum=0.9),
    "AdaGrad": dict(base_lr=0.05, delta=1e-6),
    "RMSProp": dict(base_lr=0.01, rms_decay=0.95, delta=1e-6),
    "AdaDelta": dict(base_lr=1.0, momentum=0.95, delta=1e-6),
    "Adam": dict(base_lr=0.01, momentum=0.9, momentum2=0.999, delta=1e-8),
}
