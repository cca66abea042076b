"""The DataLoader glue: seeded per sample, same batches for any worker count, resumable."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from caffe_compat.binary import encode_datum
from caffe_compat.data import (DataTransformer, ImageListSource, LMDBSource, make_loader, sample_rng,
                               write_lmdb_records)
from caffe_compat.errors import ShapeError, UnsupportedParameter

from _data_images import image_set, write_list

pytest.importorskip("cv2")

N = 10


@pytest.fixture(scope="module")
def list_source(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rows = image_set(str(root), n=N, size=(9, 11))
    return ImageListSource(write_list(str(root / "list.txt"), rows), root_folder=str(root) + "/"), rows


def _train_transformer():
    return DataTransformer({"crop_size": 5, "mirror": True, "mean_value": [100, 110, 120], "scale": 0.5},
                           "TRAIN")


def _run(loader, epochs):
    out = []
    for _ in range(epochs):
        out += [(d.clone(), l.clone()) for d, l in loader]
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (d1, l1), (d2, l2) in zip(a, b):
        assert torch.equal(d1, d2) and torch.equal(l1, l2)


def test_batches_types_and_sample_randomness(list_source):
    src, rows = list_source
    t = _train_transformer()
    loader = make_loader(src, t, batch_size=4, shuffle=False, seed=3)
    batches = _run(loader, 1)
    assert [tuple(d.shape) for d, _ in batches] == [(4, 3, 5, 5), (4, 3, 5, 5), (2, 3, 5, 5)]
    assert batches[0][0].dtype == torch.float32 and batches[0][1].dtype == torch.int64
    np.testing.assert_array_equal(torch.cat([l for _, l in batches]).numpy(), [r[1] for r in rows])
    # sample i of epoch 0 is exactly transformer(image_i) with the generator of (seed 3, epoch 0, i)
    for i in (0, 7):
        want = t.transform(rows[i][2], rng=sample_rng(3, 0, i))
        np.testing.assert_array_equal(batches[i // 4][0][i % 4].numpy(), want)
    # the next epoch draws afresh
    nxt = _run(loader, 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(batches, nxt))


def test_same_batches_for_zero_and_two_workers(list_source):
    src, _ = list_source
    a = _run(make_loader(src, _train_transformer(), 3, num_workers=0, shuffle=True, seed=11), 2)
    b = _run(make_loader(src, _train_transformer(), 3, num_workers=2, shuffle=True, seed=11), 2)
    _same(a, b)
    c = _run(make_loader(src, _train_transformer(), 3, num_workers=0, shuffle=True, seed=12), 2)
    assert not all(torch.equal(x[1], y[1]) for x, y in zip(a, c))     # another seed, another order
    labels0 = torch.cat([l for _, l in a[:4]]).sort().values          # epoch 0 covers every sample once
    np.testing.assert_array_equal(labels0.numpy(), np.sort(src.labels))


def test_resume_from_position(list_source):
    src, _ = list_source
    full = _run(make_loader(src, _train_transformer(), 3, shuffle=True, seed=5, drop_last=True), 2)
    first = make_loader(src, _train_transformer(), 3, shuffle=True, seed=5, drop_last=True)
    assert len(first) == 3
    it = iter(first)
    got = [next(it), next(it)]
    pos = first.state_dict()
    assert {k: pos[k] for k in ("epoch", "index", "size")} == {"epoch": 0, "index": 6, "size": N}
    resumed = make_loader(src, _train_transformer(), 3, shuffle=True, seed=5, drop_last=True, position=pos)
    assert len(resumed) == 1
    got += _run(resumed, 2)
    _same(full, [(d, l) for d, l in got])
    assert resumed.state_dict()["epoch"] == 2 and resumed.state_dict()["index"] == 0
    with pytest.raises(UnsupportedParameter, match="seed 5, this loader has seed 6"):
        make_loader(src, _train_transformer(), 3, seed=6, position=pos)
    with pytest.raises(UnsupportedParameter, match="for 4 samples but the source holds 10"):
        make_loader(src, _train_transformer(), 3, seed=5, position={**pos, "size": 4})


def test_skipped_samples_are_counted_across_workers(tmp_path):
    rows = image_set(str(tmp_path), n=5)
    lst = write_list(str(tmp_path / "l.txt"), rows[:2] + [("gone.png", 9)] + rows[2:] + [("gone2.png", 9)])
    src = ImageListSource(lst, root_folder=str(tmp_path) + "/", on_error="skip")
    t = DataTransformer({"crop_size": 4}, "TEST")
    for workers in (0, 2):
        loader = make_loader(src, t, 3, num_workers=workers)
        labels = torch.cat([l for _, l in loader])
        assert labels.tolist() == [r[1] for r in rows]
        assert loader.skipped == 2 and loader.state_dict()["skipped"] == 2


def test_lmdb_loader_with_workers(tmp_path):
    db = str(tmp_path / "db")
    arrs = [np.full((3, 6, 6), k, np.uint8) for k in range(6)]
    write_lmdb_records(db, [(f"{k:08d}", encode_datum(a, k)) for k, a in enumerate(arrs)])
    src = LMDBSource(db)
    src[0]   # the parent holds an open environment before the workers fork
    t = DataTransformer({"crop_size": 4, "mirror": True}, "TRAIN")
    a = _run(make_loader(src, t, 4, num_workers=2, seed=1), 1)
    b = _run(make_loader(LMDBSource(db), t, 4, num_workers=0, seed=1), 1)
    _same(a, b)
    assert torch.cat([l for _, l in a]).tolist() == list(range(6))
    assert float(a[1][0][1].mean()) == 5.0


def test_uneven_images_without_crop_are_a_shape_error(tmp_path):
    r1 = image_set(str(tmp_path / "a"), n=1, size=(5, 5))
    r2 = image_set(str(tmp_path / "b"), n=1, size=(6, 5), seed=1)
    lst = write_list(str(tmp_path / "l.txt"), [("a/" + r1[0][0], 0), ("b/" + r2[0][0], 1)])
    src = ImageListSource(lst, root_folder=str(tmp_path) + "/")
    with pytest.raises(ShapeError, match=r"shapes \[\(3, 5, 5\), \(3, 6, 5\)\]"):
        _run(make_loader(src, DataTransformer(), 2), 1)


def test_forever_rolls_over_epochs(list_source):
    src, _ = list_source
    loader = make_loader(src, _train_transformer(), 4, seed=2)
    it = loader.forever()
    sizes = [len(next(it)[1]) for _ in range(7)]
    assert sizes == [4, 4, 2, 4, 4, 2, 4]
    assert (loader.state_dict()["epoch"], loader.state_dict()["index"]) == (2, 4)
