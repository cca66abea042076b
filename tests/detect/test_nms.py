"""NMS (lib/utils/nms.py) on crafted boxes with hand-computed overlaps, and against a brute-force rule."""
from __future__ import annotations

import numpy as np

from caffekt.kt.detect.nms import nms


def test_crafted_boxes():
    dets = np.array([
        [0, 0, 9, 9, 0.9],      # kept
        [1, 1, 10, 10, 0.8],    # IoU with 0: 81 / 119 = 0.68 -> dropped
        [20, 20, 29, 29, 0.7],  # disjoint -> kept
        [0, 0, 9, 19, 0.6],     # IoU with 0: 100 / 200 = 0.5 (at 0.3: dropped; at 0.5: kept)
        [22, 20, 31, 29, 0.5],  # IoU with 2: 80 / 120 = 0.667 -> dropped
    ])
    assert nms(dets, 0.3) == [0, 2]
    assert nms(dets, 0.5) == [0, 2, 3]       # exactly at the threshold is kept (ovr <= thresh survives)
    assert nms(dets, 0.7) == [0, 1, 2, 3, 4]
    assert nms(np.zeros((0, 5)), 0.3) == []


def test_equal_scores_pick_the_later_index_first():
    # argsort()[::-1]: of equal scores the later one is taken; the twin is then suppressed
    dets = np.array([[0, 0, 9, 9, 0.5], [0, 0, 9, 9, 0.5]])
    assert nms(dets, 0.3) == [1]


def _brute(dets, thresh):
    order = sorted(range(len(dets)), key=lambda i: (-dets[i, 4], -i))
    kept = []
    for i in order:
        ok = True
        for k in kept:
            a, b = dets[i], dets[k]
            iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
            ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            union = (a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter
            if inter / union > thresh:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def test_random_boxes_match_a_brute_force_rule():
    g = np.random.default_rng(0)
    for trial in range(20):
        n = int(g.integers(1, 60))
        xy = g.uniform(0, 80, (n, 2))
        wh = g.uniform(2, 40, (n, 2))
        scores = g.permutation(n) / n    # distinct scores: the order is defined
        dets = np.hstack([xy, xy + wh, scores[:, None]])
        for t in (0.1, 0.3, 0.7):
            assert nms(dets, t) == _brute(dets, t), (trial, t)
