"""The RoIDataLayer feeder against a NumPy port of the fork's Python (written in the fork's own steps).

The port follows lib/datasets/imdb.py (create_roidb_from_box_list, merge_roidbs,
append_flipped_images), lib/roi_data_layer/roidb.py (prepare_roidb,
add_bbox_regression_targets), layer.py (_get_next_minibatch_inds) and
minibatch.py/blob.py line by line, on one numpy.random stream seeded like
tools/train_net.py.  The feeder must give bit-identical blobs, iteration after iteration.
"""
from __future__ import annotations

import warnings

import cv2
import numpy as np
import pytest
import torch

from _scene_set import CLASSES, scene_set  # noqa: F401  (fixture)

EPS = 1e-14
CFG = dict(SCALES=(120, 150, 96), MAX_SIZE=200, IMS_PER_BATCH=2, BATCH_SIZE=32, FG_FRACTION=0.25,
           FG_THRESH=0.5, BG_THRESH_HI=0.5, BG_THRESH_LO=0.1, BBOX_THRESH=0.5)
MEANS = np.array([[[102.9801, 115.9465, 122.7717]]])


# ---------------------------------------------------------------- the port

def port_overlaps(boxes, query):   # utils/bbox.pyx, loops as written
    out = np.zeros((boxes.shape[0], query.shape[0]))
    for k in range(query.shape[0]):
        area = (query[k, 2] - query[k, 0] + 1) * (query[k, 3] - query[k, 1] + 1)
        for n in range(boxes.shape[0]):
            iw = min(boxes[n, 2], query[k, 2]) - max(boxes[n, 0], query[k, 0]) + 1
            if iw > 0:
                ih = min(boxes[n, 3], query[k, 3]) - max(boxes[n, 1], query[k, 1]) + 1
                if ih > 0:
                    ua = float((boxes[n, 2] - boxes[n, 0] + 1) * (boxes[n, 3] - boxes[n, 1] + 1) + area - iw * ih)
                    out[n, k] = iw * ih / ua
    return out


def port_roidb(gts, props, widths, K):
    roidb = []
    for (gb, gc), pb in zip(gts, props):
        gov = np.zeros((gb.shape[0], K), np.float32)
        gov[np.arange(gb.shape[0]), gc] = 1.0
        ov = np.zeros((pb.shape[0], K), np.float32)
        if gb.shape[0]:
            o = port_overlaps(pb.astype(float), gb.astype(float))
            am, mx = o.argmax(axis=1), o.max(axis=1)
            I = np.where(mx > 0)[0]
            ov[I, gc[am[I]]] = mx[I]
        # the fork stacks uint16 ground truth with the .mat's float64 boxes: float64
        roidb.append({"boxes": np.vstack([gb.astype(np.uint16), pb.astype(np.float64)]), "gt_classes": np.hstack([gc, np.zeros(len(pb), np.int32)]),
                      "gt_overlaps": np.vstack([gov, ov]), "flipped": False})
    n = len(roidb)
    for i in range(n):
        boxes = roidb[i]["boxes"].copy()
        ox1, ox2 = boxes[:, 0].copy(), boxes[:, 2].copy()
        boxes[:, 0] = widths[i] - ox2 - 1
        boxes[:, 2] = widths[i] - ox1 - 1
        roidb.append({"boxes": boxes, "gt_overlaps": roidb[i]["gt_overlaps"], "flipped": True,
                      "gt_classes": roidb[i]["gt_classes"]})
    for r in roidb:
        r["max_classes"] = r["gt_overlaps"].argmax(axis=1)
        r["max_overlaps"] = r["gt_overlaps"].max(axis=1)
    for r in roidb:
        rois = r["boxes"].astype(float)
        gt_inds = np.where(r["max_overlaps"] == 1)[0]
        ex_inds = np.where(r["max_overlaps"] >= CFG["BBOX_THRESH"])[0]
        a = port_overlaps(rois[ex_inds, :], rois[gt_inds, :]).argmax(axis=1)
        g, e = rois[gt_inds[a], :], rois[ex_inds, :]
        ew, eh = e[:, 2] - e[:, 0] + EPS, e[:, 3] - e[:, 1] + EPS
        gw, gh = g[:, 2] - g[:, 0] + EPS, g[:, 3] - g[:, 1] + EPS
        ecx, ecy, gcx, gcy = e[:, 0] + 0.5 * ew, e[:, 1] + 0.5 * eh, g[:, 0] + 0.5 * gw, g[:, 1] + 0.5 * gh
        t = np.zeros((rois.shape[0], 5), np.float32)
        t[ex_inds, 0] = r["max_classes"][ex_inds]
        t[ex_inds, 1] = (gcx - ecx) / ew
        t[ex_inds, 2] = (gcy - ecy) / eh
        t[ex_inds, 3] = np.log(gw / ew)
        t[ex_inds, 4] = np.log(gh / eh)
        r["bbox_targets"] = t
    counts = np.zeros((K, 1)) + EPS
    sums, sq = np.zeros((K, 4)), np.zeros((K, 4))
    for r in roidb:
        for c in range(1, K):
            ci = np.where(r["bbox_targets"][:, 0] == c)[0]
            if ci.size > 0:
                counts[c] += ci.size
                sums[c, :] += r["bbox_targets"][ci, 1:].sum(axis=0)
                sq[c, :] += (r["bbox_targets"][ci, 1:] ** 2).sum(axis=0)
    means = sums / counts
    stds = np.sqrt(sq / counts - means ** 2)
    for r in roidb:
        for c in range(1, K):
            ci = np.where(r["bbox_targets"][:, 0] == c)[0]
            r["bbox_targets"][ci, 1:] -= means[c, :]
            r["bbox_targets"][ci, 1:] /= stds[c, :]
    return roidb, means.ravel(), stds.ravel()


def port_minibatch(batch, images, K):
    n = len(batch)
    sidx = np.random.randint(0, high=len(CFG["SCALES"]), size=n)
    rpi = CFG["BATCH_SIZE"] // n
    fpi = np.round(CFG["FG_FRACTION"] * rpi)
    ims, scales = [], []
    for i in range(n):
        im = images[batch[i]["image"]]
        if batch[i]["flipped"]:
            im = im[:, ::-1, :]
        im = im.astype(np.float32, copy=True)
        im -= MEANS
        s = float(CFG["SCALES"][sidx[i]]) / float(np.min(im.shape[0:2]))
        if np.round(s * np.max(im.shape[0:2])) > CFG["MAX_SIZE"]:
            s = float(CFG["MAX_SIZE"]) / float(np.max(im.shape[0:2]))
        ims.append(cv2.resize(im, None, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR))
        scales.append(s)
    mx = np.array([im.shape for im in ims]).max(axis=0)
    blob = np.zeros((n, mx[0], mx[1], 3), np.float32)
    for i, im in enumerate(ims):
        blob[i, 0:im.shape[0], 0:im.shape[1], :] = im
    rois_b, lab_b = np.zeros((0, 5), np.float32), np.zeros(0, np.float32)
    t_b, w_b = np.zeros((0, 4 * K), np.float32), np.zeros((0, 4 * K), np.float32)
    for i in range(n):
        r = batch[i]
        fg = np.where(r["max_overlaps"] >= CFG["FG_THRESH"])[0]
        nfg = int(np.minimum(fpi, fg.size))
        if fg.size > 0:
            fg = np.random.choice(fg, size=nfg, replace=False)
        bg = np.where((r["max_overlaps"] < CFG["BG_THRESH_HI"]) & (r["max_overlaps"] >= CFG["BG_THRESH_LO"]))[0]
        nbg = int(np.minimum(rpi - nfg, bg.size))
        if bg.size > 0:
            bg = np.random.choice(bg, size=nbg, replace=False)
        keep = np.append(fg, bg).astype(int)
        labels = r["max_classes"][keep].astype(np.float32)
        labels[nfg:] = 0
        td = r["bbox_targets"][keep, :]
        tt, ww = np.zeros((keep.size, 4 * K), np.float32), np.zeros((keep.size, 4 * K), np.float32)
        for ind in np.where(td[:, 0] > 0)[0]:
            c = int(td[ind, 0])
            tt[ind, 4 * c:4 * c + 4] = td[ind, 1:]
            ww[ind, 4 * c:4 * c + 4] = [1., 1., 1., 1.]
        rois = r["boxes"][keep] * scales[i]
        rois_b = np.vstack((rois_b, np.hstack((i * np.ones((rois.shape[0], 1)), rois))))
        lab_b = np.hstack((lab_b, labels))
        t_b, w_b = np.vstack((t_b, tt)), np.vstack((w_b, ww))
    return {"data": blob.transpose((0, 3, 1, 2)), "rois": rois_b, "labels": lab_b, "bbox_targets": t_b,
            "bbox_loss_weights": w_b}


# ---------------------------------------------------------------- the test

def test_feeder_matches_the_fork_port_for_several_iterations(scene_set):
    from caffekt.kt.detect import config as C
    from caffekt.kt.detect.feeder import RoIFeeder
    from caffekt.kt.detect.proposals import from_file
    from caffekt.kt.detect.roidb import training_roidb
    from caffekt.kt.detect.voc import VOCDataset
    from caffe_compat.io import read_prototxt

    cfg = C.load(None, {"TRAIN": {k: list(v) if isinstance(v, tuple) else v for k, v in CFG.items()},
                        "RNG_SEED": 7})
    ds = VOCDataset(scene_set, "train", CLASSES)
    recs = ds.records()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        props = from_file(scene_set + "/proposals", recs)
    entries, means, stds = training_roidb(recs, props, 4, cfg)

    gts = [(r.boxes.astype(np.float32), r.classes.astype(np.int32)) for r in recs]
    proot, pmeans, pstds = port_roidb(gts, props, [r.width for r in recs], 4)
    images = {r.image: cv2.imread(r.image) for r in recs}
    for k, r in enumerate(proot):
        r["image"] = recs[k % len(recs)].image
    np.testing.assert_allclose(means, pmeans, rtol=1e-12)
    np.testing.assert_allclose(stds, pstds, rtol=1e-12)

    lp = read_prototxt("""layer { name: "data" type: "Python" top: "data" top: "rois" top: "labels"
        top: "bbox_targets" top: "bbox_loss_weights"
        python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" param_str: "'num_classes': 4" } }""").layer[0]

    class Ctx:
        rank, where = 0, "test"
    feeder = RoIFeeder(lp, Ctx, entries, 4, cfg)
    np.random.seed(7)
    perm, cur = np.random.permutation(np.arange(len(proot))), 0   # layer.set_roidb -> _shuffle_roidb_inds
    for it in range(8):
        if cur + CFG["IMS_PER_BATCH"] >= len(proot):
            perm, cur = np.random.permutation(np.arange(len(proot))), 0
        inds = perm[cur:cur + CFG["IMS_PER_BATCH"]]
        cur += CFG["IMS_PER_BATCH"]
        want = port_minibatch([proot[i] for i in inds], images, 4)
        got = feeder()
        for k in want:
            g = got[k].numpy()
            assert g.dtype == np.float32, k
            np.testing.assert_array_equal(g, want[k].astype(np.float32), err_msg=f"iteration {it}, blob {k}")
    # the sample really mixes foreground and background
    assert (got["labels"].numpy() > 0).any() and (got["labels"].numpy() == 0).any()


def test_feeder_state_resumes_the_stream(scene_set):
    from caffekt.kt.detect import config as C
    from caffekt.kt.detect.feeder import RoIFeeder
    from caffekt.kt.detect.proposals import from_file
    from caffekt.kt.detect.roidb import training_roidb
    from caffekt.kt.detect.voc import VOCDataset
    from caffe_compat.io import read_prototxt
    import json
    cfg = C.load(None, {"TRAIN": {"SCALES": [100], "MAX_SIZE": 150, "BATCH_SIZE": 16}})
    ds = VOCDataset(scene_set, "train", CLASSES)
    recs = ds.records()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        entries, _, _ = training_roidb(recs, from_file(scene_set + "/proposals", recs), 4, cfg)
    lp = read_prototxt("""layer { name: "d" type: "Python" top: "a" top: "b" top: "c" top: "d" top: "e"
        python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" } }""").layer[0]

    class Ctx:
        rank, where = 0, "test"
    a = RoIFeeder(lp, Ctx, entries, 4, cfg)
    for _ in range(3):
        a()
    state = json.loads(json.dumps(a.state_dict()))
    want = [a() for _ in range(3)]
    b = RoIFeeder(lp, Ctx, entries, 4, cfg)
    b.load_state_dict(state)
    for w in want:
        g = b()
        assert all(torch.equal(g[k], w[k]) for k in w)


def test_feeder_refuses_a_net_for_another_class_count(scene_set):
    from caffekt.kt.detect import config as C
    from caffekt.kt.detect.feeder import RoIFeeder
    from caffe_compat.errors import UnsupportedParameter
    from caffe_compat.io import read_prototxt
    lp = read_prototxt("""layer { name: "data" type: "Python" top: "a" top: "b" top: "c" top: "d" top: "e"
        python_param { module: "roi_data_layer.layer" layer: "RoIDataLayer" param_str: "'num_classes': 21" } }""").layer[0]

    class Ctx:
        rank, where = 0, "net file train.prototxt, layer 'data'"
    with pytest.raises(UnsupportedParameter, match=r"layer 'data'.*num_classes 21.*has 4"):
        RoIFeeder(lp, Ctx, [{"x": 1}], 4, C.load())
