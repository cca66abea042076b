"""LMDBs of Datum records: convert_imageset-style writing, reading back, checked with caffe_pb2.Datum."""
from __future__ import annotations

import os

import numpy as np
import pytest

from caffe_compat.binary import encode_datum
from caffe_compat.data import DataTransformer, LMDBSource, write_lmdb, write_lmdb_records
from caffe_compat.errors import CaffeFormatError
from caffe_compat.proto import caffe_pb2

from _data_images import image_set
from _data_port import datum_path

cv2 = pytest.importorskip("cv2")
lmdb = pytest.importorskip("lmdb")


def _raw_records(path):
    """(key, value) straight from the lmdb package, in key order: independent of LMDBSource."""
    env = lmdb.open(path, readonly=True, lock=False)
    with env.begin() as txn:
        out = list(txn.cursor())
    env.close()
    return out


def _schema_datum(value):
    d = caffe_pb2.Datum()
    d.ParseFromString(value)
    return d


def test_raw_round_trip_and_datum_bytes(tmp_path):
    rows = image_set(str(tmp_path / "im"), n=5)
    db = str(tmp_path / "db")
    n = write_lmdb(db, [(r[0], r[1]) for r in rows], encoded=False, root_folder=str(tmp_path / "im") + "/")
    assert n == 5
    recs = _raw_records(db)
    assert [k.decode() for k, _ in recs] == [f"{i:08d}_{r[0]}" for i, r in enumerate(rows)]
    for (key, value), (name, label, img) in zip(recs, rows):
        d = _schema_datum(value)
        assert (d.channels, d.height, d.width, d.label) == (3, 10, 12, label)
        assert d.HasField("encoded") and not d.encoded   # CVMatToDatum sets encoded = false explicitly
        assert len(d.float_data) == 0
        np.testing.assert_array_equal(np.frombuffer(d.data, np.uint8).reshape(3, 10, 12),
                                      img.transpose(2, 0, 1))
        # byte-for-byte what protobuf itself serialises for the same Datum
        want = caffe_pb2.Datum(channels=3, height=10, width=12, data=img.transpose(2, 0, 1).tobytes(),
                               label=label, encoded=False)
        assert value == want.SerializeToString()
    src = LMDBSource(db)
    assert len(src) == 5
    np.testing.assert_array_equal(src.labels, [r[1] for r in rows])
    for i, (_n, label, img) in enumerate(rows):
        s = src[i]
        assert s.layout == "CHW" and s.label == label and s.image.dtype == np.uint8
        np.testing.assert_array_equal(s.image, img.transpose(2, 0, 1))


def test_encoded_keeps_file_bytes_and_decodes_identical(tmp_path):
    rows = image_set(str(tmp_path / "im"), n=3)
    db = str(tmp_path / "db")
    write_lmdb(db, [(r[0], r[1]) for r in rows], encoded=True, root_folder=str(tmp_path / "im") + "/")
    for (key, value), (name, label, img) in zip(_raw_records(db), rows):
        d = _schema_datum(value)
        assert d.encoded and d.label == label and not d.HasField("channels")   # ReadFileToDatum
        assert d.data == (tmp_path / "im" / name).read_bytes()
    src = LMDBSource(db)
    for i, r in enumerate(rows):
        assert src[i].layout == "HWC"
        np.testing.assert_array_equal(src[i].image, r[2])


def test_encoded_with_resize_or_other_type_is_reencoded(tmp_path):
    rows = image_set(str(tmp_path / "im"), n=1, size=(10, 12))
    items = [(rows[0][0], 1)]
    root = str(tmp_path / "im") + "/"
    db = str(tmp_path / "resized")
    write_lmdb(db, items, encoded=True, resize=(6, 8), root_folder=root)
    d = _schema_datum(_raw_records(db)[0][1])
    assert d.encoded and d.data != (tmp_path / "im" / rows[0][0]).read_bytes()
    dec = cv2.imdecode(np.frombuffer(d.data, np.uint8), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(dec, cv2.resize(rows[0][2], (8, 6)))   # PNG: lossless re-encode
    db2 = str(tmp_path / "asbmp")
    write_lmdb(db2, items, encode_type="bmp", root_folder=root)
    d2 = _schema_datum(_raw_records(db2)[0][1])
    assert d2.encoded and d2.data[:2] == b"BM"


def test_gray_option_passes_a_colour_file_through_like_caffe(tmp_path):
    # ReadImageToDatum keeps the file when (channels == 3) == is_color: a gray read of a colour
    # file has 1 channel, so with --gray the colour bytes are stored untouched
    rows = image_set(str(tmp_path / "im"), n=1)
    db = str(tmp_path / "db")
    write_lmdb(db, [(rows[0][0], 0)], encoded=True, is_color=False, root_folder=str(tmp_path / "im") + "/")
    assert _schema_datum(_raw_records(db)[0][1]).data == (tmp_path / "im" / rows[0][0]).read_bytes()
    raw = str(tmp_path / "raw")
    write_lmdb(raw, [(rows[0][0], 0)], encoded=False, is_color=False, root_folder=str(tmp_path / "im") + "/")
    assert _schema_datum(_raw_records(raw)[0][1]).channels == 1


def test_unreadable_images_skip_keeps_line_ids_or_raise(tmp_path):
    rows = image_set(str(tmp_path / "im"), n=2)
    items = [(rows[0][0], 0), ("missing.png", 1), (rows[1][0], 2)]
    root = str(tmp_path / "im") + "/"
    db = str(tmp_path / "db")
    assert write_lmdb(db, items, encoded=False, root_folder=root, on_error="skip") == 2
    assert [k.decode() for k, _ in _raw_records(db)] == [f"00000000_{rows[0][0]}", f"00000002_{rows[1][0]}"]
    with pytest.raises(CaffeFormatError, match=r"missing\.png: item 1: Could not open or find file"):
        write_lmdb(str(tmp_path / "db2"), items, encoded=False, root_folder=root)
    assert not os.path.exists(tmp_path / "db2")                 # nothing half-written left behind
    assert [p for p in os.listdir(tmp_path) if p.startswith(".lmdb-")] == []
    with pytest.raises(FileExistsError):
        write_lmdb(db, items[:1], root_folder=root)


def test_float_data_key_order_and_map_growth(tmp_path):
    rng = np.random.default_rng(0)
    arrs = {f"{k:03d}": rng.normal(size=(2, 40, 40)).astype(np.float32) for k in (5, 1, 3)}
    db = str(tmp_path / "db")
    # unsorted keys, a map too small for even one record, commits every 2 records
    n = write_lmdb_records(db, [(k, encode_datum(a, int(k))) for k, a in arrs.items()],
                           commit_every=2, map_size=16384)
    assert n == 3
    src = LMDBSource(db)
    assert src.keys == [b"001", b"003", b"005"]                  # Caffe's cursor order: sorted keys
    for i, k in enumerate(("001", "003", "005")):
        s = src[i]
        assert s.layout == "CHW" and s.image.dtype == np.float32 and s.label == int(k)
        np.testing.assert_array_equal(s.image, arrs[k])
        assert list(_schema_datum(src.raw(i)).float_data) == arrs[k].reshape(-1).tolist()


def test_corrupt_record_names_the_key(tmp_path):
    db = str(tmp_path / "db")
    good = encode_datum(np.zeros((1, 2, 2), np.uint8), 1)
    short = encode_datum(np.zeros((1, 2, 2), np.uint8), 1)[:-3]     # truncated mid-field
    lie = caffe_pb2.Datum(channels=3, height=4, width=4, data=b"\0" * 5).SerializeToString()
    write_lmdb_records(db, [(b"a", good), (b"b", short), (b"c", lie)])
    src = LMDBSource(db)
    assert src[0].label == 1
    with pytest.raises(CaffeFormatError, match=r"db key b"):
        src[1]
    with pytest.raises(CaffeFormatError, match=r"db: key c: Datum is 3x4x4 \(48 values\) but holds 5"):
        src[2]
    skip = LMDBSource(db, on_error="skip")
    assert skip[1] is None and skip[2] is None and skip.skipped == 2
    with pytest.raises(CaffeFormatError, match="not an LMDB directory"):
        LMDBSource(str(tmp_path))


def test_lmdb_through_transformer_matches_port(tmp_path):
    rows = image_set(str(tmp_path / "im"), n=2, size=(9, 11))
    db = str(tmp_path / "db")
    write_lmdb(db, [(r[0], r[1]) for r in rows], encoded=False, root_folder=str(tmp_path / "im") + "/")
    mean = (np.random.default_rng(2).random((1, 3, 9, 11)) * 200).astype(np.float32)
    t = DataTransformer({"crop_size": 5, "scale": 0.017}, "TEST", mean=mean)
    src = LMDBSource(db)
    for i, r in enumerate(rows):
        got = t.transform_datum(src.datum(i))
        want = datum_path(r[2].transpose(2, 0, 1), 5, 2, 3, False, mean, [], float(np.float32(0.017)),
                          np.float32)
        np.testing.assert_array_equal(got, want)


def test_source_survives_pickling(tmp_path):
    import pickle
    db = str(tmp_path / "db")
    write_lmdb_records(db, [(b"k", encode_datum(np.ones((1, 2, 2), np.uint8), 4))])
    src = LMDBSource(db)
    src[0]
    clone = pickle.loads(pickle.dumps(src))   # what spawn-started DataLoader workers do
    assert clone._env is None and clone[0].label == 4
