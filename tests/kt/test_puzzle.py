"""Stored images and per-tile normalisation (the tile cutter is tested in tests/data/test_jps.py)."""
import numpy as np

from caffekt.kt import puzzle as P


def test_mvn_times_50_statistics():
    rng = np.random.default_rng(1)
    tiles = (rng.random((9, 3, 64, 64)) * 255).astype(np.float32)
    out = P.mvn_tiles(tiles)
    flat = out.reshape(9, -1).astype(np.float64)
    assert np.allclose(flat.mean(1), 0, atol=1e-3) and np.allclose(flat.std(1), 50, rtol=1e-5)
    # eps is added after the square root: a constant tile maps to exactly 0
    assert np.all(P.mvn_tiles(np.full((1, 3, 64, 64), 7, np.float32)) == 0)


def test_stored_image_is_centre_crop_of_short_side_256():
    import cv2
    img = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    out = P.stored_image(img)
    ref = cv2.resize(img, (341, 256), interpolation=cv2.INTER_LINEAR)[0:255, 43:298]
    assert out.shape == (255, 255, 3) and np.array_equal(out, ref)
