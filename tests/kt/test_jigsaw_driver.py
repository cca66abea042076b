"""The authors' Jigsaw nets train as released through ``caffekt train`` (the fork's LMDB feeder), and
every training path is the one driver: labels.bin, 9-tower snapshots loaded by tower, DDP."""
from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from caffe_compat import cli
from caffe_compat.binary import encode_datum
from caffe_compat.data import jps
from caffe_compat.data.loader import sample_rng
from caffe_compat.data.sources import write_lmdb_records
from caffe_compat.errors import CaffeFormatError
from caffe_compat.io import read_caffemodel, read_net, read_solverstate
from caffe_compat.logs import read_log
from caffe_compat.net import load_net
from caffe_compat.prototxt import write_prototxt
from caffe_compat.train import FeedContext, make_feeder

N_IMAGES = 6


def _stored(n=N_IMAGES, seed=0):
    """Smooth random 255x255 BGR images (blurred noise, so tiles carry some structure)."""
    import cv2
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
        out.append(cv2.resize(small, (255, 255), interpolation=cv2.INTER_LINEAR))
    return out


def _write_lmdb(path, images, labels=None):
    recs = [(f"{i:08d}_img{i}.jpg", encode_datum(np.ascontiguousarray(img.transpose(2, 0, 1)),
                                                 int(labels[i]) if labels is not None else 0))
            for i, img in enumerate(images)]
    write_lmdb_records(str(path), recs)


def _eccv_param(jpspp):
    """An ECCV-style variant of the Jigsaw++ fixture: no occluder layers, mean_value, jitter 21, 100 perms."""
    p = read_net(jpspp)
    keep = []
    for lp in p.layer:
        if lp.name == "data_r" or lp.type in ("MergeData", "Silence") or \
                (lp.type == "Slice" and lp.bottom[0] == "data_r"):
            continue
        if lp.type == "Slice":
            for i, t in enumerate(lp.top):
                lp.top[i] = t.rstrip("_")
        if lp.name == "data_0":
            tp = lp.transform_param
            tp.hash_file, tp.jitter_size = "./permutations_100_max.bin", 21
            tp.mean_value.extend([104, 117, 123])
        keep.append(lp)
    del p.layer[:]
    p.layer.extend(keep)
    return p


def _authors_setup(tmp, fixtures_dir, variant, batch=2, iters=3):
    jig = os.path.join(fixtures_dir, "jigsaw")
    src = os.path.join(jig, "train_val_cfn_jps++.prototxt")
    if not os.path.exists(src):
        pytest.skip("authors' jigsaw prototxt not in fixtures")
    for f in ("permutations_701.bin", "permutations_100_max.bin"):
        shutil.copy(os.path.join(jig, f), tmp / f)
    param = read_net(src) if variant == "jps++" else _eccv_param(src)
    for lp in param.layer:
        if lp.type == "Data":
            lp.data_param.batch_size = batch
    net = tmp / f"train_val_{variant}.prototxt"
    write_prototxt(param, str(net))
    os.makedirs(tmp / "jps_dataset")
    _write_lmdb(tmp / "jps_dataset" / "train", _stored())
    solver = tmp / "solver.prototxt"
    solver.write_text(f'net: "{net.name}"\nbase_lr: 0.001\nlr_policy: "step"\ngamma: 0.1\nstepsize: 100000\n'
                      f'momentum: 0.9\nweight_decay: 0.0005\nmax_iter: {iters}\nsnapshot: {iters}\n'
                      f'snapshot_prefix: "caffenet_train"\nrandom_seed: 5\ndisplay: 1\n')
    return solver


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["jps++", "eccv"])
def test_authors_prototxt_trains_unchanged_from_its_lmdb(tmp_path, monkeypatch, fixtures_dir, variant):
    solver = _authors_setup(tmp_path, fixtures_dir, variant, batch=4)
    monkeypatch.chdir(tmp_path)   # source and hash_file are relative to the working directory, as in Caffe
    assert cli.main(["train", solver.name, "--quiet"]) == 0
    log = read_log(str(tmp_path / "caffenet_train_log.csv"))
    assert log["iter"].tolist() == [0, 1, 2]
    # Gaussian fillers: logits of std ~1, so the first loss (mean of 4) is near ln(fc8 outputs) = ln(1000)
    assert abs(log["loss"][0] - math.log(1000)) < 1.5, log["loss"]
    assert np.all(np.isfinite(log["loss"]))
    with read_caffemodel(str(tmp_path / "caffenet_train_iter_3.caffemodel")) as m:
        names = [lb.name for lb in m.layers if lb.blobs]
    assert "conv1_s1" in names and "conv1_s9" in names and "fc8" in names


def test_lmdb_puzzles_equal_stored_image_puzzles_for_the_same_draws(tmp_path, fixtures_dir):
    from caffekt.kt import jigsaw as J
    from caffekt.kt.puzzle import PuzzleConfig
    perms = os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin")
    if not os.path.exists(perms):
        pytest.skip("permutations not in fixtures")
    imgs = _stored()
    _write_lmdb(tmp_path / "db", imgs, labels=[9] * len(imgs))
    lp = [x for x in read_net(os.path.join(fixtures_dir, "jigsaw", "train_val_cfn_jps++.prototxt")).layer
          if x.name == "data_0"][0]
    lp.data_param.source, lp.transform_param.hash_file = str(tmp_path / "db"), perms
    lp.data_param.batch_size = 4
    seed = 13
    feed = make_feeder(lp, FeedContext("TRAIN", seed, where="layer 'data_0'"))
    assert feed.shapes() == {"data_0": (4, 27, 64, 64), "label": (4,)}
    src = J.PuzzleSource(imgs, perms, PuzzleConfig(normalize=False), seed=0)
    for b in range(2):   # the second batch wraps into epoch 1 (6 records)
        batch = feed()
        for j in range(4):
            p = b * 4 + j
            e, i = divmod(p, len(imgs))
            want, label = src._cut_puzzle.transform_labelled(imgs[i], layout="HWC", rng=sample_rng(seed, e, i))
            assert np.array_equal(batch["data_0"][j].numpy(), want)
            assert int(batch["label"][j]) == label   # the drawn permutation, not the Datum's 9


@pytest.mark.slow
def test_labels_bin_trains_caffenet_on_pseudo_labels(tmp_path, monkeypatch, fixtures_dir, caplog):
    src = os.path.join(fixtures_dir, "bvlc", "bvlc_reference_caffenet", "train_val.prototxt")
    if not os.path.exists(src):
        pytest.skip("CaffeNet train_val not in fixtures")
    import cv2
    imgs = [cv2.resize(im, (256, 256)) for im in _stored(5, seed=1)]
    _write_lmdb(tmp_path / "train_lmdb", imgs, labels=[0] * 5)
    param = read_net(src)
    for lp in param.layer:
        if lp.type == "Data":
            lp.data_param.source, lp.data_param.batch_size = "train_lmdb", 2
            lp.transform_param.ClearField("mean_file")
            lp.transform_param.mean_value.extend([104, 117, 123])
    write_prototxt(param, str(tmp_path / "train_val.prototxt"))
    (tmp_path / "solver.prototxt").write_text(
        'net: "train_val.prototxt"\nbase_lr: 0.001\nlr_policy: "fixed"\nmomentum: 0.9\nmax_iter: 2\n'
        'snapshot: 0\nsnapshot_prefix: "cc"\nrandom_seed: 1\n')
    labels = [7, 3, 999, 0, 42]
    jps.write_labels_bin(str(tmp_path / "labels.bin"), labels)
    monkeypatch.chdir(tmp_path)
    # the feeder hands out labels.bin's labels in LMDB order, wrapping at the epoch
    lp = [x for x in param.layer if x.type == "Data" and x.include[0].phase == 0][0]
    feed = make_feeder(lp, FeedContext("TRAIN", 1, labels_bin="labels.bin"))
    got = [int(v) for _ in range(3) for v in feed()["label"]]
    assert got == [7, 3, 999, 0, 42, 7]
    with caplog.at_level(logging.INFO, logger="caffe_compat.train"):
        assert cli.main(["train", "solver.prototxt", "--labels-bin", "labels.bin", "--quiet"]) == 0
    assert "labels from labels.bin replace the Datum labels (5 labels for 5 records" in caplog.text
    # labels outside fc8's 1000 outputs, or fewer labels than records: refused before training
    jps.write_labels_bin("big.bin", [1, 2, 1000, 3, 4])
    assert cli.main(["train", "solver.prototxt", "--labels-bin", "big.bin", "--quiet"]) == 2
    jps.write_labels_bin("short.bin", [1, 2])
    assert cli.main(["train", "solver.prototxt", "--labels-bin", "short.bin", "--quiet"]) == 2


def test_labels_bin_errors_name_the_file(tmp_path):
    jps.write_labels_bin(str(tmp_path / "ok.bin"), [1])
    with pytest.raises(CaffeFormatError, match="labels file not found"):
        from caffe_compat.train import train
        (tmp_path / "s.prototxt").write_text('net: "x.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\nmax_iter: 1\n')
        train(str(tmp_path / "s.prototxt"), labels_bin=str(tmp_path / "missing.bin"), progress=False)


@pytest.mark.slow
def test_nine_tower_snapshot_loads_by_tower_into_the_deploys(tmp_path, monkeypatch, fixtures_dir):
    from caffe_compat.inspect import describe, format_table
    from caffekt.prototxt import path as shipped
    solver = _authors_setup(tmp_path, fixtures_dir, "jps++", iters=2)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", solver.name, "--quiet"]) == 0
    snap = str(tmp_path / "caffenet_train_iter_2.caffemodel")
    assert "9-tower pretext snapshot" in format_table(describe(snap))
    deploy = load_net(shipped("jigsaw_cfn_tower_s2_deploy.prototxt"), weights=snap, tower=1).eval()
    train_net = load_net("train_val_jps++.prototxt", weights=snap, phase="TRAIN",
                         input_shapes={"data_0": (2, 27, 64, 64), "label": (2,), "data_r": (2, 27, 64, 64)}).eval()
    train_net.layer("merge")._rand = lambda: 0     # k = 0: no tile replaced
    x = torch.from_numpy(np.random.default_rng(0).random((2, 27, 64, 64)).astype(np.float32) * 255)
    with torch.no_grad():
        t = train_net.forward_all(data_0=x, data_r=x, label=torch.zeros(2))
        d = deploy.forward_all(data=x[:, :3].contiguous())
    for a, b in (("conv1", "conv1_s1"), ("conv5", "conv5_s1"), ("fc6", "fc6_s1")):
        assert torch.equal(d[a], t[b]), a
    from caffe_compat.weights import copy_trained_layers
    rep = copy_trained_layers(load_net(shipped("alexnet_s4_conv_deploy.prototxt")), snap, tower=3)
    assert ("conv1_s3", "conv1") in rep.renamed and "conv1_s1" in rep.ignored and "conv5" in rep.copied
    assert "tower layers renamed: conv1_s3 -> conv1" in str(rep)
    with pytest.raises(Exception, match="shape mismatch.*fc6"):   # fc6's input depends on conv1's stride
        load_net(shipped("alexnet_s4_deploy.prototxt"), weights=snap, tower=1)


@pytest.mark.slow
def test_jigsaw_driver_two_gloo_ranks_equal_one_process_with_double_batch(tmp_path):
    import torch.distributed as dist
    if not (dist.is_available() and dist.is_gloo_available()):
        pytest.skip("torch.distributed with gloo is not available")
    _write_lmdb(tmp_path / "db", _stored(8))
    perms = tmp_path / "perms.npy"
    np.save(perms, np.array([np.roll(np.arange(9), k) for k in range(9)] + [np.arange(9)[::-1]]))
    common = ["kt", "jigsaw", "train", "--stored", str(tmp_path / "db"), "--perms", str(perms), "--width", "0.125",
              "--fc6", "16", "--fc7", "16", "--dropout", "0", "--max-iter", "3", "--snapshot", "3",
              "--seed", "2", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "caffe_compat.cli", *common, "--batch-size", "2", "-o", str(tmp_path / "ddp")],
                       capture_output=True, text=True, timeout=600, env=env, cwd=str(tmp_path))
    assert p.returncode == 0, p.stderr[-3000:]
    assert cli.main([*common, "--batch-size", "4", "-o", str(tmp_path / "one")]) == 0

    def blobs(d):
        with read_caffemodel(str(d / "jigsaw_iter_3.caffemodel")) as m:
            return {lb.name: [np.array(b) for b in lb.blobs] for lb in m.layers if lb.blobs}
    got, want = blobs(tmp_path / "ddp"), blobs(tmp_path / "one")
    assert sorted(got) == sorted(want)
    for name in got:
        for g, w in zip(got[name], want[name]):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=name)
    hg = read_solverstate(str(tmp_path / "ddp" / "jigsaw_iter_3.solverstate")).history
    hw = read_solverstate(str(tmp_path / "one" / "jigsaw_iter_3.solverstate")).history
    assert len(hg) == len(hw) > 0
    for g, w in zip(hg, hw):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
