"""HOG rows equal the library called directly; HOG files go through the clustering path."""
import cv2
import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError
from caffekt.kt.cluster import cluster_file
from caffekt.kt.features import load_features
from caffekt.kt.hog import extract_hog
from caffekt.kt.labels import read_labels_bin, read_list, write_list


def _stripes(path, vertical, phase, size=40, period=6):
    x = np.arange(size)
    wave = ((x + phase) % period < period // 2).astype(np.uint8) * 200 + 20
    img = np.tile(wave[None, :] if vertical else wave[:, None], (size, 1) if vertical else (1, size))
    cv2.imwrite(path, np.repeat(img[:, :, None], 3, axis=2))


@pytest.fixture()
def stripes(tmp_path):
    paths, truth = [], []
    for i in range(12):
        p = str(tmp_path / f"s{i:02d}.png")
        _stripes(p, vertical=i % 2 == 0, phase=i)
        paths.append(p)
        truth.append(i % 2)
    return paths, truth


def test_opencv_rows_equal_cv2_hogdescriptor(tmp_path, stripes):
    paths, _ = stripes
    got = np.array(extract_hog(paths, str(tmp_path / "h.npy"), size=32, batch_size=5, progress=False))
    desc = cv2.HOGDescriptor((32, 32), (16, 16), (8, 8), (8, 8), 9)
    for i, p in enumerate(paths):
        g = cv2.resize(cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        np.testing.assert_array_equal(got[i], desc.compute(g).reshape(-1))
    assert got.shape == (12, 3 * 3 * 4 * 9)


def test_skimage_rows_equal_skimage_hog(tmp_path, stripes):
    from skimage.feature import hog
    paths, _ = stripes
    got = np.array(extract_hog(paths, str(tmp_path / "h.npy"), size=32, backend="skimage", progress=False))
    for i, p in enumerate(paths):
        g = cv2.resize(cv2.cvtColor(cv2.imread(p), cv2.COLOR_BGR2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
        ref = hog(g, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2), block_norm="L2-Hys")
        np.testing.assert_allclose(got[i], ref, rtol=1e-6, atol=1e-7)


def test_hog_clusters_split_orientations(tmp_path, stripes):
    paths, truth = stripes
    feats = str(tmp_path / "h.npy")
    extract_hog(paths, feats, size=32, l2=True, progress=False)
    x, man = load_features(feats)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1, rtol=1e-5)
    assert man["source"]["model"] == "hog:opencv"
    tl = str(tmp_path / "truth.txt")
    write_list(tl, [p.split("/")[-1] for p in paths], truth)   # names relative to the list's folder
    s = cluster_file(feats, 2, str(tmp_path / "labels.txt"), truth=tl, hist_png=str(tmp_path / "h.png"))
    assert s["nmi"] == pytest.approx(1.0) and s["purity"] == 1.0
    names, lab = read_list(str(tmp_path / "labels.txt"))
    assert names == paths and read_labels_bin(str(tmp_path / "labels.bin")).tolist() == lab.tolist()
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_hog_parameter_errors(tmp_path, stripes):
    with pytest.raises(CaffeCompatError, match="HOG size 30 must be a multiple of the cell size 8"):
        extract_hog(stripes[0], str(tmp_path / "h.npy"), size=30, progress=False)
    with pytest.raises(CaffeCompatError, match="backend must be one of"):
        extract_hog(stripes[0], str(tmp_path / "h.npy"), backend="mine", progress=False)
