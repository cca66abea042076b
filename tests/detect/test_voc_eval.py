"""VOC AP: hand-computed cases (ties, difficult, duplicates, IoU at 0.5), and a second independent 11-point routine."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from caffekt.kt.detect.voc_eval import class_ap, voc_ap
from _scene_set import CLASSES, scene_set  # noqa: F401  (fixture)

# image a: A (non-difficult), B (difficult); image b: C
GT = {"a": (np.array([[1, 1, 10, 10], [50, 50, 60, 60]], float), np.array([False, True])),
      "b": (np.array([[5, 5, 20, 20]], float), np.array([False]))}


def test_ties_keep_file_order_and_difficult_counts_neither():
    dets = [("a", 0.9, 1, 1, 10, 10),      # TP on A
            ("a", 0.8, 50, 50, 60, 60),    # on difficult B: ignored
            ("b", 0.7, 100, 100, 110, 110),  # FP
            ("b", 0.7, 5, 5, 20, 20)]      # TP on C, after the FP of equal score (stable order)
    ap, rec, prec, npos = class_ap(dets, GT)
    assert npos == 2
    np.testing.assert_allclose(rec, [0.5, 0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1, 1, 0.5, 2 / 3])
    # t = 0..0.5: max precision 1 (6 points); t = 0.6..1: 2/3 (5 points)
    assert ap == pytest.approx((6 * 1 + 5 * 2 / 3) / 11, abs=1e-12)
    # the other order of the tie would give AP 1: the order is part of the rule
    ap2, *_ = class_ap([dets[0], dets[1], dets[3], dets[2]], GT)
    assert ap2 == pytest.approx(1.0)


def test_duplicates_are_false_positives_and_iou_half_is_a_match():
    dets = [("b", 0.9, 5, 5, 20, 20), ("b", 0.8, 5, 5, 20, 20),   # second hit on C: FP
            # box of 8 x 16 inside C (16 x 16): IoU 128 / 256 = 0.5 exactly -> a match (VOCevaldet >=)
            ("a", 0.7, 1, 1, 10, 5)]
    gt = {"b": GT["b"], "a": (np.array([[1, 1, 10, 10.0]]), np.array([False]))}
    # IoU of (1,1,10,5) with (1,1,10,10): 10*5 / 100 = 0.5
    tp_ap, rec, prec, npos = class_ap(dets, gt)
    np.testing.assert_allclose(rec, [0.5, 0.5, 1.0])
    np.testing.assert_allclose(prec, [1.0, 0.5, 2 / 3])
    assert tp_ap == pytest.approx((6 + 5 * 2 / 3) / 11)


def test_area_ap_hand_case():
    rec = np.array([0.5, 0.5, 1.0])
    prec = np.array([1.0, 0.5, 2 / 3])
    # envelope: 1 up to recall 0.5, 2/3 up to 1 -> 0.5 * 1 + 0.5 * 2/3
    assert voc_ap(rec, prec, use_07=False) == pytest.approx(0.5 + 1 / 3)
    assert voc_ap(np.array([]), np.array([]), use_07=True) == 0.0


def _colon_0_01_1():
    # MATLAB colon (MathWorks' colonop): c(1+k) = a + k*d, c(n+1-k) = b - k*d, middle (a+b)/2
    lo = [k * 0.1 for k in range(6)]
    hi = [1.0 - k * 0.1 for k in range(5)][::-1]
    return lo[:5] + [0.5] + hi


def test_voc07_recall_points_are_matlabs():
    assert [float(t) for t in __import__("caffekt.kt.detect.voc_eval", fromlist=["x"]).VOC07_RECALLS] \
        == _colon_0_01_1()
    # recall exactly 6/10: MATLAB's t = 0.6 counts it (7 points), numpy.arange's 0.6000000000000001 would not
    assert voc_ap(np.array([6 / 10]), np.array([1.0])) == pytest.approx(7 / 11)
    # 3/10 < 0.1 * 3 in doubles in both: 3 points
    assert voc_ap(np.array([3 / 10]), np.array([1.0])) == pytest.approx(3 / 11)


def _second_11pt(dets, gt):
    """Independent: matching by an explicit IoU loop, precision points kept as a list, MATLAB's recall points."""
    npos = sum(int((~d).sum()) for _, d in gt.values())
    order = sorted(range(len(dets)), key=lambda i: (-dets[i][1], i))
    used = {k: [False] * len(v[1]) for k, v in gt.items()}
    tp = fp = 0
    points = []
    for i in order:
        img, _s, *bb = dets[i]
        boxes, diff = gt[img]
        best, arg = -1.0, None
        for j, g in enumerate(boxes):
            iw = min(bb[2], g[2]) - max(bb[0], g[0]) + 1
            ih = min(bb[3], g[3]) - max(bb[1], g[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            u = (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1) + (g[2] - g[0] + 1) * (g[3] - g[1] + 1) - inter
            if inter / u > best:
                best, arg = inter / u, j
        if arg is not None and best >= 0.5:
            if diff[arg]:
                pass
            elif not used[img][arg]:
                used[img][arg] = True
                tp += 1
            else:
                fp += 1
        else:
            fp += 1
        points.append((tp / npos, tp / max(tp + fp, 1)))
    total = 0.0
    for t in _colon_0_01_1():
        ps = [p for r, p in points if r >= t]
        total += max(ps) if ps else 0
    return total / 11


def test_11_point_ap_agrees_with_an_independent_routine():
    g = np.random.default_rng(1)
    for trial in range(30):
        gt = {}
        for i in range(int(g.integers(1, 6))):
            n = int(g.integers(0, 4))
            xy = g.integers(0, 60, (n, 2)).astype(float)
            gt[f"im{i}"] = (np.hstack([xy, xy + g.integers(5, 30, (n, 2))]), g.random(n) < 0.2)
        if sum(int((~d).sum()) for _, d in gt.values()) == 0:
            continue
        dets = []
        for img, (boxes, _d) in gt.items():
            for b in boxes:   # near-hits
                for _ in range(int(g.integers(0, 3))):
                    j = b + g.integers(-4, 5, 4)
                    dets.append((img, float(np.round(g.random(), 1)), *j))   # rounded scores: many ties
            for _ in range(int(g.integers(0, 3))):   # misses
                xy = g.integers(0, 60, 2)
                dets.append((img, float(np.round(g.random(), 1)), *xy, *(xy + 10)))
        ap, *_ = class_ap(dets, gt)
        assert ap == pytest.approx(_second_11pt(dets, gt), abs=1e-12), trial


def test_eval_of_perfect_results_files_and_cli(scene_set, tmp_path, capsys):
    from caffe_compat.cli import main
    from caffekt.kt.detect.voc import VOCDataset
    ds = VOCDataset(scene_set, "test", CLASSES)
    det = tmp_path / "det"
    det.mkdir()
    for k, c in enumerate(CLASSES, 1):
        with open(det / f"comp4_det_test_{c}.txt", "w") as f:
            for r in ds.records():
                for b in r.boxes[r.classes == k]:
                    f.write(f"{r.index} 1.000 {b[0] + 1:.1f} {b[1] + 1:.1f} {b[2] + 1:.1f} {b[3] + 1:.1f}\n")
    out = tmp_path / "res.json"
    png = tmp_path / "ap.png"
    rc = main(["detect", "eval", "--dataset", scene_set, "--split", "test", "--classes", ",".join(CLASSES),
               "--detections", str(det), "-o", str(out), "--png-output", str(png)])
    assert rc == 0
    assert "mAP" in capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["mAP"] == pytest.approx(1.0)
    assert os.path.getsize(png) > 1000
    # a results line naming an image outside the split is a typed error, exit 2
    with open(det / "comp4_det_test_bag.txt", "a") as f:
        f.write("nosuchimage 0.5 1 1 5 5\n")
    rc = main(["detect", "eval", "--dataset", scene_set, "--split", "test", "--classes", ",".join(CLASSES),
               "--detections", str(det)])
    assert rc == 2
    assert "nosuchimage" in capsys.readouterr().err
