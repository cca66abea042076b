"""``caffekt demo``: the paper's whole story, small, on Fashion-MNIST (or photos that ship with scikit-image).

Stages (each a ``kt.pipeline`` stage unless said otherwise):

1. data         Fashion-MNIST when it is installed (``kt.fashion``: a subset of
                the train images upsampled to PNG, without labels for the
                pretext, clustering and student; test images for the probes),
                built once under ``<cache>/demo-fashion-mnist-<sizes>``; otherwise
                ``photos``: random crops of scikit-image's bundled photos,
                labelled by source photo, under ``<cache>/demo-photos``;
2. ``jigsaw``   a Jigsaw++ teacher: the paper's puzzles (9 tiles, permutation
                classes, occluding tiles from another image), fewer iterations
                and permutations, every convolution narrowed by ``jigsaw_width``,
                trained with the small-scale recipe (msra fillers, Adam) and
                scored on held-out puzzles of the val crops;
3. ``features`` + ``cluster``  teacher conv5, pooled 3x3, L2, k-means -> pseudo-labels;
4. ``train-cc`` the stride-4 AlexNet student trained to predict the clusters;
5. ``probe``    linear probes on conv1..conv5 of random init, teacher and student;
6. (here)       the student exported to a Fast R-CNN CaffeNet caffemodel (then
                loaded strictly into ``frcnn_target("caffenet")``) and to ONNX
                (run in onnxruntime against our module);
7. (here)       ``report/report.md`` with the numbers of this run and its figures.

Every figure and number in the report is computed by the run that writes it:
the work folder is emptied first (only when it is one this module made).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Optional

from caffe_compat.errors import CaffeCompatError

# the report half of the demo; its names stay importable from here
from .demo_report import TILE_INPUT, _summary, _write_text, loss_curves_png, probe_words, smooth, write_report

STAMP = "caffekt-demo.json"       # marks a folder as ours, so a rerun may empty it


@dataclass(frozen=True)
class DemoScale:
    """How big each stage is; ``SCALES`` holds the two the command offers."""

    name: str
    crops_per_photo: int = 40
    photo_size: int = 96
    # The teacher uses the small-scale recipe (msra fillers, no dropout, Adam
    # 3e-4, 10 permutations): at this width and budget the authors' Gaussian
    # fillers + SGD 0.01 stay at chance (tests/kt/test_jigsaw_learning.py).
    jigsaw_iter: int = 3000
    jigsaw_batch: int = 16
    jigsaw_width: float = 0.125
    jigsaw_perms: int = 10
    jigsaw_fc6: int = 64
    jigsaw_fc7: int = 128
    jigsaw_lr: float = 3e-4
    jigsaw_solver: str = "Adam"
    jigsaw_init: str = "msra"
    jigsaw_dropout: float = 0.0
    puzzles_eval: int = 200
    k: int = 16
    cc_iter: int = 200
    cc_batch: int = 32
    cc_lr: float = 0.01
    cc_solver: str = "SGD"        # "Adam": a constant-rate solver file (kt.pipeline.constant_solver_file)
    probe_epochs: int = 40
    # Fashion-MNIST (used when installed): train images (unlabelled for all but the probes), test images
    fm_train: int = 2000
    fm_test: int = 5000
    fm_size: int = 64


# Per data set: Fashion-MNIST's teacher learns its puzzles in a few hundred iterations (garments share a
# layout), so it needs fewer than the photos' teacher; the probes' 5000 test images keep the demo near 6 minutes.
SCALES: Dict[str, Dict[str, DemoScale]] = {
    "photos": {"full": DemoScale("full"),
               "quick": DemoScale("quick", jigsaw_iter=150, puzzles_eval=40, cc_iter=30, probe_epochs=10)},
    # the student: the ImageNet recipe's SGD 0.01 stays at chance for hundreds of iterations here, Adam 1e-4 learns
    "fashion-mnist": {"full": DemoScale("full", jigsaw_iter=600, k=30, cc_iter=200, cc_lr=1e-4, cc_solver="Adam",
                                        probe_epochs=20),
                      "quick": DemoScale("quick", jigsaw_iter=150, puzzles_eval=40, k=10, cc_iter=30, cc_lr=1e-4,
                                         cc_solver="Adam", probe_epochs=10, fm_train=400, fm_test=500)},
}
DATA_KINDS = ("auto", "fashion-mnist", "photos")


def pick_data(data: str = "auto") -> str:
    """``fashion-mnist`` when asked or (``auto``) when installed, else ``photos``."""
    from .fashion import available
    if data not in DATA_KINDS:
        raise CaffeCompatError(f"--data must be one of {', '.join(DATA_KINDS)}, got {data!r}")
    if data == "auto":
        return "fashion-mnist" if available() else "photos"
    return data


# ------------------------------------------------------------------ the teacher's deploy


_DEPLOY_BLOBS = {"tile1": "data", "tile1_n": "data_n"}   # the shipped deploy's blob names


def tower_deploy_param(arch: str = "alexnet", width: float = 1.0, fc6: int = 1024, tile: int = TILE_INPUT):
    """Tower 1 of ``kt.jigsaw.cfn_net_param`` as a one-tile deploy (Input ``data`` 1x3xTxT).

    Kept: every layer whose bottoms all descend from ``tile1`` (so the
    other towers, the concat and the classifier drop out), with ``tile1``
    renamed ``data`` (``tile1_n``: ``data_n``); the layer names are the teacher's, so its caffemodel
    loads by name as into ``prototxt/jigsaw_cfn_tower_s2_deploy.prototxt``
    (at width 1, alexnet, fc6 1024 the layers are that file's, field for field).
    """
    from caffe_compat.proto import caffe_pb2

    from .jigsaw import cfn_net_param

    src = cfn_net_param(n_perms=2, arch=arch, batch_size=1, width=width, fc6=fc6, fc7=2, dropout=0)
    net = caffe_pb2.NetParameter(name=f"jigsaw_cfn_tower_{arch}_w{width:g}")
    inp = net.layer.add(name="data", type="Input", top=["data"])
    inp.input_param.shape.add().dim.extend([1, 3, tile, tile])
    reach = {"tile1"}
    for lp in src.layer:
        if lp.bottom and all(b in reach for b in lp.bottom):
            new = net.layer.add()
            new.CopyFrom(lp)
            new.bottom[:] = [_DEPLOY_BLOBS.get(b, b) for b in lp.bottom]
            new.top[:] = [_DEPLOY_BLOBS.get(t, t) for t in lp.top]
            for ps in new.param:   # names tie the towers' weights together; one tower has nothing to tie
                ps.ClearField("name")
            reach.update(lp.top)
    return net


def write_tower_deploy(path: str, **kw) -> str:
    from caffe_compat.prototxt import write_prototxt
    write_prototxt(tower_deploy_param(**kw), path)
    return path


# ------------------------------------------------------------------ the pipeline config


def data_files(data: str, cache_dir: Optional[str], scale: DemoScale) -> dict:
    """The data stage and the lists the demo reads: unlabelled (pretext, clustering), truth, probe train/test."""
    from .pipeline import default_cache_dir

    cache = cache_dir or default_cache_dir()
    if data == "fashion-mnist":
        # one folder per subset: the pipeline takes a stage whose outputs exist as done, whatever its sizes
        d = os.path.join(cache, f"demo-fashion-mnist-{scale.fm_train}-{scale.fm_test}-{scale.fm_size}")
        stage = {"name": "data", "kind": "fashion-mnist", "out": d, "train": scale.fm_train, "test": scale.fm_test,
                 "size": scale.fm_size, "seed": 0}
        lists = {"pretext": "unlabelled.txt", "cluster": "unlabelled.txt", "truth": "train.txt",
                 "probe_train": "train.txt", "probe_test": "test.txt"}
    else:
        d = os.path.join(cache, "demo-photos")
        stage = {"name": "data", "kind": "photos", "out": d, "crops_per_photo": scale.crops_per_photo,
                 "size": scale.photo_size}
        lists = {"pretext": "train.txt", "cluster": "all.txt", "truth": "all.txt", "probe_train": "train.txt",
                 "probe_test": "val.txt"}
    return {"kind": data, "dir": d, "stage": stage, **{k: os.path.join(d, v) for k, v in lists.items()}}


def demo_config(out: str, scale: DemoScale, seed: int = 0, cache_dir: Optional[str] = None,
                progress: bool = True, data: str = "photos") -> dict:
    """The ``kt.pipeline`` config of the demo (already resolved: absolute paths, no ``{var}``)."""
    work = os.path.join(os.path.abspath(out), "work")
    files = data_files(data, cache_dir, scale)
    deploy = os.path.join(work, "teacher_deploy.prototxt")
    teacher = os.path.join(work, "jigsaw", "teacher.caffemodel")
    cc = os.path.join(work, "cc")
    return {
        "name": f"demo_{scale.name}",
        "workdir": work,
        "path": "(caffekt demo)",
        "teacher_deploy": deploy,
        "data": files,
        "stages": [
            files["stage"],
            {"name": "jigsaw", "kind": "jigsaw", "images": files["pretext"],
             "out": os.path.join(work, "jigsaw"), "arch": "alexnet", "perms": scale.jigsaw_perms,
             "max_iter": scale.jigsaw_iter, "batch_size": scale.jigsaw_batch, "snapshot": scale.jigsaw_iter,
             "seed": seed, "width": scale.jigsaw_width, "fc6": scale.jigsaw_fc6, "fc7": scale.jigsaw_fc7,
             "base_lr": scale.jigsaw_lr, "solver_type": scale.jigsaw_solver, "init": scale.jigsaw_init,
             "dropout": scale.jigsaw_dropout, "progress": progress},
            {"name": "features", "kind": "features", "images": files["cluster"],
             "out": os.path.join(work, "teacher_features.npy"), "model": f"{deploy}:{teacher}",
             "blob": "conv5", "preprocess": "tile-mvn", "l2": True, "batch_size": 32, "pool_grid": 3,
             "progress": progress},
            {"name": "cluster", "kind": "cluster", "features": os.path.join(work, "teacher_features.npy"),
             "k": scale.k, "out": os.path.join(work, "pseudo_labels.txt"), "seed": seed,
             "truth": files["truth"], "montage": os.path.join(work, "clusters.png"),
             "hist_png": os.path.join(work, "cluster_sizes.png")},
            {"name": "train-cc", "kind": "train-cc", "labels": os.path.join(work, "pseudo_labels.txt"),
             "out": cc, "arch": "alexnet", "progress": progress,
             **({"solver": os.path.join(work, "cc_solver.prototxt")} if scale.cc_solver != "SGD" else {}),
             "recipe": {"batch_size": scale.cc_batch, "resize": 72, "crop_size": TILE_INPUT,
                        "max_iter": scale.cc_iter, "stepsize": max(1, (2 * scale.cc_iter) // 3),
                        "snapshot": scale.cc_iter, "display": 10, "base_lr": scale.cc_lr,
                        "random_seed": seed}},
            {"name": "probe", "kind": "probe", "progress": progress,
             "models": {"student (CC, AlexNet s4)": f"{cc}/deploy.prototxt:{cc}/final.caffemodel",
                        "teacher (Jigsaw++ tower)": f"{deploy}:{teacher}"},
             "train": files["probe_train"], "val": files["probe_test"],
             "out": os.path.join(work, "probes"), "input_size": TILE_INPUT,
             "settings": {"epochs": scale.probe_epochs, "lr": 0.01, "batch_size": 32, "seed": seed}},
        ],
    }



# ------------------------------------------------------------------ the run


@dataclass
class DemoResult:
    out: str
    report: str
    ok: bool
    summary: dict = field(default_factory=dict)


def _prepare(out: str) -> None:
    """Make ``out`` ours and empty of an earlier demo; refuse a folder that holds other things."""
    out = os.path.abspath(out)
    stamp = os.path.join(out, STAMP)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(stamp):
        raise CaffeCompatError(f"{out} exists and is not a caffekt demo folder (no {STAMP}); "
                               "give an empty or new folder with -o")
    for sub in ("work", "report", "export"):
        p = os.path.join(out, sub)
        if os.path.isdir(p):
            shutil.rmtree(p)
    os.makedirs(out, exist_ok=True)


def puzzle_accuracy(teacher: str, images: str, perms: int, perm_seed: int, puzzles: int, seed: int) -> dict:
    """Puzzle accuracy of the trained 9-tower net on puzzles of held-out images (``kt.jigsaw.evaluate``)."""
    from .images import open_images
    from .jigsaw import PuzzleSource, evaluate, load_eval_net
    from .permutations import generate_permutations
    from .puzzle import PuzzleConfig

    net = load_eval_net(teacher, batch_size=20)
    source = PuzzleSource(open_images(images=images), generate_permutations(perms, seed=perm_seed),
                          PuzzleConfig(normalize=False), seed=seed)
    return evaluate(net, source, puzzles=puzzles)


def export_student(cc_dir: str, export_dir: str, seed: int = 0) -> dict:
    """The student as a Fast R-CNN CaffeNet caffemodel (checked by a strict load) and as ONNX (checked in onnxruntime)."""
    import torch

    from caffe_compat.net import load_net
    from caffe_compat.weights import copy_trained_layers
    from caffekt.converters.fast_rcnn import export_frcnn, frcnn_target
    from caffekt.converters.onnx_export import export_onnx_file

    os.makedirs(export_dir, exist_ok=True)
    deploy = os.path.join(cc_dir, "deploy.prototxt")
    weights = os.path.join(cc_dir, "final.caffemodel")
    frcnn_path = os.path.join(export_dir, "student_frcnn_caffenet.caffemodel")
    frep = export_frcnn(f"{deploy}:{weights}", "caffenet", frcnn_path, seed=seed)
    # what Fast R-CNN's solver will do with it: CopyTrainedLayersFrom, shapes checked, nothing left out
    target = load_net(frcnn_target("caffenet"), phase="TEST")
    load = copy_trained_layers(target, frcnn_path, strict=True)
    student = load_net(deploy, weights=weights, phase="TEST", input_shapes={"data": (1, 3, TILE_INPUT, TILE_INPUT)})
    sb, tb = student.blobs_by_layer, target.blobs_by_layer
    convs = [n for n in tb if n.startswith("conv")]
    conv_equal = bool(convs) and all(torch.equal(a.detach(), b.detach()) for n in convs
                                     for a, b in zip(sb[n], tb[n]))
    onnx_path = os.path.join(export_dir, "student_alexnet_s4.onnx")
    orep = export_onnx_file(deploy, weights, onnx_path, input_shapes={"data": (1, 3, TILE_INPUT, TILE_INPUT)},
                            seed=seed)
    shutil.copyfile(deploy, os.path.join(export_dir, "student_deploy.prototxt"))
    return {
        "frcnn": {"path": frcnn_path, "bytes": frep.nbytes, "copied": frep.copied,
                  "initialised": [n for n, _ in frep.initialised], "report": str(frep),
                  "strict_load_copied": load.copied, "strict_load_untouched": load.untouched,
                  "conv_weights_equal_student": bool(conv_equal),
                  "ok": bool(not load.untouched and not load.mismatched and conv_equal)},
        "onnx": {"path": onnx_path, "written": orep.written, "checker": orep.checker, "rtol": orep.rtol,
                 "outputs": [{"name": o.name, "shape": list(o.shape), "max_abs_err": o.max_abs_err,
                              "max_rel_err": o.max_rel_err, "ok": o.ok} for o in orep.outputs],
                 "report": str(orep), "ok": bool(orep.ok)},
    }


def pick_threads(threads: Optional[int] = None) -> int:
    """``threads``, else 1 on a machine of 2 cores or fewer or one already busy, else torch's default.

    Small nets gain little from intra-op threads, and when another process
    holds a core the threads wait for each other: measured here (2 shared
    cores, load ~3), one thread ran an iteration of the demo's Jigsaw++
    teacher in 0.14 s, two threads in 0.86 s.
    """
    import torch

    if threads:
        return int(threads)
    cores = os.cpu_count() or 1
    try:
        busy = os.getloadavg()[0] >= cores / 2
    except OSError:   # no load average on this platform
        busy = False
    return 1 if busy or cores <= 2 else torch.get_num_threads()


def run_demo(out: str = "caffekt-demo", *, quick: bool = False, seed: int = 0, cache_dir: Optional[str] = None,
             progress: bool = True, threads: Optional[int] = None, data: str = "auto",
             log: Callable[[str], None] = print) -> DemoResult:
    """Run the demo into ``out`` (``work/``, ``export/``, ``report/``); see the module doc."""
    import torch

    from . import pipeline
    from .fashion import source_dir

    data = pick_data(data)
    scale = SCALES[data]["quick" if quick else "full"]
    t_all = time.perf_counter()
    torch.set_num_threads(pick_threads(threads))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    log(f"caffekt demo ({scale.name}, seed {seed}): torch threads {torch.get_num_threads()}, "
        f"{os.cpu_count()} cores{load}")
    log(f"data: Fashion-MNIST from {source_dir()}" if data == "fashion-mnist" else
        "data: scikit-image's photos (Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist)")
    out = os.path.abspath(out)
    _prepare(out)
    _write_text(os.path.join(out, STAMP), json.dumps({"scale": asdict(scale), "seed": seed, "data": data},
                                                     indent=1))
    cfg = demo_config(out, scale, seed, cache_dir, progress, data)
    os.makedirs(cfg["workdir"], exist_ok=True)
    write_tower_deploy(cfg["teacher_deploy"], arch="alexnet", width=scale.jigsaw_width, fc6=scale.jigsaw_fc6)
    cc_stage = next(st for st in cfg["stages"] if st["kind"] == "train-cc")
    if "solver" in cc_stage:
        pipeline.constant_solver_file(cc_stage["solver"], scale.cc_solver, scale.cc_lr, scale.cc_iter,
                                      snapshot=scale.cc_iter, random_seed=seed)
    steps = len(cfg["stages"]) + 2
    times: Dict[str, float] = {}
    quiet = lambda line: None if line.endswith("(outputs present)") else log(line)   # noqa: E731
    for i, st in enumerate(cfg["stages"], 1):
        log(f"== [{i}/{steps}] {STAGE_TITLES[st['kind'] if st['name'] == 'data' else st['name']]}")
        if all(os.path.exists(o) for o in pipeline.stage_outputs(st)):
            log(f"[{st['name']}] outputs present (cached): {pipeline.stage_outputs(st)[0]}")
            times[st["name"]] = 0.0
            continue
        t0 = time.perf_counter()
        pipeline.run(cfg, stop_after=st["name"], log=quiet)
        times[st["name"]] = time.perf_counter() - t0
    work = cfg["workdir"]
    files = cfg["data"]

    log(f"== [{steps - 1}/{steps}] exporting the student (Fast R-CNN caffemodel, ONNX) and checking both")
    t0 = time.perf_counter()
    exports = export_student(os.path.join(work, "cc"), os.path.join(out, "export"), seed=seed)
    times["export"] = time.perf_counter() - t0
    log(exports["frcnn"]["report"])
    log(exports["onnx"]["report"])

    log(f"== [{steps}/{steps}] writing the report")
    t0 = time.perf_counter()
    puzzles = puzzle_accuracy(os.path.join(work, "jigsaw", "teacher.caffemodel"), files["probe_test"],
                              scale.jigsaw_perms, seed, scale.puzzles_eval, seed + 1000)
    seen = puzzle_accuracy(os.path.join(work, "jigsaw", "teacher.caffemodel"), files["pretext"],
                           scale.jigsaw_perms, seed, scale.puzzles_eval, seed + 1000)   # fresh puzzles, seen images
    times["puzzle eval"] = time.perf_counter() - t0
    summary = _summary(cfg, scale, seed, exports, puzzles, times)
    summary["jigsaw"]["puzzles_train_crops"] = seen
    log(f"teacher puzzle accuracy: {100 * puzzles['accuracy']:.1f}% on {puzzles['puzzles']} puzzles of held-out "
        f"{'test images' if data == 'fashion-mnist' else 'val crops'}, {100 * seen['accuracy']:.1f}% on its "
        f"training images (chance {100 * puzzles['chance']:.1f}%)")
    summary["torch_threads"] = torch.get_num_threads()
    summary["seconds"]["total (before the report)"] = time.perf_counter() - t_all
    report_dir = os.path.join(out, "report")
    write_report(report_dir, cfg, summary)
    summary["seconds"]["total"] = time.perf_counter() - t_all
    _write_text(os.path.join(report_dir, "summary.json"), json.dumps(summary, indent=1))
    ok = exports["frcnn"]["ok"] and exports["onnx"]["ok"]
    report = os.path.join(report_dir, "report.md")
    log(f"demo {'finished' if ok else 'FAILED a check'} in {summary['seconds']['total']:.0f}s; "
        f"report: {report}")
    return DemoResult(out, report, ok, summary)


STAGE_TITLES = {
    "photos": "the image set: crops of scikit-image's photos, labelled by photo (cached)",
    "fashion-mnist": "the image set: Fashion-MNIST, upsampled; train images unlabelled for all but the probes "
                     "(cached)",
    "jigsaw": "training a small Jigsaw++ teacher (9 tiles, occluders, reduced width/iterations)",
    "features": "teacher features: conv5, pooled 3x3, L2-normalised",
    "cluster": "k-means on the teacher features -> pseudo-labels",
    "train-cc": "training the stride-4 AlexNet student on the pseudo-labels (cluster classification)",
    "probe": "linear probes on conv1..conv5: random init, teacher, student",
}


__all__ = ["DemoScale", "SCALES", "pick_data", "data_files", "probe_words", "smooth", "DemoResult", "run_demo",
           "demo_config", "tower_deploy_param", "write_tower_deploy", "export_student", "pick_threads",
           "puzzle_accuracy", "loss_curves_png", "write_report"]
