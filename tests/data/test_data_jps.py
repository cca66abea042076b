"""The Jigsaw fork's puzzle DataTransformer and labels.bin against a loop port of data_transformer.cpp."""
import math

import numpy as np
import pytest

from caffe_compat.data import jps
from caffe_compat.errors import CaffeFormatError, ShapeError, UnsupportedParameter
from caffe_compat.proto import caffe_pb2

PERMS = np.array([np.roll(np.arange(9), k) for k in range(9)] + [np.arange(9)[::-1]])


def _tp(**kw):
    tp = caffe_pb2.TransformationParameter(crop_size=255, siamese_size=9, patch_size=64, jitter_size=18)
    for k, v in kw.items():
        if k == "mean_value":
            tp.mean_value.extend(v)
        else:
            setattr(tp, k, v)
    return tp


def _fork_port(data, table, rand, *, crop, S, P, J, mean=(), scale=1.0, train=True):
    """data_transformer.cpp Transform(Datum&, Dtype*) for siamese_size > 1, element by element.

    ``data`` is the Datum's flat C*H*W byte string as a list; reads past it give 0.
    """
    C, H, W = data.shape
    flat = data.reshape(-1).tolist()
    g = int(math.sqrt(S))
    src = [(int(j * crop / math.sqrt(S)), int(i * crop / math.sqrt(S))) for i in range(g) for j in range(g)]
    label = None
    dst = list(src)
    if table is not None:
        label = rand() % len(table)
        dst = [src[table[label][i]] for i in range(S)]
    if train:
        h_off, w_off = rand() % (H - crop + 1), rand() % (W - crop + 1)
    else:
        h_off, w_off = (H - crop) // 2, (W - crop) // 2
    means = list(mean) * (C if len(mean) == 1 else 1)
    out = np.zeros(S * C * P * P, np.float32)
    for s in range(S):
        jx_, jy_ = rand() % (J + 1), rand() % (J + 1)
        for c in range(C):
            jx, jy = jx_ + rand() % 3, jy_ + rand() % 3
            for h in range(P):
                for w in range(P):
                    idx = (c * H + h_off + dst[s][1] + jy + h) * W + w_off + dst[s][0] + w + jx
                    v = np.float32(flat[idx] if idx < len(flat) else 0)
                    if means:
                        v = (v - np.float32(means[c])) * np.float32(scale)
                    else:
                        v = v * np.float32(scale)
                    out[s * P * P * C + (c * P + h) * P + w] = v
    make_gray, proj = rand() % 10 >= 5, rand() % 2 == 0
    t = out.reshape(S, C, P * P)
    for s in range(S):
        b, gr, r = (t[s, k].astype(np.float64) for k in range(3))
        if not make_gray:
            if proj:
                t[s, 2] = (0.8333 * r + 0.3333 * gr + -0.1667 * b).astype(np.float32)
                t[s, 1] = (0.3333 * r + 0.3333 * gr + 0.3333 * b).astype(np.float32)
                t[s, 0] = (-0.1667 * r + 0.3333 * gr + 0.8333 * b).astype(np.float32)
        else:
            t[s, 1] = (0.3333 * r + 0.3333 * gr + 0.3333 * b).astype(np.float32)
            t[s, 0] = t[s, 2] = t[s, 1]
    return out.reshape(S * C, P, P), label


def _rands(seed):
    return jps.rand_from(np.random.default_rng(seed)), jps.rand_from(np.random.default_rng(seed))


@pytest.mark.slow
@pytest.mark.parametrize("case", ["jps++", "eccv", "test-phase"])
def test_transform_equals_the_fork_loop_port(case):
    rng = np.random.default_rng(3)
    size = 257 if case == "test-phase" else 255
    datum = rng.integers(0, 256, size=(3, size, size), dtype=np.uint8)
    kw = dict(crop=255, S=9, P=64, J=18)
    if case == "eccv":   # the ECCV prototxt: mean_value, jitter 21 (reads past the record at the last cells)
        tp = _tp(jitter_size=21, mean_value=[104, 117, 123])
        kw.update(J=21, mean=(104, 117, 123))
    else:
        tp = _tp()
    phase = "TEST" if case == "test-phase" else "TRAIN"
    tf = jps.JpsTransformer(tp, phase, table=PERMS)
    for seed in range(6):
        a, b = _rands(seed)
        got, label = tf.transform_labelled(datum, layout="CHW", rand=a)
        want, wlabel = _fork_port(datum, PERMS, b, train=phase == "TRAIN", **kw)
        assert label == wlabel and got.shape == (27, 64, 64)
        assert np.array_equal(got, want), f"seed {seed}: max diff {np.abs(got - want).max()}"


def test_tiles_come_from_their_cells_with_jitter_and_channel_shifts():
    y, x = np.mgrid[0:255, 0:255]
    coord = np.stack([c * 2 ** 16 + y * 256 + x for c in range(3)]).astype(np.float64)  # CHW, exact in float32
    tf = jps.JpsTransformer(_tp(), "TRAIN", table=PERMS, colour=False)
    shifts, origins = set(), set()
    for seed in range(60):
        tiles, label = tf.transform_labelled(coord, layout="CHW", rng=np.random.default_rng(seed))
        t = tiles.reshape(9, 3, 64, 64).astype(np.int64)
        for s in range(9):
            cy, cx = divmod(int(PERMS[label][s]), 3)
            ys, xs = [], []
            for c in range(3):
                v = t[s, c] - c * 2 ** 16
                yy, xx = v // 256, v % 256
                assert np.array_equal(yy, yy[0, 0] + np.arange(64)[:, None] + 0 * xx)   # a contiguous window
                assert np.array_equal(xx, xx[0, 0] + np.arange(64)[None, :] + 0 * yy)
                ys.append(int(yy[0, 0]) - cy * 85)
                xs.append(int(xx[0, 0]) - cx * 85)
            assert 0 <= min(ys) and max(ys) <= 20 and 0 <= min(xs) and max(xs) <= 20
            origins.add((min(ys), min(xs)))
            shifts.update((a - min(ys), b - min(xs)) for a, b in zip(ys, xs))
    assert {s[0] for s in shifts} == {0, 1, 2} and {s[1] for s in shifts} == {0, 1, 2}
    assert max(o[0] for o in origins) >= 15


def test_colour_draws_follow_the_fork_frequencies_and_constants():
    datum = np.random.default_rng(0).integers(0, 256, (3, 255, 255), dtype=np.uint8)
    tf = jps.JpsTransformer(_tp(), "TEST")
    raw = jps.JpsTransformer(_tp(), "TEST", colour=False)
    kinds = {"gray": 0, "proj": 0, "raw": 0}
    for seed in range(400):
        got = tf.transform(datum, layout="CHW", rng=np.random.default_rng(seed)).reshape(9, 3, 64, 64)
        base = raw.transform(datum, layout="CHW", rng=np.random.default_rng(seed)).reshape(9, 3, 64, 64)
        if np.array_equal(got, base):
            kinds["raw"] += 1
        elif np.array_equal(got[:, 0], got[:, 2]):
            b, g, r = (base[:, k].astype(np.float64) for k in range(3))
            assert np.array_equal(got[:, 1], (0.3333 * r + 0.3333 * g + 0.3333 * b).astype(np.float32))
            kinds["gray"] += 1
        else:
            b, g, r = (base[:, k].astype(np.float64) for k in range(3))
            assert np.array_equal(got[:, 2], (0.8333 * r + 0.3333 * g - 0.1667 * b).astype(np.float32))
            kinds["proj"] += 1
    assert abs(kinds["gray"] / 400 - 0.5) < 0.08 and abs(kinds["proj"] / 400 - 0.25) < 0.07


def test_refused_fields_are_named():
    cases = [(dict(siamese_size=5), "siamese_size must be a square"),
             (dict(patch_size=0), "patch_size must lie in 1..crop_size"),
             (dict(mirror=True), "transform_param.mirror"),
             (dict(mean_file="m.binaryproto"), "mean_file"),
             (dict(crop_size=0), "crop_size must be set")]
    for kw, msg in cases:
        with pytest.raises(UnsupportedParameter, match=msg):
            jps.JpsTransformer(_tp(**kw), "TRAIN", where="layer 'data_0'")
    tf = jps.JpsTransformer(_tp(), "TRAIN", where="net x, layer 'data_0'")
    with pytest.raises(ShapeError, match=r"layer 'data_0'.*200x200 record is smaller than crop_size 255"):
        tf.transform(np.zeros((3, 200, 200), np.uint8), layout="CHW", rng=np.random.default_rng(0))


def test_hash_file_errors_name_the_file(tmp_path):
    good = tmp_path / "p.bin"
    np.concatenate([[10, 9], (PERMS + 1).ravel()]).astype("<i4").tofile(good)
    assert np.array_equal(jps.read_hash_file(str(good), 9), PERMS)
    with pytest.raises(CaffeFormatError, match="9 tiles but siamese_size is 4"):
        jps.read_hash_file(str(good), 4)
    bad = tmp_path / "bad.bin"
    np.array([2 ** 30, 9, 1], "<i4").tofile(bad)
    with pytest.raises(CaffeFormatError, match=r"bad\.bin.*not a permutation set header"):
        jps.read_hash_file(str(bad))
    np.array([1, 9] + [1] * 9, "<i4").tofile(bad)
    with pytest.raises(CaffeFormatError, match="row 0 is not a permutation"):
        jps.read_hash_file(str(bad))
    with pytest.raises(CaffeFormatError, match="hash_file not found"):
        jps.JpsTransformer(_tp(hash_file=str(tmp_path / "missing.bin")), "TRAIN")


def test_labels_bin_round_trip_and_errors(tmp_path):
    p = str(tmp_path / "labels.bin")
    jps.write_labels_bin(p, [3, 0, 7])
    assert np.fromfile(p, "<i4").tolist() == [3, 3, 0, 7]
    assert jps.read_labels_bin(p).tolist() == [3, 0, 7]
    (tmp_path / "short.bin").write_bytes(np.array([0], "<i4").tobytes())
    with pytest.raises(CaffeFormatError, match="short.bin.*at least one int32 label"):
        jps.read_labels_bin(str(tmp_path / "short.bin"))
    (tmp_path / "count.bin").write_bytes(np.array([5, 1, 2], "<i4").tobytes())
    with pytest.raises(CaffeFormatError, match="count says 5 labels but the file holds 2"):
        jps.read_labels_bin(str(tmp_path / "count.bin"))
    (tmp_path / "neg.bin").write_bytes(np.array([2, 1, -4], "<i4").tobytes())
    with pytest.raises(CaffeFormatError, match="labels must be >= 0; found -4 at index 1"):
        jps.read_labels_bin(str(tmp_path / "neg.bin"))


def test_relabelled_source_replaces_labels_in_order_and_refuses_too_few():
    class Src:
        path = "db"

        def __len__(self):
            return 3

        def get(self, i, flag=None):
            from caffe_compat.data.sources import Sample
            return Sample(np.zeros((3, 2, 2), np.uint8), 99, "CHW")

    r = jps.RelabelledSource(Src(), np.array([5, 6, 7, 8]), "labels.bin")
    assert [r.get(i).label for i in range(3)] == [5, 6, 7]
    with pytest.raises(CaffeFormatError, match="holds 2 labels but the LMDB 'db' has 3 records"):
        jps.RelabelledSource(Src(), np.array([1, 2]), "labels.bin")
