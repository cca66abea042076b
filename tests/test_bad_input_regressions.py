"""One regression test per fuzzer finding of issue 13, each with its minimal file: a typed
error naming the file, bounded in time, memory and message length; the CLI prints one line."""
from __future__ import annotations

import time

import pytest

from caffe_compat import load_net
from caffe_compat.budget import fmt_count, set_budget
from caffe_compat.cli import main
from caffe_compat.errors import CaffeCompatError, CaffeFormatError, MemoryBudgetExceeded, TextFormatError
from caffe_compat.proto import caffe_pb2

HUGE = 2 ** 63 - 1


def _cli(capsys, *argv):
    rc = main(list(argv))
    err = capsys.readouterr().err
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert len(err) < 2500
    return err


def _huge_blob(blob) -> None:
    blob.shape.dim.extend([HUGE] * 240)
    blob.data.append(1.0)


def test_huge_shape_message_is_bounded_caffemodel(tmp_path, capsys):
    net = caffe_pb2.NetParameter(name="n")
    lp = net.layer.add(name="ip", type="InnerProduct")
    _huge_blob(lp.blobs.add())
    p = tmp_path / "huge.caffemodel"
    p.write_bytes(net.SerializeToString())
    err = _cli(capsys, "inspect", str(p))
    assert "huge.caffemodel" in err and "~10^" in err and "(240 dims)" in err


def test_huge_shape_message_is_bounded_binaryproto_and_solverstate(tmp_path, capsys):
    b = caffe_pb2.BlobProto()
    _huge_blob(b)
    p = tmp_path / "mean.binaryproto"
    p.write_bytes(b.SerializeToString())
    assert "mean.binaryproto" in _cli(capsys, "inspect", str(p))
    st = caffe_pb2.SolverState(iter=1)
    _huge_blob(st.history.add())
    s = tmp_path / "x.solverstate"
    s.write_bytes(st.SerializeToString())
    assert "x.solverstate" in _cli(capsys, "inspect", str(s))


def test_load_net_weights_with_huge_shape(tmp_path):
    proto = tmp_path / "n.prototxt"
    proto.write_text('layer { name: "d" type: "Input" top: "d" input_param { shape { dim: 1 dim: 2 } } }\n'
                     'layer { name: "ip" type: "InnerProduct" bottom: "d" top: "ip" '
                     'inner_product_param { num_output: 1 } }\n')
    net = caffe_pb2.NetParameter(name="n")
    _huge_blob(net.layer.add(name="ip", type="InnerProduct").blobs.add())
    w = tmp_path / "w.caffemodel"
    w.write_bytes(net.SerializeToString())
    with pytest.raises(CaffeCompatError, match="w.caffemodel") as e:
        load_net(str(proto), weights=str(w))
    assert len(str(e.value)) < 2000


NET = ('layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: {n} dim: 3 dim: 8 dim: 8 }} }} }}\n'
       'layer {{ name: "fc1" type: "InnerProduct" bottom: "data" top: "fc1" '
       'inner_product_param {{ num_output: {k} }} }}\n')


@pytest.mark.parametrize("n,k,what", [(1, 2147483648, "learnable blob 0 of shape [2147483648, 192] asks for 1.5 TiB"),
                                      (100000000, 10, "top 'data' of shape [100000000, 3, 8, 8] asks for 71.5 GiB")])
def test_claimed_sizes_checked_before_allocation(tmp_path, n, k, what):
    p = tmp_path / "big.prototxt"
    p.write_text(NET.format(n=n, k=k))
    t = time.perf_counter()
    with pytest.raises(MemoryBudgetExceeded, match="big.prototxt") as e:
        load_net(str(p))
    assert what in str(e.value) and "CAFFEKT_MEMORY_BUDGET" in str(e.value)
    assert time.perf_counter() - t < 2


def test_budget_is_configurable(tmp_path, monkeypatch):
    p = tmp_path / "mid.prototxt"
    p.write_text(NET.format(n=1, k=1000000))   # 768 MB of weights
    monkeypatch.setenv("CAFFEKT_MEMORY_BUDGET", "256M")
    with pytest.raises(MemoryBudgetExceeded, match="over the memory budget of 256 MiB"):
        load_net(str(p))
    set_budget(1 << 20)
    try:
        with pytest.raises(MemoryBudgetExceeded, match="1 MiB"):
            load_net(str(p).replace("mid", "mid"))
    finally:
        set_budget(None)


def test_fmt_count_is_bounded():
    assert fmt_count(12) == "12" and fmt_count(10 ** 20) == "~10^20"
    assert len(fmt_count(HUGE ** 240)) < 20


def _safetensors(path, meta):
    import numpy as np
    from safetensors.numpy import save_file
    save_file({"c.0": np.zeros(2, np.float32)}, str(path), metadata={"caffekt.layers": meta})


@pytest.mark.parametrize("meta", ["[" * 5000, '[["c", "X", 1000000000]]', '[["c", "X", 1e9]]'])
def test_safetensors_metadata_bounded(tmp_path, meta):
    pytest.importorskip("safetensors")
    from caffekt.converters.convert import read_weights
    p = tmp_path / "m.safetensors"
    _safetensors(p, meta)
    t = time.perf_counter()
    with pytest.raises(CaffeFormatError, match="m.safetensors"):
        read_weights(str(p))
    assert time.perf_counter() - t < 1


def test_damaged_pt_is_typed(tmp_path, capsys):
    import torch
    p = tmp_path / "w.pt"
    torch.save({"c.0": torch.zeros(100)}, str(p))
    data = bytearray(p.read_bytes())
    for i in range(0, len(data), 97):   # byte mutations through the zip's directory
        data[i] ^= 0x5A
    p.write_bytes(bytes(data))
    from caffekt.converters.convert import read_weights
    with pytest.raises(CaffeFormatError, match="w.pt"):
        read_weights(str(p))
    _cli(capsys, "convert", str(p), "-o", str(tmp_path / "o.caffemodel"))


def test_unclosed_string_is_fast(tmp_path):
    from caffe_compat.io import read_prototxt
    p = tmp_path / "s.prototxt"
    p.write_text('name: "' + "x' " * 16000 + "\nlayer { name: 'a' }\n")
    t = time.perf_counter()
    with pytest.raises(TextFormatError, match="s.prototxt") as e:
        read_prototxt(str(p))
    assert time.perf_counter() - t < 1 and len(str(e.value)) < 1000


def test_layer_errors_name_the_file(tmp_path):
    p = tmp_path / "zero.prototxt"
    p.write_text(NET.format(n=1, k=0))
    with pytest.raises(CaffeCompatError) as e:
        load_net(str(p))
    assert str(e.value).startswith(f"{p}: ") and "num_output must be > 0" in str(e.value)


def test_swapped_net_and_weights(tmp_path, capsys):
    from caffe_compat.weights import save_caffemodel
    p = tmp_path / "n.prototxt"
    p.write_text(NET.format(n=1, k=2))
    w = tmp_path / "n.caffemodel"
    save_caffemodel(load_net(str(p)), str(w))
    err = _cli(capsys, "export", "onnx", str(w), str(p), "-o", str(tmp_path / "o.onnx"))
    assert err.startswith("caffekt export onnx: error:")
    assert "this is a text prototxt; did you swap NET and WEIGHTS?" in err


def test_cli_hints(tmp_path, capsys):
    from caffe_compat.weights import save_caffemodel
    err = _cli(capsys, "exprot", "onnx")
    assert "did you mean 'export'" in err
    p = tmp_path / "n.prototxt"
    p.write_text(NET.format(n=1, k=2))
    w = str(tmp_path / "n.caffemodel")
    save_caffemodel(load_net(str(p)), w)
    err = _cli(capsys, "export", "frcnn", "--from", w, "--target", "alexnett", "-o", str(tmp_path / "o.caffemodel"))
    assert err.startswith("caffekt export frcnn: error:") and "caffenet, vgg16" in err


def test_debug_shows_the_traceback(tmp_path):
    p = tmp_path / "zero.prototxt"
    p.write_text(NET.format(n=1, k=0))
    with pytest.raises(CaffeCompatError):
        main(["--debug", "export", "onnx", str(p), str(p), "-o", str(tmp_path / "o.onnx")])


@pytest.mark.parametrize("text", [
    'name: "a"\nlayer { name: "' + "x" * 47000 + "\n",          # the 47 KB unclosed string
    'layer { bottom: "fc"' + "x" * 47000 + "\n}\n",              # fuzz input 70694: a 5 KB run took 0.8 s
    "a " * 23000, "{" * 47000, "'" + "x" * 47000])
def test_long_runs_scan_in_linear_time(tmp_path, text):
    from caffe_compat.io import read_net
    p = tmp_path / "long.prototxt"
    p.write_text(text)
    t = time.perf_counter()
    with pytest.raises(CaffeCompatError, match="long.prototxt"):
        read_net(str(p))
    assert time.perf_counter() - t < 0.5
