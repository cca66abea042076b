"""DataTransformer against a NumPy port of data_transformer.cpp's loops, plus its random draws and errors."""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest

from caffe_compat.binary import Datum, decode_datum, encode_datum, write_blobproto
from caffe_compat.data import DataTransformer, Draw
from caffe_compat.errors import CaffeFormatError, ShapeError, UnsupportedParameter
from caffe_compat.proto import caffe_pb2

from _data_port import datum_path, mat_path

C, H, W = 3, 7, 9


def _image(seed=0, shape=(H, W, C)):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def _mean(seed=1, shape=(1, C, H, W)):
    # awkward values so that rounding order matters
    return (np.random.default_rng(seed).random(shape) * 255).astype(np.float32)


MEANS = ["none", "file", "value1", "value3"]
CASES = list(itertools.product([0, 4], [False, True], MEANS, [1.0, 0.00390625, 0.017]))


def _setup(crop, mean_kind, scale, phase="TRAIN"):
    fields = {"crop_size": crop, "scale": scale, "mirror": True}
    mean = None
    mv = []
    if mean_kind == "file":
        mean = _mean()
    elif mean_kind == "value1":
        mv = [104.00699]
    elif mean_kind == "value3":
        mv = [104.00699, 116.66877, 122.67892]
    if mv:
        fields["mean_value"] = mv
    t = DataTransformer(fields, phase, seed=0, mean=mean)
    return t, mean, [float(np.float32(v)) for v in mv], float(np.float32(scale))


@pytest.mark.parametrize("crop,flip,mean_kind,scale", CASES)
def test_cv_mat_path_matches_port(crop, flip, mean_kind, scale):
    t, mean, mv, s = _setup(crop, mean_kind, scale)
    img = _image()
    h_off, w_off = (2, 5) if crop else (0, 0)   # off-centre on purpose
    got = t.transform(img, layout="HWC", draw=Draw(flip, h_off, w_off))
    want32 = mat_path(img, crop, h_off, w_off, flip, mean, mv, s, np.float32)
    want64 = mat_path(img, crop, h_off, w_off, flip, mean, mv, s, np.float64)
    assert got.dtype == np.float32 and got.shape == want32.shape
    np.testing.assert_array_equal(got, want32)                 # Caffe's float arithmetic, bit for bit
    np.testing.assert_allclose(got, want64, rtol=2e-7, atol=1e-5)


@pytest.mark.parametrize("crop,flip,mean_kind,scale", CASES)
def test_datum_path_matches_port(crop, flip, mean_kind, scale):
    t, mean, mv, s = _setup(crop, mean_kind, scale)
    arr = _image(3, (C, H, W))
    h_off, w_off = (3, 1) if crop else (0, 0)
    datum = decode_datum(encode_datum(arr, 5))
    got = t.transform_datum(datum, draw=Draw(flip, h_off, w_off))
    np.testing.assert_array_equal(got, datum_path(arr, crop, h_off, w_off, flip, mean, mv, s, np.float32))
    np.testing.assert_allclose(got, datum_path(arr, crop, h_off, w_off, flip, mean, mv, s), rtol=2e-7,
                               atol=1e-5)


def test_float_data_datum_uses_float_values():
    arr = np.random.default_rng(4).normal(size=(C, H, W)).astype(np.float32)
    datum = decode_datum(encode_datum(arr, 1))
    assert not datum.data and datum.float_data is not None
    t, mean, mv, s = _setup(4, "value3", 0.5)
    got = t.transform_datum(datum, draw=Draw(True, 1, 2))
    np.testing.assert_array_equal(got, datum_path(arr, 4, 1, 2, True, None, mv, s, np.float32))


def test_both_paths_agree_on_the_same_pixels():
    t, *_ = _setup(4, "file", 0.017)
    img = _image(7)
    d = Draw(True, 3, 4)
    np.testing.assert_array_equal(t.transform(img, draw=d),
                                  t.transform(img.transpose(2, 0, 1), layout="CHW", draw=d))


def test_mean_file_is_read_at_the_uncropped_position_and_not_mirrored():
    # one channel, zero image: the output is -mean over the crop window, mirrored only by the output flip
    mean = np.arange(H * W, dtype=np.float32).reshape(1, 1, H, W)
    t = DataTransformer({"crop_size": 3}, "TRAIN", mean=mean)
    img = np.zeros((H, W, 1), np.uint8)
    out = t.transform(img, draw=Draw(False, 2, 4))
    np.testing.assert_array_equal(out[0], -mean[0, 0, 2:5, 4:7])
    out = t.transform(img, draw=Draw(True, 2, 4))
    np.testing.assert_array_equal(out[0], -mean[0, 0, 2:5, 4:7][:, ::-1])
    assert out[0, 0, 0] == -(2 * W + 6)  # output column 0 reads source column w_off + crop - 1


def test_mean_file_from_a_legacy_binaryproto(tmp_path):
    mean = _mean(5)
    path = str(tmp_path / "mean.binaryproto")
    write_blobproto(path, mean, legacy_4d=True)   # as compute_image_mean writes it
    t = DataTransformer({"crop_size": 5, "mean_file": path, "scale": 0.5}, "TEST")
    img = _image(9)
    got = t.transform(img)
    assert t.draw(H, W) == Draw(False, (H - 5) // 2, (W - 5) // 2)
    np.testing.assert_array_equal(got, mat_path(img, 5, 1, 2, False, mean, [], 0.5, np.float32))


def test_mean_file_dims_must_equal_the_image(tmp_path):
    path = str(tmp_path / "mean.binaryproto")
    write_blobproto(path, np.zeros((1, 3, 5, 5), np.float32))
    t = DataTransformer({"mean_file": path}, "TEST")
    with pytest.raises(ShapeError) as e:
        t.transform(_image())
    msg = str(e.value)
    assert path in msg and "3x5x5" in msg and f"3x{H}x{W}" in msg and "CHECK_EQ" in msg
    # a 3-D mean blob reads as channels = H under Caffe's LegacyShape, so Caffe refuses it as well
    t3 = DataTransformer({}, "TEST", mean=np.zeros((C, H, W), np.float32))
    with pytest.raises(ShapeError, match=rf"is {H}x{W}x1 .* but the image is {C}x{H}x{W}"):
        t3.transform(_image())


def test_parameter_errors(tmp_path):
    path = str(tmp_path / "m.binaryproto")
    write_blobproto(path, np.zeros((1, 3, H, W), np.float32))
    with pytest.raises(UnsupportedParameter, match="Cannot specify mean_file and mean_value"):
        DataTransformer({"mean_file": path, "mean_value": [1.0]}, "TRAIN")
    with pytest.raises(UnsupportedParameter, match="Specify either 1 mean_value or as many as channels: 3"):
        DataTransformer({"mean_value": [1.0, 2.0]}).transform(_image())
    with pytest.raises(UnsupportedParameter, match="both force_color and force_gray"):
        DataTransformer({"force_color": True, "force_gray": True})
    with pytest.raises(ShapeError, match=r"crop_size 8 is larger than the 7x9 image"):
        DataTransformer({"crop_size": 8}).transform(_image())
    with pytest.raises(UnsupportedParameter, match="no field 'crop'"):
        DataTransformer({"crop": 3})
    with pytest.raises(UnsupportedParameter, match="phase must be TRAIN or TEST"):
        DataTransformer({}, "VAL")
    with pytest.raises(CaffeFormatError, match=r"missing\.binaryproto: cannot read mean_file"):
        DataTransformer({"mean_file": str(tmp_path / "missing.binaryproto")})


@pytest.mark.parametrize("field,value", [("siamese_size", 9), ("patch_size", 64), ("jitter_size", 18),
                                         ("hash_file", "perm.bin"), ("gap_size", 2)])
def test_jigsaw_fields_point_to_the_puzzle_module(field, value):
    with pytest.raises(UnsupportedParameter, match=rf"{field}.*caffe_compat\.data\.jps\.JpsTransformer"):
        DataTransformer({field: value})


def test_jigsaw_fixture_transform_param_is_refused(fixtures_dir):
    from google.protobuf import text_format
    net = caffe_pb2.NetParameter()
    with open(os.path.join(fixtures_dir, "jigsaw", "train_val_cfn_jps++.prototxt")) as f:
        text_format.Parse(f.read(), net, allow_unknown_field=True)
    tps = [lp.transform_param for lp in net.layer if lp.HasField("transform_param")]
    assert tps
    with pytest.raises(UnsupportedParameter, match="siamese_size.*patch_size|caffe_compat.data.jps"):
        DataTransformer(tps[0], "TRAIN")


class _Recorder:
    """A stand-in generator that records each Rand(n) argument and returns n - 1."""

    def __init__(self):
        self.calls = []

    def integers(self, n):
        self.calls.append(int(n))
        return n - 1


@pytest.mark.parametrize("mirror,phase,crop,expected", [
    (True, "TRAIN", 4, [2, H - 4 + 1, W - 4 + 1]),   # mirror first, then h_off, then w_off
    (False, "TRAIN", 4, [H - 4 + 1, W - 4 + 1]),
    (True, "TEST", 4, [2]),                          # TEST: centre crop, but mirror still random
    (False, "TEST", 4, []),
    (True, "TRAIN", 0, [2]),
])
def test_rand_calls_follow_caffe(mirror, phase, crop, expected):
    t = DataTransformer({"mirror": mirror, "crop_size": crop}, phase)
    rec = _Recorder()
    d = t.draw(H, W, rng=rec)
    assert rec.calls == expected
    assert t.needs_rand == bool(expected)
    if phase == "TEST" and crop:
        assert (d.h_off, d.w_off) == ((H - crop) // 2, (W - crop) // 2)
    if phase == "TRAIN" and crop:
        assert (d.h_off, d.w_off) == (H - crop, W - crop)   # Rand(n) = n - 1 reaches the last offset
    assert d.mirror == mirror


def test_crop_and_mirror_distribution():
    n = 6000
    t = DataTransformer({"mirror": True, "crop_size": 4}, "TRAIN", seed=123)
    draws = np.array([t.draw(H, W) for _ in range(n)])
    flips, hs, ws = draws[:, 0], draws[:, 1], draws[:, 2]
    # mirror ~ Bernoulli(1/2): 5 sigma is 0.032 at n = 6000
    assert abs(flips.mean() - 0.5) < 0.035
    for offs, k in ((hs, H - 4 + 1), (ws, W - 4 + 1)):
        counts = np.bincount(offs, minlength=k)
        assert len(counts) == k and counts.min() > 0          # every offset 0..H-crop, nothing beyond
        chi2 = ((counts - n / k) ** 2 / (n / k)).sum()
        assert chi2 < 30, (counts, chi2)                      # df <= 5: p << 1e-4 for a fair die
    # independence of mirror and offset
    assert abs(flips[hs == 0].mean() - 0.5) < 0.08


def test_test_phase_mirror_still_flips():
    t = DataTransformer({"mirror": True, "crop_size": 4}, "TEST", seed=5)
    flips = [t.draw(H, W).mirror for _ in range(2000)]
    assert 0.44 < np.mean(flips) < 0.56


def test_seeded_streams():
    img = _image()
    a = DataTransformer({"mirror": True, "crop_size": 4}, "TRAIN", seed=7)
    b = DataTransformer({"mirror": True, "crop_size": 4}, "TRAIN", seed=7)
    c = DataTransformer({"mirror": True, "crop_size": 4}, "TRAIN", seed=8)
    ra = [a.transform(img) for _ in range(20)]
    rb = [b.transform(img) for _ in range(20)]
    rc = [c.transform(img) for _ in range(20)]
    assert all(np.array_equal(x, y) for x, y in zip(ra, rb))
    assert not all(np.array_equal(x, y) for x, y in zip(ra, rc))


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("mean_kind", MEANS)
def test_batch_path_equals_single_path(layout, mean_kind):
    t, *_ = _setup(4, mean_kind, 0.017)
    imgs = _image(11, (6, H, W, C))
    batch = imgs if layout == "NHWC" else imgs.transpose(0, 3, 1, 2)
    rng = np.random.default_rng(0)
    draws = [t.draw(H, W, rng) for _ in range(6)]
    assert any(d.mirror for d in draws) and not all(d.mirror for d in draws)
    got = t.transform_batch(batch, layout=layout, draws=draws)
    want = np.stack([t.transform(im, draw=d) for im, d in zip(imgs, draws)])
    np.testing.assert_array_equal(got, want)


def test_gray_image_gives_one_channel():
    t = DataTransformer({"crop_size": 3, "mean_value": [10.0]}, "TEST")
    img = _image(2, (H, W))
    out = t.transform(img)
    assert out.shape == (1, 3, 3)
    np.testing.assert_array_equal(out, mat_path(img, 3, 2, 3, False, None, [10.0], 1.0, np.float32))


def test_encoded_datum_decoding_follows_force_flags():
    cv2 = pytest.importorskip("cv2")
    bgra = _image(6, (H, W, 4))
    ok, png = cv2.imencode(".png", bgra)
    assert ok
    datum = decode_datum(encode_datum(png.tobytes(), 3, encoded=True))
    native = DataTransformer({}, "TEST").transform_datum(datum)
    assert native.shape == (4, H, W)          # imdecode(-1) keeps alpha, as DecodeDatumToCVMatNative
    np.testing.assert_array_equal(native, bgra.transpose(2, 0, 1).astype(np.float32))
    color = DataTransformer({"force_color": True}, "TEST").transform_datum(datum)
    np.testing.assert_array_equal(color, bgra[:, :, :3].transpose(2, 0, 1).astype(np.float32))
    gray = DataTransformer({"force_gray": True}, "TEST").transform_datum(datum)
    want = cv2.imdecode(png, cv2.IMREAD_GRAYSCALE).astype(np.float32)[None]
    np.testing.assert_array_equal(gray, want)
    with pytest.warns(UserWarning, match="only for encoded datum"):
        DataTransformer({"force_gray": True}).transform_datum(Datum(3, H, W, _image().tobytes()))
    with pytest.raises(CaffeFormatError, match="Could not decode datum"):
        DataTransformer({}).transform_datum(Datum(data=b"not an image", encoded=True))


def test_proto_message_accepted_and_output_shape():
    tp = caffe_pb2.TransformationParameter(crop_size=227, mirror=True, scale=0.5)
    t = DataTransformer(tp, caffe_pb2.TEST)
    assert t.output_shape(3, 256, 256) == (3, 227, 227)
    assert t.transform(np.zeros((256, 256, 3), np.uint8)).shape == (3, 227, 227)
    assert DataTransformer().output_shape(1, 5, 6) == (1, 5, 6)
