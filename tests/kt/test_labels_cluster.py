"""Pseudo-label files and k-means clustering on data with known structure."""
import struct

import numpy as np
import pytest

from caffe_compat.errors import CaffeCompatError, CaffeFormatError
from caffekt.kt.cluster import kmeans, nmi, purity
from caffekt.kt.labels import read_labels_bin, read_list, write_labels_bin, write_list


def test_labels_bin_is_the_forks_layout_byte_for_byte(tmp_path):
    labels = [3, 0, 1999, 7, 42]
    p = tmp_path / "labels.bin"
    write_labels_bin(str(p), labels)
    assert p.read_bytes() == struct.pack("<6i", 5, *labels)
    assert read_labels_bin(str(p)).tolist() == labels


def test_labels_bin_count_mismatch(tmp_path):
    p = tmp_path / "labels.bin"
    p.write_bytes(struct.pack("<3i", 5, 1, 2))
    with pytest.raises(CaffeFormatError, match=r"count says 5 labels but the file holds 2"):
        read_labels_bin(str(p))


def test_list_round_trip_with_spaces_in_paths(tmp_path):
    names = ["n01/a.JPEG", "dir with space/b c.jpg", "x.png"]
    p = tmp_path / "train.txt"
    write_list(str(p), names, [5, 0, 17])
    assert p.read_text() == "n01/a.JPEG 5\ndir with space/b c.jpg 0\nx.png 17\n"
    got_names, got = read_list(str(p))
    assert got_names == names and got.tolist() == [5, 0, 17]


def test_list_errors_name_the_line(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_text("a.jpg 1\nb.jpg one\n")
    with pytest.raises(CaffeFormatError, match=r"bad.txt: line 2: label 'one' is not an integer"):
        read_list(str(p))


def test_kmeans_recovers_planted_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16)) * 10
    truth = rng.integers(0, 8, size=2000)
    x = (centres[truth] + rng.normal(size=(2000, 16))).astype(np.float32)
    res = kmeans(x, 8, seed=0, chunk=300)
    assert nmi(res.labels, truth) > 0.99 and purity(res.labels, truth) > 0.99
    assert res.sizes.sum() == 2000 and res.centroids.shape == (8, 16)
    d = ((x - res.centroids[res.labels]) ** 2).sum()
    assert res.objective == pytest.approx(float(d), rel=1e-4)
    again = kmeans(x, 8, seed=0, max_train=1000)
    assert nmi(again.labels, truth) > 0.99


def test_kmeans_bad_input():
    with pytest.raises(CaffeCompatError, match="k=10 clusters need at least 10 images"):
        kmeans(np.zeros((5, 3), np.float32), 10)
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    x[7, 1] = np.nan
    with pytest.raises(CaffeCompatError, match="NaN"):
        kmeans(x, 3)


def test_nmi_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 7, 300), rng.integers(0, 4, 300)
        b[:150] = a[:150] % 4
        assert nmi(a, b) == pytest.approx(sk.normalized_mutual_info_score(a, b), abs=1e-12)
    assert purity([0, 0, 1, 1], [5, 5, 5, 6]) == 0.75
