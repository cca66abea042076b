"""Every net that loads exports: train/test nets give their deploy form; --keep-losses keeps
losses and accuracy at a dynamic batch; a batch-bound layer is refused by name (exit 2)."""
from __future__ import annotations

import os

import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from caffe_compat.cli import main  # noqa: E402
from conftest import fixture_prototxts  # noqa: E402

TRAIN_NETS = [p for p in fixture_prototxts()
              if os.path.basename(p).startswith(("train", "test"))]


def _param(p):
    rel = os.path.relpath(p, os.path.dirname(os.path.dirname(os.path.dirname(p))))
    marks = [pytest.mark.slow] if "VGG16" in p or "alexnet" in p else []
    return pytest.param(p, id=rel, marks=marks)


def test_there_are_train_nets():
    assert len(TRAIN_NETS) >= 8 or not TRAIN_NETS


@pytest.mark.parametrize("path", [_param(p) for p in TRAIN_NETS])
def test_every_fixture_train_net_exports(path, tmp_path, capsys):
    out = tmp_path / "net.onnx"
    rc = main(["export", "onnx", path, os.devnull, "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert out.exists() and "OK: onnxruntime agrees within float32 rounding" in text
    model = onnx.load(str(out))
    names = {i.name for i in model.graph.input}
    assert "label" not in names   # the deploy form reads no labels
    if "loss" in open(path).read().lower():
        assert "dropped" in text and "--keep-losses" in text


def test_caffenet_train_val_drops_and_lists(fixtures_dir, tmp_path, capsys):
    path = os.path.join(fixtures_dir, "bvlc", "bvlc_reference_caffenet", "train_val.prototxt")
    assert main(["export", "onnx", path, os.devnull, "-o", str(tmp_path / "a.onnx")]) == 0
    text = capsys.readouterr().out
    assert "dropped 2 layer(s) that need labels or data: accuracy, loss" in text
    assert "fc8_prob" in text   # SoftmaxWithLoss leaves a Softmax


def test_keep_losses_dynamic_batch(fixtures_dir, tmp_path, capsys):
    import numpy as np
    import onnxruntime as ort
    path = os.path.join(fixtures_dir, "bvlc", "bvlc_reference_caffenet", "train_val.prototxt")
    out = tmp_path / "l.onnx"
    assert main(["export", "onnx", path, os.devnull, "-o", str(out), "--keep-losses"]) == 0
    text = capsys.readouterr().out
    assert "input label 2: integer classes U{0..999}" in text
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["accuracy", "loss"]
    rng = np.random.default_rng(1)
    for batch in (1, 3):
        acc, loss = sess.run(None, {"data": rng.standard_normal((batch, 3, 227, 227)).astype(np.float32),
                                    "label": rng.integers(0, 1000, batch).astype(np.float32)})
        assert acc.shape == () and 0 <= float(acc) <= 1 and np.isfinite(loss)


BATCH_BOUND = """name: "hinge"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 1 dim: 5 } shape { dim: 1 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 1 } } }
layer { name: "hinge" type: "HingeLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_batch_bound_layer_refused_by_name(tmp_path, capsys):
    p = tmp_path / "h.prototxt"
    p.write_text(BATCH_BOUND)
    out = tmp_path / "h.onnx"
    rc = main(["export", "onnx", str(p), os.devnull, "-o", str(out), "--keep-losses"])
    err = capsys.readouterr().err
    if rc == 0:   # the layer follows the batch after all: nothing to refuse
        assert out.exists()
        return
    assert rc == 2 and not out.exists()
    assert "layer 'hinge' (type HingeLoss) only works at the batch it was built for" in err
    assert err.startswith("caffekt export onnx: error:") and "Traceback" not in err
    # without --keep-losses the loss is dropped and the rest exports
    assert main(["export", "onnx", str(p), os.devnull, "-o", str(out)]) == 0
