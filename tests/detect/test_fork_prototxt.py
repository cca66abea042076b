"""The fork's CaffeNet train.prototxt, unchanged, trains through caffekt's driver; snapshots un-normalise bbox_pred."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from _scene_set import CLASSES, scene_set  # noqa: F401  (fixture)


def test_fork_train_prototxt_runs_unchanged(scene_set, fixtures_dir, tmp_path):
    from caffe_compat.io import read_caffemodel
    from caffekt.kt.detect.train import train_detector
    train_net = os.path.join(fixtures_dir, "fast-rcnn", "CaffeNet", "train.prototxt")
    solver = tmp_path / "solver.prototxt"
    # the fork's solver.prototxt with train_net made absolute and max_iter 2
    src = open(os.path.join(fixtures_dir, "fast-rcnn", "CaffeNet", "solver.prototxt")).read()
    solver.write_text(src.replace('"models/CaffeNet/train.prototxt"', f'"{train_net}"') + "\nmax_iter: 2\n")
    # the net has 21 outputs: the scene classes and 17 the scene set never shows
    classes = list(CLASSES) + [f"unused{k}" for k in range(17)]
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        res = train_detector(str(solver), scene_set, "train", classes=classes,
                             cfg_overrides={"TRAIN": {"SCALES": [120], "MAX_SIZE": 200}},
                             proposals=os.path.join(scene_set, "proposals"), out=str(tmp_path / "out"),
                             progress=False)
    assert any("no object of class(es) unused0" in str(x.message) for x in w)
    assert res.iter == 2
    assert res.models == [str(tmp_path / "out" / "caffenet_fast_rcnn_iter_2.caffemodel")]
    # the driver's own snapshot (snapshot_after_train) holds the normalised weights of the same iteration
    plain = read_caffemodel(res.models[0])
    normed = read_caffemodel(str(tmp_path / "out" / "solver_state" / "caffenet_fast_rcnn_iter_2.caffemodel"))
    w_u, b_u = (np.asarray(a) for a in plain.blobs["bbox_pred"])
    w_n, b_n = (np.asarray(a) for a in normed.blobs["bbox_pred"])
    assert w_u.shape == (84, 4096)
    np.testing.assert_allclose(w_u, (w_n.astype(np.float64) * res.stds[:, None]).astype(np.float32), rtol=1e-6)
    np.testing.assert_allclose(b_u, (b_n.astype(np.float64) * res.stds + res.means).astype(np.float32),
                               rtol=1e-6, atol=1e-7)
    assert np.abs(res.stds[4:16]).min() > 0      # the three scene classes have targets
    for name in ("conv1", "fc7", "cls_score"):
        for a, b in zip(plain.blobs[name], normed.blobs[name]):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_python_layers_never_run_and_unclaimed_ones_are_refused(fixtures_dir, tmp_path):
    """Without the detect feeder registered the Python data layer is an error, not imported code."""
    from caffe_compat.errors import CaffeCompatError
    from caffe_compat.train import train
    train_net = os.path.join(fixtures_dir, "fast-rcnn", "CaffeNet", "train.prototxt")
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'train_net: "{train_net}"\nbase_lr: 0.001\nlr_policy: "fixed"\nmax_iter: 1\nsnapshot_after_train: false\n')
    with pytest.raises(CaffeCompatError, match="Python"):
        train(str(solver), progress=False)


def test_paper_config_rewrites_the_fork_solver(fixtures_dir, tmp_path, monkeypatch):
    from caffe_compat.io import read_solver
    from caffekt.kt.detect.config import load
    from caffekt.kt.detect.train import derived_solver
    import shutil
    fork = os.path.join(fixtures_dir, "fast-rcnn")
    # the fork's layout: <root>/models/CaffeNet/solver.prototxt naming "models/CaffeNet/train.prototxt"
    models = tmp_path / "fast-rcnn" / "models" / "CaffeNet"
    shutil.copytree(os.path.join(fork, "CaffeNet"), models)
    monkeypatch.chdir(tmp_path)
    os.makedirs(tmp_path / "out")
    path = derived_solver("fast-rcnn/models/CaffeNet/solver.prototxt", load("voc07_paper")["SOLVER"],
                          str(tmp_path / "out"))
    p = read_solver(path)
    assert (p.base_lr, p.lr_policy, p.gamma, p.stepsize, p.max_iter) == (pytest.approx(0.001), "step",
                                                                         pytest.approx(0.1), 50000, 150000)
    assert p.snapshot == 0 and p.snapshot_prefix.endswith("caffenet_fast_rcnn")
    assert p.train_net == str(models / "train.prototxt")
    from caffe_compat.errors import UnsupportedParameter
    with pytest.raises(UnsupportedParameter, match="'stepsizes' is not a SolverParameter field"):
        derived_solver(str(models / "solver.prototxt"), {"stepsizes": 3}, str(tmp_path))
