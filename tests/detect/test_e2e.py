"""Proof without VOC: fine-tune a CaffeNet-shaped Fast R-CNN on a small VOC-format scene set, test, evaluate.

The scene set (scenes.py): scikit-image photos with Fashion-MNIST trousers, sneakers and bags
pasted at known boxes; proposals are jittered ground-truth boxes plus random boxes (.npy), as a
selective-search stand-in.  The nets are the fork's CaffeNet train/test prototxts with narrower
layers (nets.py); the start model is a random CaffeNet-shaped caffemodel standing in for an
exported one, so the solver is Adam (a from-scratch run this short needs it; the fork's SGD
schedule is for ImageNet-pretrained starts).  Everything goes through ``caffekt detect``
train/test/eval and caffekt's one training driver.

Measured (2 CPU cores shared with other jobs, load ~9; 300 iterations, 279 s in all): scene-set
VOC07 mAP 0.286 (trouser/sneaker/bag APs ~0.28-0.29), against 0.042 for the same proposals with
random scores and 0.001 for random boxes.
"""
from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

from _scene_set import CLASSES
from scenes import have_fashion, make_scene_set

ITERS = 300


def _random_results(records, out, rng, boxes_of=None, per_image=100):
    """Results files: per class and image, boxes (given or uniform) with uniform scores."""
    os.makedirs(out, exist_ok=True)
    for c in CLASSES:
        with open(os.path.join(out, f"comp4_det_test_{c}.txt"), "w") as f:
            for k, r in enumerate(records):
                if boxes_of is not None:
                    b = boxes_of[k]
                else:
                    x = np.sort(rng.uniform(0, r.width - 1, (per_image, 2)), 1)
                    y = np.sort(rng.uniform(0, r.height - 1, (per_image, 2)), 1)
                    b = np.stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]], 1)
                for bb, s in zip(b, rng.random(len(b))):
                    f.write(f"{r.index} {s:.3f} {bb[0] + 1:.1f} {bb[1] + 1:.1f} {bb[2] + 1:.1f} {bb[3] + 1:.1f}\n")


@pytest.mark.slow
def test_scene_set_fine_tune_beats_random_boxes(tmp_path, fixtures_dir, capsys):
    if not have_fashion():
        pytest.skip("Fashion-MNIST not found")
    import torch

    from caffe_compat.cli import main
    from caffekt.kt.detect import voc_eval
    from caffekt.kt.detect.proposals import from_file
    from caffekt.kt.detect.voc import VOCDataset
    from nets import narrow, random_weights, solver
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = str(tmp_path / "VOC")
    make_scene_set(root, n_train=40, n_test=24, seed=0)
    fork = os.path.join(fixtures_dir, "fast-rcnn", "CaffeNet")
    models = tmp_path / "models"
    models.mkdir()
    narrow(os.path.join(fork, "train.prototxt"), str(models / "train.prototxt"), len(CLASSES) + 1)
    narrow(os.path.join(fork, "test.prototxt"), str(models / "test.prototxt"), len(CLASSES) + 1)
    solver(str(models / "solver.prototxt"), "train.prototxt", base_lr=0.002, stepsize=100000, max_iter=ITERS,
           type="Adam")
    random_weights(str(models / "train.prototxt"), str(tmp_path / "init.caffemodel"), len(CLASSES) + 1)
    common = ["--dataset", root, "--classes", ",".join(CLASSES), "--proposals", os.path.join(root, "proposals"),
              "--quiet"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["detect", "train", "--solver", str(models / "solver.prototxt"), "--weights",
                     str(tmp_path / "init.caffemodel"), "--split", "train", "-o", str(tmp_path / "out"),
                     "--set", "TRAIN.SCALES=[160]", "--set", "TRAIN.MAX_SIZE=320", "--set", "TRAIN.BATCH_SIZE=64",
                     *common]) == 0
        model = tmp_path / "out" / f"caffenet_fast_rcnn_iter_{ITERS}.caffemodel"
        assert model.is_file()
        assert main(["detect", "test", "--net", str(models / "test.prototxt"), "--weights", str(model),
                     "--split", "test", "-o", str(tmp_path / "det"), "--set", "TEST.SCALES=[160]",
                     "--set", "TEST.MAX_SIZE=320", *common]) == 0
        assert main(["detect", "eval", "--dataset", root, "--split", "test", "--classes", ",".join(CLASSES),
                     "--detections", str(tmp_path / "det"), "-o", str(tmp_path / "map.json"), "--png-output",
                     str(tmp_path / "ap.png"), "--quiet"]) == 0
    print(capsys.readouterr().out)
    res = json.loads((tmp_path / "map.json").read_text())

    ds = VOCDataset(root, "test", CLASSES)
    recs = ds.records()
    rng = np.random.default_rng(0)
    _random_results(recs, str(tmp_path / "rand"), rng)
    base_boxes = voc_eval.evaluate(recs, ds.classes, str(tmp_path / "rand"), "test")["mAP"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        props = from_file(os.path.join(root, "proposals"), recs)
    _random_results(recs, str(tmp_path / "randprop"), rng, boxes_of=props)
    base_props = voc_eval.evaluate(recs, ds.classes, str(tmp_path / "randprop"), "test")["mAP"]
    print(f"scene-set mAP {res['mAP']:.3f}; proposals with random scores {base_props:.3f}; "
          f"random boxes {base_boxes:.3f}")
    assert base_boxes < 0.05 and base_props < 0.1
    assert res["mAP"] > 0.2
    assert res["mAP"] > 4 * base_props
    assert all(v["ap"] > 0.1 for v in res["per_class"].values())
