"""Linear probes: pooling geometry of the FAIR/VISSL protocol, learning a separable signal, chance on noise."""
import csv

import numpy as np
import torch

from caffekt.kt import probes as P

S4_227 = {"conv1": (55, 96), "conv2": (27, 256), "conv3": (13, 384), "conv4": (13, 384), "conv5": (13, 256)}
WANT = {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}


def _out(n, k, s):
    return (n - k) // s + 1


def test_stride4_pooling_gives_the_protocol_grids():
    want_ks = {"conv1": (10, 5), "conv2": (7, 4), "conv3": (5, 2), "conv4": (5, 2), "conv5": (3, 2)}
    for layer, (n, c) in S4_227.items():
        k, s = P.pool_params(layer, n)
        assert (k, s) == want_ks[layer]
        assert c * _out(n, k, s) ** 2 == WANT[layer]


def test_stride2_pooling_is_fairs_table():
    for layer, (n, k, s) in P.STRIDE2_227.items():
        assert P.pool_params(layer, n, stride2=True) == (k, s)
    assert [_out(n, k, s) for n, k, s in P.STRIDE2_227.values()] == [10, 6, 5, 5, 6]
    assert P.pool_params("conv5", 3) == (1, 1)          # smaller than its grid: kept whole


def test_heads_on_shipped_nets():
    from caffekt.kt.features import load_model
    from caffekt.kt.cc import deploy_prototxt
    net, _, _ = load_model(deploy_prototxt())
    assert [h.dim for h in P.plan_heads(net)] == list(WANT.values())
    import caffekt.prototxt as shipped
    import os
    tower = os.path.join(os.path.dirname(shipped.__file__), "jigsaw_cfn_tower_s2_deploy.prototxt")
    net2, _, _ = load_model(tower, input_size=227)
    heads = P.plan_heads(net2)
    assert [(h.kernel, h.stride) for h in heads] == [v[1:] for v in P.STRIDE2_227.values()]
    assert [h.dim for h in heads] == list(WANT.values())
    # the pooled blobs really have those sizes
    with torch.no_grad():
        blobs = net2.forward_all(data=torch.zeros(1, 3, 227, 227))
    assert {k: v.shape[1] for k, v in P.pooled(blobs, heads).items()} == WANT


def _synthetic(n, d, classes, rng, signal):
    y = rng.integers(0, classes, n)
    x = rng.normal(size=(n, d)).astype(np.float32)
    if signal:
        x[np.arange(n), y] += 3.0     # class c lights up dimension c
    return x, y


def test_probe_learns_separable_signal_and_not_noise():
    rng = np.random.default_rng(0)
    heads = [P.Head("conv1", 1, 1, 40), P.Head("conv2", 1, 1, 40)]
    xs, ys = _synthetic(600, 40, 4, rng, True)
    vs, vy = _synthetic(300, 40, 4, rng, True)
    # conv2 sees the signal, conv1 only noise with the same labels
    noise, vnoise = rng.normal(size=xs.shape).astype(np.float32), rng.normal(size=vs.shape).astype(np.float32)
    settings = P.ProbeSettings(epochs=15, batch_size=50, lr=0.05)
    acc = P.train_heads({"conv1": noise, "conv2": xs}, ys, {"conv1": vnoise, "conv2": vs}, vy, heads, 4, settings)
    assert acc["conv2"] > 0.9
    assert abs(acc["conv1"] - 0.25) < 0.1
    # random labels: nothing to learn
    acc2 = P.train_heads({"conv1": xs, "conv2": xs}, rng.integers(0, 4, 600), {"conv1": vs, "conv2": vs},
                         rng.integers(0, 4, 300), heads, 4, settings)
    assert all(abs(a - 0.25) < 0.1 for a in acc2.values())


def test_table_files(tmp_path):
    table = {"student": {"conv1": 0.5, "conv2": 0.625}, "random init": {"conv1": 0.25, "conv2": 0.125}}
    P.write_table(table, str(tmp_path), chance=0.125)
    md = (tmp_path / "probes.md").read_text()
    assert "| student | 50.0 | 62.5 |" in md and "| random init | 25.0 | 12.5 |" in md and "chance 12.5%" in md
    rows = list(csv.reader(open(tmp_path / "probes.csv")))
    assert rows[0] == ["model", "conv1", "conv2"] and rows[1] == ["student", "0.500000", "0.625000"]
    from caffekt.kt.montage import accuracy_bars_png
    accuracy_bars_png(table, str(tmp_path / "p.png"), chance=0.125)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_probe_model_on_images(tmp_path):
    """End to end on images: a tiny net whose conv1 sees colour; labels = dominant colour channel."""
    import cv2
    from caffe_compat.net import load_net
    rng = np.random.default_rng(0)
    lines = {"train": [], "val": []}
    for part, n in (("train", 48), ("val", 24)):
        for i in range(n):
            c = i % 3
            img = rng.integers(0, 80, (16, 16, 3)).astype(np.uint8)
            img[:, :, c] += 150
            p = tmp_path / f"{part}{i}.png"
            cv2.imwrite(str(p), img)
            lines[part].append(f"{p.name} {c}\n")
    for part in lines:
        (tmp_path / f"{part}.txt").write_text("".join(lines[part]))
    proto = tmp_path / "n.prototxt"
    proto.write_text("""layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 14 dim: 14 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 6 kernel_size: 3 stride: 1 weight_filler { type: "gaussian" std: 0.3 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }""")
    torch.manual_seed(0)
    net = load_net(str(proto))
    acc = P.probe_model(net, str(tmp_path / "train.txt"), str(tmp_path / "val.txt"), layers=["conv1"],
                        settings=P.ProbeSettings(epochs=20, batch_size=16, lr=0.05))
    assert acc["conv1"] > 0.9
