"""experiments/run.py: the tiny scale end to end (slow), and the claim verdicts on made-up numbers (fast)."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO

EXP = os.path.join(REPO, "experiments")
FMNIST = "/usr/share/datasets/fashion-mnist"
sys.path.insert(0, EXP)


def _summary(seed, rows):
    """A per-seed summary whose every layer of row r has accuracy rows[r] (percent)."""
    probes = {r: ({"pixels": v / 100} if r == "raw pixels" else {f"conv{i}": v / 100 - 0.01 * (5 - i)
                                                                 for i in range(1, 6)}) for r, v in rows.items()}
    return {"seed": seed, "probes": probes}


def test_judge_verdicts():
    from report import best, judge, resolution
    base = {"raw pixels": 80, "random init": 80, "random init (teacher's architecture)": 70,
            "Jigsaw++ AlexNet (teacher)": 75, "CC from Jigsaw++ AlexNet": 85}
    ss = [_summary(s, {**base, "CC from Jigsaw++ AlexNet": 85 + d}) for s, d in enumerate((0.0, 0.5, -0.5))]
    assert best(ss[0], "CC from Jigsaw++ AlexNet") == pytest.approx(85.0)
    v, m, margin, _ = judge(ss, "CC from Jigsaw++ AlexNet", "random init", "beats", 10000)
    assert v == "reproduced" and m == pytest.approx(5.0) and margin == pytest.approx(max(2 * 0.5 / np.sqrt(3),
                                                                                        resolution(85, 10000)))
    v, m, _, _ = judge(ss, "random init", "CC from Jigsaw++ AlexNet", "beats", 10000)
    assert v == "not reproduced" and m == pytest.approx(-5.0)
    v, _, _, _ = judge(ss, "raw pixels", "random init", "beats", 10000)
    assert v == "within noise"
    v, _, _, _ = judge(ss, "raw pixels", "random init", "keeps", 10000)
    assert v == "reproduced (within noise: keeps)"
    # two binomial standard errors of a difference at 85% on 10,000 images
    assert resolution(85, 10000) == pytest.approx(200 * np.sqrt(2 * 0.85 * 0.15 / 10000))


def test_scales_name_every_stage_and_full_is_all_of_the_data():
    for name in ("tiny", "small", "full"):
        with open(os.path.join(EXP, "configs", f"{name}.json"), encoding="utf-8") as f:
            sc = json.load(f)
        assert sc["name"] == name and sc["expected"]
        for key in ("data", "jigsaw_alexnet", "jigsaw_vgg", "features", "hog", "k", "cc", "probe", "input_size"):
            assert key in sc, (name, key)
        assert sc["jigsaw_vgg"]["arch"] == "vgg16" and sc["jigsaw_alexnet"]["arch"] == "alexnet"
    full = json.load(open(os.path.join(EXP, "configs", "full.json")))
    small = json.load(open(os.path.join(EXP, "configs", "small.json")))
    assert full["data"]["train"] == 60000 and full["data"]["test"] == small["data"]["test"] == 10000


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(FMNIST), reason="dataset-fashion-mnist is not installed")
def test_tiny_scale_end_to_end(tmp_path):
    res = tmp_path / "results.md"
    proc = subprocess.run([sys.executable, os.path.join(EXP, "run.py"), "--scale", "tiny", "--seeds", "0",
                           "--out", str(tmp_path / "runs"), "--results", str(res), "--cache", str(tmp_path / "c")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "scale tiny: about" in proc.stdout
    md = res.read_text()
    s = json.load(open(tmp_path / "runs" / "tiny" / "seed_0" / "summary.json"))
    n_test = 500
    from report import ROWS
    assert set(s["probes"]) == set(ROWS)
    for row, layers in s["probes"].items():
        for a in layers.values():   # every probe is scored on all n_test test images
            assert 0 <= a <= 1 and round(a * n_test) == pytest.approx(a * n_test, abs=1e-4)
        cells = re.search(r"^\| " + re.escape(row) + r" \|(.*)\|$", md, re.M).group(1).split("|")
        assert cells[-1].strip() == f"{100 * max(layers.values()):.1f} ± 0.0"
    for claim in ("(1) Jigsaw++ features beat random init", "(2) CC from the Jigsaw++ teacher keeps or beats",
                  "(3) the deeper teacher", "(4) CC from HOG beats random init"):
        line = next(l for l in md.splitlines() if claim in l)
        assert re.search(r"\*\*(reproduced|not reproduced|within noise)", line), line
    for key in ("alexnet", "vgg"):
        assert s["puzzles"][key]["puzzles"] == 20 and s["puzzles"][key]["chance"] == pytest.approx(0.1)
        assert 0 <= s["clusters"][key]["nmi"] <= 1
    png = tmp_path / "results_probes.png"
    import cv2
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 200 and img.std() > 5
    assert "](results_probes.png)" in md
