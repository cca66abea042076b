"""Permutation sets: the authors' .bin files, .npy, greedy generation, statistics."""
import itertools
import os

import numpy as np
import pytest

from caffe_compat.errors import CaffeFormatError
from caffekt.kt.permutations import (generate_permutations, hamming_stats, read_permutations,
                                     write_permutations)


def _brute_stats(perms):
    d = [int((a != b).sum()) for a, b in itertools.combinations(perms, 2)]
    return min(d), float(np.mean(d))


def test_authors_701_set(fixtures_dir):
    p = read_permutations(os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin"))
    assert p.shape == (701, 9) and p.min() == 0 and p.max() == 8
    s = hamming_stats(p)
    assert s["n"] == 701 and s["min"] == 3 and f"{s['mean']:.2f}" == "8.00"
    # first row of the file is 1 8 3 6 9 7 2 4 5 (1-based)
    assert p[0].tolist() == [0, 7, 2, 5, 8, 6, 1, 3, 4]


def test_authors_100_set_stats_match_brute_force(fixtures_dir):
    p = read_permutations(os.path.join(fixtures_dir, "jigsaw", "permutations_100_max.bin"))
    s = hamming_stats(p)
    lo, mean = _brute_stats(p)
    assert (s["n"], s["min"]) == (100, lo) == (100, 2)
    assert s["mean"] == pytest.approx(mean) and f"{mean:.2f}" == "8.08"


def test_bin_and_npy_round_trip(tmp_path, fixtures_dir):
    src = os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin")
    p = read_permutations(src)
    out = tmp_path / "p.bin"
    write_permutations(str(out), p)
    assert out.read_bytes() == open(src, "rb").read()  # byte-identical to the authors' file
    npy = tmp_path / "p.npy"
    write_permutations(str(npy), p)
    assert np.array_equal(read_permutations(str(npy)), p)
    np.save(tmp_path / "one_based.npy", p + 1)
    assert np.array_equal(read_permutations(str(tmp_path / "one_based.npy")), p)


@pytest.mark.parametrize("variant", ["max_avg", "max_min"])
def test_greedy_generation_is_seeded_and_valid(variant):
    a = generate_permutations(30, variant, seed=3)
    b = generate_permutations(30, variant, seed=3)
    c = generate_permutations(30, variant, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert len(np.unique(a, axis=0)) == 30
    lo, mean = _brute_stats(a)
    assert hamming_stats(a)["min"] == lo


@pytest.mark.parametrize("variant", ["max_avg", "max_min"])
def test_each_greedy_step_reaches_the_brute_force_optimum(variant):
    # On 5 tiles (120 permutations) the whole pool can be scored by brute force:
    # every added permutation must maximise the objective over the remaining pool.
    a = generate_permutations(20, variant, seed=1, tiles=5)
    pool = [np.array(q) for q in itertools.permutations(range(5))]
    agg = sum if variant == "max_avg" else min
    for i in range(1, len(a)):
        chosen = {tuple(s) for s in a[:i]}
        score = lambda q: agg(int((q != s).sum()) for s in a[:i])
        best = max(score(q) for q in pool if tuple(q) not in chosen)
        assert score(a[i]) == best, f"step {i}"


def _write_raw(path, values):
    np.asarray(values, dtype="<i4").tofile(path)


@pytest.mark.parametrize("values,msg", [
    ([5, 9, 1, 2, 3], "header says 5 permutations"),
    ([1, 9] + list(range(0, 9)), "1-based"),
    ([2, 9] + list(range(1, 10)) * 2, "repeated permutation"),
    ([1, 9] + [1, 1, 3, 4, 5, 6, 7, 8, 9], "not a permutation"),
    ([0, 9], "header"),
])
def test_bad_bin_files_are_named_errors(tmp_path, values, msg):
    path = tmp_path / "bad.bin"
    _write_raw(path, values)
    with pytest.raises(CaffeFormatError) as e:
        read_permutations(str(path))
    assert msg in str(e.value) and str(path) in str(e.value)


def test_object_npy_is_refused_without_pickle(tmp_path):
    path = tmp_path / "obj.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(CaffeFormatError, match="pickle|numeric"):
        read_permutations(str(path))
