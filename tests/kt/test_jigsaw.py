"""Jigsaw++ training data: one puzzle source, two paths (our dataset, the authors' prototxt) that agree."""
import os

import numpy as np
import pytest
import torch

from caffe_compat.errors import CaffeFormatError, UnsupportedParameter
from caffe_compat.layers.merge_data import MergeData
from caffe_compat.net import load_net
from caffe_compat.proto import caffe_pb2
from caffekt.kt import jigsaw as J
from caffekt.kt.jigsaw.feed import _authors_shapes
from caffekt.kt.jigsaw.merge import _Recorder
from caffekt.kt import puzzle as P
from caffekt.kt.images import ArrayImages


def _images(n=5, seed=0):
    return ArrayImages((np.random.default_rng(seed).random((n, 255, 255, 3)) * 255).astype(np.uint8))


def _coord_images(n=3):
    """Each pixel encodes (image, channel, y, x), exact in float32 (below 2**24)."""
    y, x = np.mgrid[0:255, 0:255]
    out = np.empty((n, 255, 255, 3), np.float64)
    for k in range(n):
        for c in range(3):
            out[k, ..., c] = k * 2**18 + c * 2**16 + y * 256 + x
    return out


PERMS10 = np.array([np.roll(np.arange(9), k) for k in range(9)] + [np.arange(9)[::-1]])


# ---------------------------------------------------------------- MergeData port vs our layer

def _merge_layer(tiles=9, lo=0, hi=3):
    lp = caffe_pb2.LayerParameter(name="merge", type="MergeData")
    lp.bottom.extend([f"b{i}" for i in range(2 * tiles)])
    lp.top.extend([f"t{i}" for i in range(tiles)] + ["sub_num"])
    lp.merge_data_param.min_substitute, lp.merge_data_param.max_substitute = lo, hi
    return MergeData(lp, [(4, 3, 2, 2)] * (2 * tiles))


@pytest.mark.parametrize("lo,hi", [(0, 3), (1, 4), (0, 1)])
def test_merge_plan_is_the_layer_loop_draw_for_draw(lo, hi):
    layer = _merge_layer(9, lo, hi)
    rng = np.random.default_rng(lo * 10 + hi)
    for _ in range(50):
        draws = [int(v) for v in rng.integers(0, J.RAND_MAX, size=200)]
        ours = [J.merge_plan(J.DrawStream(draws[a:]), 9, lo, hi) for a in (0,)]
        stream = J.DrawStream(draws)
        plan = J.merge_plan(stream, 9, lo, hi)
        used = stream.pos
        layer._rand = J.DrawStream(draws)
        sources, ks = layer.plan(1)
        assert (sources[0], ks[0]) == plan == ours[0]
        assert layer._rand.pos == used  # the layer consumed exactly the same values
        assert lo <= plan[1] <= lo + hi - 1
        subs = [s - 9 for s in plan[0] if s >= 9]
        assert len(subs) == plan[1] and len(set(subs)) == len(subs)


def test_merge_plan_statistics():
    rng = np.random.default_rng(3)
    rec = _Recorder(rng)
    ks = np.array([J.merge_plan(rec, 9, 0, 3)[1] for _ in range(6000)])
    freq = np.bincount(ks, minlength=3) / len(ks)
    assert np.allclose(freq, 1 / 3, atol=0.025)
    with pytest.raises(RuntimeError, match="more than the 1 rand"):
        J.merge_plan(J.DrawStream([1]), 9, 0, 3)  # k = 1 needs more draws


# ---------------------------------------------------------------- the source

def test_parts_follow_the_label_and_the_occluder_is_another_image():
    imgs = _coord_images(4)
    src = J.PuzzleSource(imgs, PERMS10, P.PuzzleConfig(normalize=False, colour=False), seed=7)
    seen_k = set()
    for i in range(4):
        for e in range(15):
            p = src.parts(i, e)
            assert p.occluder_index != i
            # tile j of the puzzle comes from cell perms[label][j] of image i (raw colour)
            for j in range(9):
                v = int(p.tiles[j, 0, 0, 0])
                img, yx = divmod(v, 2**18)
                cy, cx = divmod(PERMS10[p.label][j], 3)
                y, x = divmod(yx % 2**16, 256)
                assert img == i and cy * 85 <= y < cy * 85 + 21 and cx * 85 <= x < cx * 85 + 21
                assert int(p.other[j, 0, 0, 0]) // 2**18 == p.occluder_index
            merged = src.merged(p)
            for pos, s in enumerate(p.sources):
                want = p.tiles[s] if s < 9 else p.other[s - 9]
                assert np.array_equal(merged[pos], want)
            seen_k.add(p.k)
    assert seen_k == {0, 1, 2}


def test_faithful_and_none_occluders():
    imgs = _coord_images(2)
    f = J.PuzzleSource(imgs, PERMS10, P.PuzzleConfig(normalize=False, occluder="faithful"), 0)
    assert all(f.parts(i, e).occluder_index == i for i in range(2) for e in range(5))
    n = J.PuzzleSource(imgs, PERMS10, P.PuzzleConfig(normalize=False, occluder="none"), 0)
    assert all(n.parts(i, e).k == 0 and n.parts(i, e).draws == [0] for i in range(2) for e in range(5))
    with pytest.raises(UnsupportedParameter, match="at least 2 images"):
        J.PuzzleSource(imgs[:1], PERMS10, P.PuzzleConfig(), 0)
    with pytest.raises(UnsupportedParameter, match="occluder must be one of"):
        J.PuzzleSource(imgs, PERMS10, P.PuzzleConfig(occluder="other"), 0)


def test_dataset_items_are_normalised_tiles_fixed_by_seed_epoch_index():
    ds = J.PuzzleDataset(_images(), PERMS10, P.PuzzleConfig(), seed=3)
    x, lab = ds[(2, 1)]
    assert x.dtype == torch.float32 and tuple(x.shape) == (9, 3, 64, 64) and 0 <= lab < 10
    flat = x.reshape(9, -1).double()
    assert torch.allclose(flat.mean(1), torch.zeros(9, dtype=torch.float64), atol=1e-3)
    assert torch.allclose(flat.std(1, unbiased=False), torch.full((9,), 50.0, dtype=torch.float64), rtol=1e-4)
    y, lab2 = J.PuzzleDataset(_images(), PERMS10, P.PuzzleConfig(), seed=3)[(2, 1)]
    assert torch.equal(x, y) and lab == lab2
    z, _ = ds[(3, 1)]
    assert not torch.equal(x, z)


def test_batches_do_not_depend_on_worker_count():
    ds = J.PuzzleDataset(_images(6), PERMS10, P.PuzzleConfig(), seed=1)
    a = J.PuzzleLoader(ds, 4, seed=1, workers=0)
    b = J.PuzzleLoader(ds, 4, seed=1, workers=2)
    for _ in range(3):  # 12 samples: wraps past the 6-image epoch
        (xa, la), (xb, lb) = a.next(), b.next()
        assert torch.equal(xa, xb) and torch.equal(la, lb)
    # resuming from a saved position gives the next batch of the uninterrupted stream
    c = J.PuzzleLoader(ds, 4, seed=1)
    c.load_state_dict(a.state_dict())
    assert torch.equal(c.next()[0], a.next()[0])
    with pytest.raises(UnsupportedParameter, match="batch_size 4, this run has 5"):
        J.PuzzleLoader(ds, 5, seed=1).load_state_dict(a.state_dict())


def test_stream_sampler_covers_each_epoch_once_and_shards_ranks():
    s = J.StreamSampler(10, 5, seed=2)
    keys = s.batch_keys(0) + s.batch_keys(1)
    assert {e for e, _ in keys} == {0} and sorted(i for _, i in keys) == list(range(10))
    r0, r1 = J.StreamSampler(10, 5, 2, rank=0, world=2), J.StreamSampler(10, 5, 2, rank=1, world=2)
    assert r0.batch_keys(0) + r1.batch_keys(0) == keys


# ---------------------------------------------------------------- the two paths agree

@pytest.fixture(scope="module")
def authors(fixtures_dir):
    proto = os.path.join(fixtures_dir, "jigsaw", "train_val_cfn_jps++.prototxt")
    perms = os.path.join(fixtures_dir, "jigsaw", "permutations_701.bin")
    if not os.path.exists(proto):
        pytest.skip("authors' jigsaw prototxt not in fixtures")
    return proto, perms


@pytest.mark.parametrize("occluder", ["another", "faithful"])
def test_authors_prototxt_and_dataset_put_the_same_tensors_into_the_towers(authors, tmp_path, occluder):
    proto, perms = authors
    net, _ = J.build_train_net(n_perms=701, net_prototxt=proto, arch="alexnet", batch_size=4, width=1,
                               fc6=1024, fc7=4096, out=str(tmp_path))
    spec = J.feed_spec(net)
    assert (spec.style, spec.data, spec.other, spec.merge_layer, spec.n_classes) == \
        ("authors", "data_0", "data_r", "merge", 1000)
    assert (spec.min_substitute, spec.max_substitute) == (0, 3)
    imgs = _images(5)
    src = J.PuzzleSource(imgs, perms, P.PuzzleConfig(occluder=occluder), seed=11)
    feed = J.make_feed(net, src, 4, seed=11)
    ks = []
    for b in range(3):
        keys = J.StreamSampler(5, 4, 11).batch_keys(b)
        with torch.no_grad():
            out = net.forward_all(**feed())
        towers = torch.stack([out[f"data_{t}"] for t in range(1, 10)], 1).numpy()
        ref = np.stack([src.puzzle(i, e)[0] for e, i in keys])
        # equal to 1e-5 in MVN units (the x50 Power scales the float error too)
        assert np.abs(towers - ref).max() / P.TILE_SCALE < 1e-5
        assert out["label"].tolist() == [src.parts(i, e).label for e, i in keys]
        ks += [src.parts(i, e).k for e, i in keys]
    assert max(ks) > 0  # substitutions did happen in the compared batches


def test_authors_net_refuses_settings_the_source_does_not_implement(authors, tmp_path):
    proto, perms = authors
    text = open(proto).read().replace("#gap_size: 16", "gap_size: 16", 1)
    bad = tmp_path / "gap.prototxt"
    bad.write_text(text)
    net = load_net(str(bad), phase="TRAIN", input_shapes=_authors_shapes(str(bad), 2, "TRAIN"))
    with pytest.raises(UnsupportedParameter, match=r"'data_0': transform_param.gap_size is 16.*gap_size: 0"):
        J.feed_spec(net)


def test_a_set_larger_than_fc8_is_refused_before_training(tmp_path):
    net = load_net(J.cfn_net_param(n_perms=5, width=0.125, fc6=8, fc7=8, batch_size=2), phase="TRAIN")
    src = J.PuzzleSource(_images(3), PERMS10, P.PuzzleConfig(), 0)
    with pytest.raises(UnsupportedParameter, match="10 permutations but the classifier 'fc8_jigsaw' has only 5"):
        J.make_feed(net, src, 2)
    bad = tmp_path / "bad.bin"
    np.array([3, 9] + list(range(1, 10)) * 2, "<i4").tofile(bad)
    with pytest.raises(CaffeFormatError, match="header says 3 permutations"):
        J.load_perms(str(bad))
    with pytest.raises(CaffeFormatError, match="repeated"):
        J.load_perms(np.array([np.arange(9)] * 2))


# ---------------------------------------------------------------- the generated net

def test_generated_alexnet_is_the_shipped_9tower_net():
    from caffekt.prototxt import path
    shipped = load_net(path("jigsaw_cfn_pretext_9tower"), phase="TRAIN", input_shapes={"data": (2, 27, 64, 64),
                                                                                        "label": (2,)})
    ours = load_net(J.cfn_net_param(n_perms=701, batch_size=2), phase="TRAIN")
    assert ours.layer_names == shipped.layer_names and ours.layer_types == shipped.layer_types
    assert dict(ours.blob_shapes) == dict(shipped.blob_shapes)
    assert [(i["name"], i["lr_mult"], i["decay_mult"]) for i in ours.param_info] == \
        [(i["name"], i["lr_mult"], i["decay_mult"]) for i in shipped.param_info]
    assert [tuple(p.shape) for p in ours.learnable_params()] == [tuple(p.shape) for p in shipped.learnable_params()]
    assert ours.blob_shapes["pool5"] == (2, 256, 3, 3) and len(ours.learnable_params()) == 16


def test_generated_vgg16_tower_shapes():
    net = load_net(J.cfn_net_param(n_perms=30, arch="vgg16", batch_size=1, width=0.125, fc6=64, fc7=64),
                   phase="TRAIN")
    assert net.blob_shapes["pool5"] == (1, 64, 2, 2) and net.blob_shapes["fc8_jigsaw"] == (1, 30)
    assert net.blob_shapes["conv5_3_t9"] == (1, 64, 4, 4)
    # the 9 towers share one set of weights: 13 convs + fc6 (towers) + fc7 + fc8, w and b each
    assert len(net.learnable_params()) == 2 * (13 + 1 + 2)


def test_train_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    kw = dict(perms=PERMS10, width=0.125, fc6=16, fc7=16, batch_size=2, progress=False, seed=4, snapshot=2)
    imgs = _images(4)
    full = J.train(imgs, out=str(tmp_path / "a"), max_iter=4, **kw)
    J.train(imgs, out=str(tmp_path / "b"), max_iter=2, **kw)
    state = str(tmp_path / "b" / "jigsaw_iter_2.solverstate")
    resumed = J.train(imgs, out=str(tmp_path / "b"), max_iter=4, resume=state, **kw)
    assert resumed.iter == 4
    for a, b in zip(full.net.learnable_params(), resumed.net.learnable_params()):
        assert torch.equal(a, b)
    rows = open(tmp_path / "a" / "jigsaw_log.csv").read().splitlines()
    assert rows[0] == "iter,loss,smoothed_loss,lr,seconds" and len(rows) == 5
