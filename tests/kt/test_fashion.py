"""kt.fashion and the ``fashion-mnist`` pipeline stage, on a crafted 4-file IDX set (no install needed)."""
from __future__ import annotations

import gzip
import json
import os
import struct

import numpy as np
import pytest

from caffe_compat.data.idx import IdxCountMismatch
from caffe_compat.errors import CaffeCompatError
from caffekt.kt import fashion, pipeline
from caffekt.kt.labels import read_list

cv2 = pytest.importorskip("cv2")


def _idx(path, arr):
    head = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(head + arr.astype(np.uint8).tobytes())


@pytest.fixture()
def src(tmp_path):
    """40 train / 12 test 28x28 images whose pixel (0, 0) encodes the index, labels i % 10."""
    d = tmp_path / "fm"
    d.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 12)):
        x = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        x[:, 0, 0] = np.arange(n)
        _idx(d / f"{split}-images-idx3-ubyte.gz", x)
        _idx(d / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return str(d)


def test_build_writes_pngs_lists_and_lmdb(tmp_path, src):
    from caffe_compat.data.sources import LMDBSource
    from caffekt.kt.puzzle import stored_image

    out = str(tmp_path / "out")
    paths = fashion.build_fashion_mnist(out, train=15, test=12, size=40, seed=3, lmdb=True, src=src)
    names, labels = read_list(paths["train"])
    assert len(names) == 15 and len(set(names)) == 15
    unl = open(paths["unlabelled"]).read().split()
    assert unl == names   # the same images, no labels
    x = fashion.load_split("train", src)[0]
    for n, l in zip(names, labels):
        i = int(os.path.basename(n)[:-4])
        assert l == i % 10
        img = cv2.imread(os.path.join(out, n), cv2.IMREAD_UNCHANGED)
        assert img.shape == (40, 40)   # one gray channel; Caffe's colour read makes it BGR
        np.testing.assert_array_equal(img, cv2.resize(x[i], (40, 40), interpolation=cv2.INTER_LINEAR))
    tn, tl = read_list(paths["test"])
    assert [int(os.path.basename(n)[:-4]) for n in tn] == list(range(12)) and tl.tolist() == [i % 10 for i in range(12)]
    db = LMDBSource(paths["lmdb"])
    assert len(db) == 15
    for k in (0, 14):
        d = db.datum(k)
        assert (d.channels, d.height, d.width, d.label, d.encoded) == (3, 255, 255, None, False)
        i = int(os.path.basename(names[k])[:-4])
        up = cv2.resize(x[i], (40, 40), interpolation=cv2.INTER_LINEAR)
        want = stored_image(np.repeat(up[:, :, None], 3, axis=2)).transpose(2, 0, 1)
        np.testing.assert_array_equal(d.to_array(), want)
    info = json.load(open(os.path.join(out, "fashion_mnist.json")))
    assert sum(info["class_counts"]["train"]) == 15 and info["class_counts"]["test"] == [2, 2] + [1] * 8


def test_cached_rebuilt_on_change_and_seeded(tmp_path, src):
    out = str(tmp_path / "out")
    p = fashion.build_fashion_mnist(out, train=10, test=5, size=32, seed=0, src=src)
    first = open(p["train"]).read()
    t = os.path.getmtime(p["train"])
    fashion.build_fashion_mnist(out, train=10, test=5, size=32, seed=0, src=src)
    assert os.path.getmtime(p["train"]) == t   # cached
    fashion.build_fashion_mnist(out, train=10, test=5, size=32, seed=1, src=src)
    assert open(p["train"]).read() != first    # another draw


def test_bad_parameters_and_missing_or_broken_data(tmp_path, src):
    with pytest.raises(CaffeCompatError, match="subset sizes must be 1..60000 train"):
        fashion.build_fashion_mnist(str(tmp_path / "o"), train=0, src=src)
    with pytest.raises(CaffeCompatError, match="upsample size must be >= 28"):
        fashion.build_fashion_mnist(str(tmp_path / "o"), train=5, test=5, size=20, src=src)
    with pytest.raises(CaffeCompatError, match="apt-get install dataset-fashion-mnist"):
        fashion.build_fashion_mnist(str(tmp_path / "o"), train=5, test=5, src=str(tmp_path / "none"))
    _idx(os.path.join(src, "t10k-labels-idx1-ubyte.gz"), np.arange(11) % 10)
    with pytest.raises(IdxCountMismatch, match="12 images but .* holds 11 labels"):
        fashion.load_split("test", src)


def test_pipeline_stage_kind(tmp_path, src):
    cfgp = tmp_path / "c.json"
    cfgp.write_text(json.dumps({"name": "t", "workdir": str(tmp_path / "w"), "stages": [
        {"name": "data", "kind": "fashion-mnist", "out": str(tmp_path / "data"), "train": 8, "test": 4,
         "size": 32, "source": src}]}))
    cfg = pipeline.load_config(str(cfgp))
    assert pipeline.plan(cfg) == 0
    assert pipeline.run(cfg, log=lambda l: None) == ["data"]
    assert pipeline.plan(cfg) == 1
    assert len(read_list(str(tmp_path / "data" / "test.txt"))[0]) == 4
