"""A short CPU Jigsaw++ training run on real photos learns: held-out puzzle accuracy well above chance.

Photos, all shipped with scikit-image (no download): 12 of its CC0 photos
(each plus 8 corner crops, for variety) and the first 80 face photos of its
LFW subset (25x25 grey crops of Labeled Faces in the Wild, stored at 255x255
like any other image).  Held out: the other 20 LFW faces (people the net never
saw), 5 other scikit-image photos.

The task is the full Jigsaw++ puzzle of the fork: 3x3 cells of 85 pixels,
64-pixel tiles jittered 0..18 with per-channel shifts, grey / projected / raw
colour, 0-2 tiles replaced by tiles of *another* image (occluder "another"),
per-tile MVN x 50 inside the net.  10 permutations (the first 10 of the
authors' 701 set: chance 10%).  Net: the 9-tower CaffeNet at widths x0.125,
fc6 64, fc7 128, no dropout, msra fillers; Adam 3e-4 for 1000 iterations of
16 puzzles (the authors' gaussian fillers and SGD 0.01 stay at chance for
thousands of iterations in a net this narrow).

Why faces carry the held-out assertion: a dozen unrelated photos share no
layout, so after under two minutes of training the net has learnt *those*
photos (fresh puzzles of them: 42-47%) but held-out scikit-image photos only
reach about 2x chance, 19.5-21% (printed, not asserted).  Faces share a layout
the net can learn from 80 people and must apply to 20 new ones - what the
pretext task relies on.  Measured (2 shared cores, 1 torch thread), training
seed 1 / 2: held-out faces 94.0% / 91.5%, training photos 46.7% / 42.1%,
held-out photos 19.5% / 21.0%; the whole test 105 s CPU, bit-identical reruns.
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
TRAIN_FACES, HELD_FACES = range(0, 80), range(80, 100)  # lfw_subset: images 0..99 are faces
ITERS = 1000
CFG = PuzzleConfig(occluder="another", normalize=False)  # as ``train`` feeds it: the net's MVN/Power normalise


def _skdata_dir():
    skdata = pytest.importorskip("skimage.data")
    return os.path.dirname(skdata.__file__)


def _photos(names, crops):
    import cv2
    out = []
    for n in names:
        img = cv2.imread(os.path.join(_skdata_dir(), n), cv2.IMREAD_COLOR)
        if img is None:
            pytest.skip(f"scikit-image photo {n} not available offline")
        out.append(stored_image(img))
        if crops:
            h, w = img.shape[:2]
            for f in (0.6, 0.75):
                c = int(min(h, w) * f)
                for y, x in ((0, 0), (h - c, w - c), (0, w - c), (h - c, 0)):
                    out.append(stored_image(img[y:y + c, x:x + c]))
    return out


def _faces(indices):
    import cv2
    path = os.path.join(_skdata_dir(), "lfw_subset.npy")
    if not os.path.exists(path):
        pytest.skip("scikit-image's LFW subset not available offline")
    faces = np.load(path, allow_pickle=False)
    assert faces.shape == (200, 25, 25), faces.shape
    grey = np.clip(np.rint(faces * 255.0), 0, 255).astype(np.uint8)
    return [stored_image(cv2.cvtColor(grey[i], cv2.COLOR_GRAY2BGR)) for i in indices]


@pytest.mark.slow
def test_short_training_on_photos_beats_chance(tmp_path, fixtures_dir):
    import torch

    perms = J.load_perms(os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin"))[:10]
    train = ArrayImages(np.stack(_photos(TRAIN, crops=True) + _faces(TRAIN_FACES)))
    held_faces = ArrayImages(np.stack(_faces(HELD_FACES)))
    assert len(train) == 12 * 9 + 80
    solver = tmp_path / "adam.prototxt"
    solver.write_text(f'type: "Adam"\nbase_lr: 0.0003\nmomentum: 0.9\nmomentum2: 0.999\nlr_policy: "fixed"\n'
                      f'max_iter: {ITERS}\nsnapshot: 0\nsnapshot_prefix: "{tmp_path}/jigsaw"\n')
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same float reduction order on any host, so reruns are bit-identical
    try:
        res = J.train(train, perms=perms, out=str(tmp_path), solver=str(solver), width=0.125, fc6=64, fc7=128,
                      dropout=0.0, init="msra", batch_size=16, snapshot=0, progress=False, seed=1, cfg=CFG,
                      device="cpu")
        faces = J.evaluate(res.net, J.PuzzleSource(held_faces, perms, CFG, seed=999), puzzles=400)
        seen = J.evaluate(res.net, J.PuzzleSource(ArrayImages(np.stack(_photos(TRAIN, crops=False))), perms, CFG,
                                                  seed=555), puzzles=240)
        unseen = J.evaluate(res.net, J.PuzzleSource(ArrayImages(np.stack(_photos(HELD_OUT, crops=False))), perms,
                                                    CFG, seed=999), puzzles=200)
    finally:
        torch.set_num_threads(threads)
    print(f"after {ITERS} iterations ({res.seconds:.0f} s): held-out faces {faces['accuracy']:.3f}, fresh puzzles "
          f"of the training photos {seen['accuracy']:.3f}, held-out photos {unseen['accuracy']:.3f} "
          f"(chance {faces['chance']:.3f})")
    assert faces["chance"] == pytest.approx(0.1) and faces["puzzles"] == 400
    # measured 0.915-0.94: 5x chance leaves a wide margin for platform float differences
    assert faces["accuracy"] >= 5 * faces["chance"]
    # measured 0.42-0.47 on fresh jitter/colour/occluders/labels of the 12 whole photos
    assert seen["accuracy"] >= 3 * seen["chance"]
