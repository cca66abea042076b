"""Jigsaw++ puzzle geometry and statistics against the fork's formulas."""
import numpy as np
import pytest

from caffekt.kt import puzzle as P


def _coord_image():
    """A stored image whose pixels encode their own position and channel."""
    y, x = np.mgrid[0:P.STORED, 0:P.STORED]
    img = np.empty((P.STORED, P.STORED, 3), dtype=np.int64)
    for c in range(3):
        img[..., c] = y * 1000 + x + c * 10**6
    return img


def test_tiles_stay_in_their_cells_with_per_channel_shifts():
    img = _coord_image()
    rng = np.random.default_rng(0)
    seen_origin, seen_shift = set(), set()
    for _ in range(300):
        tiles = P.cut_tiles(img.astype(np.float64), rng).astype(np.int64)
        for t in range(9):
            cy, cx = divmod(t, 3)
            origins = []
            for c in range(3):
                v = tiles[t, c] - c * 10**6
                ys, xs = v // 1000, v % 1000
                y0, x0 = int(ys[0, 0]), int(xs[0, 0])
                # contiguous 64x64 window
                assert np.array_equal(ys, y0 + np.arange(64)[:, None] + 0 * xs)
                assert np.array_equal(xs, x0 + np.arange(64)[None, :] + 0 * ys)
                # inside its own 85x85 cell
                assert cy * 85 <= y0 and y0 + 64 <= (cy + 1) * 85
                assert cx * 85 <= x0 and x0 + 64 <= (cx + 1) * 85
                origins.append((y0 - cy * 85, x0 - cx * 85))
            base = tuple(min(o[k] for o in origins) for k in range(2))
            for o in origins:
                seen_shift.add((o[0] - base[0], o[1] - base[1]))
            seen_origin.add(base)
    # offsets span 0..18(+2) and channel shifts span 0..2 in both axes
    assert max(o[0] for o in seen_origin) <= 20 and max(s[0] for s in seen_shift) == 2
    assert {s[0] for s in seen_shift} == {0, 1, 2} and {s[1] for s in seen_shift} == {0, 1, 2}


def test_colour_matrices():
    v = np.array([1.0, -2.0, 1.0])
    # the projection kills v, keeps everything orthogonal to it, and is idempotent
    assert np.allclose(P.PROJECTION @ v, 0)
    assert np.allclose(P.PROJECTION @ np.array([1.0, 1.0, 1.0]), [1, 1, 1])
    assert np.allclose(P.PROJECTION @ P.PROJECTION, P.PROJECTION)
    # the fork's literal coefficients: R' = .8333R + .3333G - .1667B, G' = (R+G+B)/3
    assert np.allclose(P.PROJECTION[0], [5 / 6, 1 / 3, -1 / 6])
    assert np.allclose(P.PROJECTION[1], [1 / 3, 1 / 3, 1 / 3])
    tiles = np.random.default_rng(0).random((9, 3, 64, 64)).astype(np.float32)
    g = P.apply_colour(tiles, "gray")
    assert np.allclose(g[:, 0], tiles.mean(axis=1), atol=1e-6) and np.allclose(g[:, 0], g[:, 2])


def test_colour_mode_frequencies():
    rng = np.random.default_rng(0)
    modes = [P.colour_mode(rng, P.PuzzleConfig()) for _ in range(20000)]
    freq = {m: modes.count(m) / len(modes) for m in ("gray", "project", "raw")}
    assert abs(freq["gray"] - 0.5) < 0.02 and abs(freq["project"] - 0.25) < 0.02


def test_mvn_times_50_statistics():
    rng = np.random.default_rng(1)
    tiles = (rng.random((9, 3, 64, 64)) * 255).astype(np.float32)
    out = P.mvn_tiles(tiles)
    flat = out.reshape(9, -1).astype(np.float64)
    assert np.allclose(flat.mean(1), 0, atol=1e-3) and np.allclose(flat.std(1), 50, rtol=1e-5)
    # eps is added after the square root: a constant tile maps to exactly 0
    assert np.all(P.mvn_tiles(np.full((1, 3, 64, 64), 7, np.float32)) == 0)


def test_labels_permute_cells_and_occluders_count_uniformly():
    img = _coord_image().astype(np.uint8)  # any image; we inspect the raw path below
    perms = np.array([np.roll(np.arange(9), k) for k in range(9)])
    rng = np.random.default_rng(2)
    cfg = P.PuzzleConfig(normalize=False, gray_p=0.0, project_p=0.0)
    counts = np.zeros(3, int)
    coord = _coord_image().astype(np.float64)
    for _ in range(3000):
        tiles, label, k = P.make_puzzle(img, perms, rng, cfg, occluder_img=img)
        counts[k] += 1
    assert counts.sum() == 3000 and np.all(np.abs(counts / 3000 - 1 / 3) < 0.04)
    # without occluders, output tile i comes from cell perms[label][i]
    cfg0 = P.PuzzleConfig(normalize=False, gray_p=0.0, project_p=0.0, occluder="none")
    for _ in range(20):
        r = np.random.default_rng(_)
        tiles, label, k = P.make_puzzle(coord, perms, r, cfg0)
        assert k == 0
        for i in range(9):
            y0 = int(tiles[i, 0, 0, 0]) // 1000
            x0 = int(tiles[i, 0, 0, 0]) % 1000
            assert (y0 // 85, x0 // 85) == divmod(int(perms[label][i]), 3)


def test_occluder_tiles_come_from_the_other_image():
    a = np.zeros((255, 255, 3), np.uint8)
    b = np.full((255, 255, 3), 200, np.uint8)
    cfg = P.PuzzleConfig(normalize=False, min_substitute=2, max_substitute=1)  # always 2
    perms = np.arange(9)[None]
    tiles, _, k = P.make_puzzle(a, perms, np.random.default_rng(0), cfg, occluder_img=b)
    assert k == 2
    assert (tiles.reshape(9, -1).max(1) > 0).sum() == 2
    faithful = P.PuzzleConfig(normalize=False, min_substitute=2, max_substitute=1, occluder="faithful")
    tiles, _, k = P.make_puzzle(a, perms, np.random.default_rng(0), faithful, occluder_img=b)
    assert k == 2 and tiles.max() == 0  # replacing tiles come from the same image
    with pytest.raises(ValueError, match="occluder_img"):
        P.make_puzzle(a, perms, np.random.default_rng(0), cfg)


def test_seeded_reproducibility():
    img = (np.random.default_rng(5).random((255, 255, 3)) * 255).astype(np.uint8)
    perms = np.array([np.random.default_rng(i).permutation(9) for i in range(50)])
    t1 = P.make_puzzle(img, perms, np.random.default_rng(9), occluder_img=img[::-1].copy())
    t2 = P.make_puzzle(img, perms, np.random.default_rng(9), occluder_img=img[::-1].copy())
    assert np.array_equal(t1[0], t2[0]) and t1[1:] == t2[1:]


def test_stored_image_is_centre_crop_of_short_side_256():
    import cv2
    img = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    out = P.stored_image(img)
    ref = cv2.resize(img, (341, 256), interpolation=cv2.INTER_LINEAR)[0:255, 43:298]
    assert out.shape == (255, 255, 3) and np.array_equal(out, ref)
