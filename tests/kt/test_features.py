"""Feature files: rows vs an independent NumPy/OpenCV computation, resume byte-identity, manifests, PCA."""
import json
import os

import cv2
import numpy as np
import pytest
import torch

from caffe_compat.errors import BadPayload, CaffeCompatError, CaffeFormatError
from caffekt.kt import features as F

NET = """name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 3 stride: 2 weight_filler { type: "gaussian" std: 0.1 }
                      bias_filler { type: "constant" value: 0.5 } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "fc" type: "InnerProduct" bottom: "conv1" top: "fc"
  inner_product_param { num_output: 5 weight_filler { type: "gaussian" std: 0.1 } } }
"""


@pytest.fixture()
def model(tmp_path):
    """tiny.prototxt + seeded tiny.caffemodel; returns 'PROTOTXT:WEIGHTS'."""
    from caffe_compat.net import load_net
    from caffe_compat.weights import save_caffemodel
    proto = tmp_path / "tiny.prototxt"
    proto.write_text(NET)
    torch.manual_seed(0)
    save_caffemodel(load_net(str(proto)), str(tmp_path / "tiny.caffemodel"))
    return f"{proto}:{tmp_path / 'tiny.caffemodel'}"


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    out = []
    for i in range(11):
        p = str(d / f"im{i:02d}.png")
        cv2.imwrite(p, rng.integers(0, 256, (20 + i, 16 + 2 * i, 3), dtype=np.uint8))
        out.append(p)
    return out


def _numpy_caffe_input(path, size=12, short=14, mean=(104.0, 117.0, 123.0)):
    """Independent port: shorter side -> short, centre crop, minus BGR mean, CHW."""
    img = cv2.imread(path)
    h, w = img.shape[:2]
    s = short / min(h, w)
    nh, nw = max(size, int(round(h * s))), max(size, int(round(w * s)))
    img = cv2.resize(img, (nw, nh))
    y, x = (nh - size) // 2, (nw - size) // 2
    return (img[y:y + size, x:x + size].astype(np.float32) - np.float32(mean)).transpose(2, 0, 1)


def test_rows_are_the_blob_of_the_preprocessed_image(tmp_path, model, images):
    from caffe_compat.net import load_net
    out = str(tmp_path / "f.npy")
    got = np.array(F.extract(images, out, model=model, blob="conv1", pool_grid=1, batch_size=4, progress=False))
    proto, weights = model.rsplit(":", 1)
    net = load_net(proto, weights=weights)
    x = torch.from_numpy(np.stack([_numpy_caffe_input(p) for p in images]))
    conv1 = net.forward_all(data=x)["conv1"].detach().numpy()       # N x 4 x 5 x 5
    np.testing.assert_allclose(got, conv1.mean(axis=(2, 3)), rtol=1e-5, atol=1e-6)
    assert got.shape == (11, 4)
    man = json.load(open(out + ".json"))
    assert man["rows_done"] == 11 and man["complete"] and man["dim"] == 4 and man["images"] == images
    assert man["source"]["blob"] == "conv1" and man["options"]["input"] == [12, 12]
    # a 2-D blob is written as is; L2 rows have unit norm
    fc = np.array(F.extract(images, str(tmp_path / "fc.f32"), model=model, blob="fc", l2=True, progress=False))
    ref = net.forward_all(data=x)["fc"].detach().numpy()
    np.testing.assert_allclose(fc, ref / np.linalg.norm(ref, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    assert os.path.getsize(tmp_path / "fc.f32") == 11 * 5 * 4
    np.testing.assert_array_equal(np.fromfile(tmp_path / "fc.f32", "<f4").reshape(11, 5), fc)


def test_pool_grid_is_block_mean(tmp_path, images):
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6)
    got = F.pool_rows(x, 3).numpy()
    ref = x.numpy().reshape(2, 3, 3, 2, 3, 2).mean(axis=(3, 5)).reshape(2, -1)
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_interrupted_run_resumes_byte_identical(tmp_path, model, images):
    full = str(tmp_path / "full.npy")
    F.extract(images, full, model=model, blob="conv1", pool_grid=2, batch_size=3, progress=False)
    part = str(tmp_path / "part.npy")

    class Stop(Exception):
        pass

    def stop_after_two(done):
        if done >= 6:
            raise Stop()
    with pytest.raises(Stop):
        F.extract(images, part, model=model, blob="conv1", pool_grid=2, batch_size=3, progress=False,
                  on_batch=stop_after_two)
    man = json.load(open(part + ".json"))
    assert man["rows_done"] == 6 and not man["complete"]
    with pytest.raises(CaffeFormatError, match=r"unfinished \(6 of 11 rows\)"):
        F.load_features(part)
    seen = []
    F.extract(images, part, model=model, blob="conv1", pool_grid=2, batch_size=3, progress=False,
              on_batch=seen.append)
    assert seen == [9, 11]            # only the missing batches ran
    assert open(part, "rb").read() == open(full, "rb").read()


def test_manifest_mismatch_names_the_key(tmp_path, model, images):
    out = str(tmp_path / "f.npy")
    F.extract(images, out, model=model, blob="conv1", pool_grid=2, progress=False)
    with pytest.raises(CaffeCompatError, match=r"key 'source.blob' \('conv1' there, 'fc' here\)"):
        F.extract(images, out, model=model, blob="fc", progress=False)
    with pytest.raises(CaffeCompatError, match=r"key 'options.pool_grid' \(2 there, 3 here\)"):
        F.extract(images, out, model=model, blob="conv1", pool_grid=3, progress=False)
    with pytest.raises(CaffeCompatError, match=r"key 'images' \(11 images there, 10 here; first difference at row 10\)"):
        F.extract(images[:10], out, model=model, blob="conv1", pool_grid=2, progress=False)


def test_nan_features_name_the_image(tmp_path, images):
    proto = tmp_path / "nan.prototxt"
    proto.write_text(NET.replace('layer { name: "relu1"', 'layer { name: "p" type: "Power" bottom: "conv1" top: "conv1" '
                                 'power_param { power: 0.5 shift: -1000 } }\nlayer { name: "relu1"'))
    with pytest.raises(BadPayload, match=r"features of image '.*im00.png' \(row 0\) contain NaN/Inf"):
        F.extract(images, str(tmp_path / "n.npy"), model=str(proto), blob="conv1", progress=False)


def test_model_errors(tmp_path, model, images):
    with pytest.raises(CaffeCompatError, match="has no blob 'conv9'"):
        F.extract(images, str(tmp_path / "a.npy"), model=model, blob="conv9", progress=False)
    with pytest.raises(CaffeCompatError, match="end in .npy or .f32"):
        F.extract(images, str(tmp_path / "a.bin"), model=model, blob="conv1", progress=False)
    w = model.rsplit(":", 1)[1]
    # without deploy.prototxt: the caffemodel's own layers (Input-fed) are the net
    own = np.array(F.extract(images, str(tmp_path / "o.npy"), checkpoint=w, blob="fc", progress=False))
    from caffe_compat.net import load_net
    from caffe_compat.weights import save_caffemodel
    train = tmp_path / "t" / "train.prototxt"
    train.parent.mkdir()
    train.write_text(NET.replace('type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 12 dim: 12 } }',
                                 'type: "ImageData" top: "data" top: "label" image_data_param { source: "x" batch_size: 1 }'))
    save_caffemodel(load_net(str(train), input_shapes={"data": (1, 3, 12, 12), "label": (1,)}),
                    str(tmp_path / "t" / "m.caffemodel"))
    with pytest.raises(CaffeFormatError, match="no deploy.prototxt beside the checkpoint, and its own net reads"):
        F.extract(images, str(tmp_path / "a.npy"), checkpoint=str(tmp_path / "t" / "m.caffemodel"), blob="fc",
                  progress=False)
    # with deploy.prototxt beside it, a checkpoint loads like PROTOTXT:WEIGHTS
    (tmp_path / "deploy.prototxt").write_text(NET)
    a = np.array(F.extract(images, str(tmp_path / "c.npy"), checkpoint=w, blob="fc", progress=False))
    b = np.array(F.extract(images, str(tmp_path / "d.npy"), model=model, blob="fc", progress=False))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(own, b)


def test_tile_mvn_preprocessing(images):
    p = F.Preprocess("tile-mvn", 8, 8, scale=50.0)
    x = p(images[3]).astype(np.float64)
    img = cv2.resize(cv2.imread(images[3]), (8, 8)).astype(np.float64)
    ref = (img - img.mean()) / (img.std() + 1e-9) * 50
    np.testing.assert_allclose(x, ref.transpose(2, 0, 1), rtol=1e-5, atol=1e-4)
    assert abs(x.mean()) < 1e-3 and x.std() == pytest.approx(50, rel=1e-4)


def test_pca_whitening_matches_sample_statistics(tmp_path):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6)) + 3).astype(np.float32)
    p = F.fit_pca(x, 4, whiten=True, sample=10 ** 6)
    y = p.transform(x).astype(np.float64)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-4)
    np.testing.assert_allclose(np.cov(y, rowvar=False), np.eye(4), atol=1e-3)
    ev = np.sort(np.linalg.eigvalsh(np.cov(x.astype(np.float64), rowvar=False)))[::-1][:4]
    np.testing.assert_allclose(p.variances, ev, rtol=1e-6)
    p.save(str(tmp_path / "p.npz"))
    np.testing.assert_array_equal(F.PCA.load(str(tmp_path / "p.npz")).transform(x), p.transform(x))
    with pytest.raises(CaffeCompatError, match="PCA to 7 dims"):
        F.fit_pca(x, 7, whiten=False)


def test_extract_with_pca_writes_projection_and_resumes(tmp_path, model, images):
    out = str(tmp_path / "p.npy")
    y = np.array(F.extract(images, out, model=model, blob="conv1", pool_grid=2, pca=3, whiten=True, l2=True,
                           progress=False))
    raw, _ = F.load_features(out + ".raw.npy")
    pca = F.PCA.load(out + ".pca.npz")
    ref = F.l2_normalize(pca.transform(np.array(raw)))
    np.testing.assert_array_equal(y, ref)
    assert y.shape == (11, 3) and raw.shape == (11, 16)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1, rtol=1e-5)
    # a second call finds it complete and does nothing
    again = F.extract(images, out, model=model, blob="conv1", pool_grid=2, pca=3, whiten=True, l2=True,
                      progress=False, on_batch=lambda d: pytest.fail("recomputed"))
    np.testing.assert_array_equal(np.array(again), y)


def test_sharded_over_two_processes_equals_one(tmp_path, model, images):
    """Two processes as torchrun starts them (RANK / WORLD_SIZE): rank 0 joins the shards."""
    import subprocess
    import sys
    one = np.array(F.extract(images, str(tmp_path / "one.npy"), model=model, blob="conv1", pool_grid=2,
                             batch_size=4, progress=False))
    code = ("import json,sys; from caffekt.kt.features import extract; "
            "extract(json.loads(sys.argv[1]), sys.argv[2], model=sys.argv[3], blob='conv1', pool_grid=2, "
            "batch_size=4, progress=False)")
    out = str(tmp_path / "two.npy")
    procs = [subprocess.Popen([sys.executable, "-c", code, json.dumps(images), out, model],
                              env={**os.environ, "RANK": str(r), "WORLD_SIZE": "2"}) for r in (1, 0)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    two, man = F.load_features(out)
    np.testing.assert_allclose(np.array(two), one, rtol=1e-6, atol=1e-7)
    assert man["shards"] == 2 and man["images"] == images and man["rows_done"] == 11
    assert not [f for f in os.listdir(tmp_path) if ".shard" in f]
    with pytest.raises(CaffeCompatError, match="rank 2 is outside a world of 2"):
        F.extract(images, out, model=model, blob="conv1", pool_grid=2, shard=(2, 2), progress=False)
