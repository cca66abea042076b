"""Cluster classification (CC): train the stride-4 AlexNet to predict the k-means pseudo-labels.

The authors' way (the Jigsaw fork's data_reader.cpp): the images go into an
LMDB of raw Datums (resized to ``resize`` x ``resize``, written once in a
seeded shuffled order, since a Data layer reads in key order), the
pseudo-labels into ``labels.bin`` in the same order, and the train net is
``prototxt/alexnet_s4_deploy.prototxt`` behind a plain ``Data`` layer (random
``crop`` crop, mirror, mean values subtracted: Caffe's data_transformer.cpp)
with ``fc8_cc`` sized to the number of clusters and SoftmaxWithLoss.
Training is ``caffekt train solver.prototxt --labels-bin labels.bin``: the
one driver (``caffe_compat.train.train``), Caffe's solver semantics,
snapshots ``cc_iter_N.caffemodel|.solverstate``, resume from the latest
complete snapshot, progress and a CSV log.

The default solver is the standard AlexNet ImageNet recipe (Krizhevsky et
al. as in BVLC's models/bvlc_alexnet/solver.prototxt, except for the 450K
iterations of the paper): SGD lr 0.01 x0.1 every 100K, momentum 0.9, weight
decay 5e-4, batch 256, crop 227.  Every value can be overridden (small CPU
runs).  ``out/deploy.prototxt`` (fc8_cc sized to k) is written beside the
snapshots, so ``kt features --checkpoint out/cc_iter_N.caffemodel`` and the
probes can load them.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional, Sequence, Tuple


from caffe_compat.errors import CaffeCompatError

ARCHS = {"alexnet": "alexnet_s4_deploy.prototxt"}


@dataclass
class CCRecipe:
    base_lr: float = 0.01
    gamma: float = 0.1
    stepsize: int = 100000
    max_iter: int = 450000
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 256
    crop_size: int = 227
    resize: int = 256
    mirror: bool = True
    mean: Tuple[float, float, float] = (104.0, 117.0, 123.0)
    snapshot: int = 10000
    display: int = 20
    random_seed: int = 0

    def replace(self, **kw) -> "CCRecipe":
        bad = set(kw) - set(asdict(self))
        if bad:
            raise CaffeCompatError(f"unknown CC recipe value(s) {sorted(bad)}; known: {sorted(asdict(self))}")
        d = asdict(self)
        d.update({k: v for k, v in kw.items() if v is not None})
        return CCRecipe(**d)


def deploy_prototxt(arch: str = "alexnet") -> str:
    if arch not in ARCHS:
        raise CaffeCompatError(f"arch must be one of {sorted(ARCHS)}, got {arch!r}")
    import caffekt.prototxt as shipped
    return os.path.join(os.path.dirname(shipped.__file__), ARCHS[arch])


def _fc8(param):
    last = [lp for lp in param.layer if lp.type == "InnerProduct"]
    if not last:
        raise CaffeCompatError(f"net {param.name!r} has no InnerProduct layer to size to the clusters")
    return last[-1]


def deploy_param(k: int, arch: str = "alexnet"):
    """The deploy net with its classifier sized to ``k``."""
    from caffe_compat.io import read_net
    param = read_net(deploy_prototxt(arch))
    _fc8(param).inner_product_param.num_output = int(k)
    return param


def train_param(k: int, lmdb_dir: str, recipe: CCRecipe, arch: str = "alexnet"):
    """The CC train net: Data(LMDB, labels from labels.bin) -> deploy layers (no Softmax) -> SoftmaxWithLoss."""
    from caffe_compat.proto import caffe_pb2
    dep = deploy_param(k, arch)
    net = caffe_pb2.NetParameter(name=f"{dep.name}_cc_train")
    data = net.layer.add(name="data", type="Data")
    data.top.extend(["data", "label"])
    dp = data.data_param
    dp.source, dp.batch_size, dp.backend = lmdb_dir, int(recipe.batch_size), caffe_pb2.DataParameter.LMDB
    tp = data.transform_param
    tp.crop_size, tp.mirror = int(recipe.crop_size), bool(recipe.mirror)
    tp.mean_value.extend([float(m) for m in recipe.mean])
    for lp in dep.layer:
        if lp.type in ("Input", "Softmax"):
            continue
        net.layer.add().CopyFrom(lp)
    score = _fc8(dep).top[0]
    loss = net.layer.add(name="loss", type="SoftmaxWithLoss")
    loss.bottom.extend([score, "label"])
    loss.top.append("loss")
    return net


def write_lmdb_and_labels(names: Sequence[str], labels, out: str, *, resize: int, seed: int = 0) -> Tuple[str, str]:
    """``out/train_lmdb`` (raw Datums, shuffled by ``seed``) and ``out/labels.bin`` in the same order.

    The LMDB is reused when it was written for the same images, size and seed
    (``train_lmdb.json``); labels.bin is rewritten every time (new clusters,
    same images).
    """
    import hashlib
    import json

    import numpy as np

    from caffe_compat.files import atomic_output
    from caffe_compat.data.jps import write_labels_bin
    from caffe_compat.data.sources import write_lmdb
    order = np.random.default_rng([0x4343, int(seed)]).permutation(len(names))
    lmdb_dir, stamp = os.path.join(out, "train_lmdb"), os.path.join(out, "train_lmdb.json")
    key = {"images": hashlib.sha256("\n".join(names).encode("utf-8")).hexdigest(), "n": len(names),
           "resize": int(resize), "seed": int(seed)}
    fresh = os.path.isfile(stamp) and os.path.isdir(lmdb_dir)
    if fresh:
        with open(stamp, encoding="utf-8") as f:
            fresh = json.load(f) == key
    if not fresh:
        import shutil
        shutil.rmtree(lmdb_dir, ignore_errors=True)
        write_lmdb(lmdb_dir, [(names[i], 0) for i in order], encoded=False, resize=(int(resize), int(resize)))
        with atomic_output(stamp) as f:
            f.write(json.dumps(key).encode("utf-8"))
    labels_bin = write_labels_bin(os.path.join(out, "labels.bin"), np.asarray(labels)[order])
    return lmdb_dir, labels_bin


def solver_param(train_net: str, prefix: str, recipe: CCRecipe, solver: Optional[str] = None):
    """The recipe as a SolverParameter, or ``solver``'s file with its net replaced by ours."""
    from caffe_compat.io import read_solver
    from caffe_compat.proto import caffe_pb2
    if solver:
        sp = read_solver(solver)
        for f in ("net", "net_param", "train_net", "train_net_param"):
            sp.ClearField(f)
        del sp.test_net[:], sp.test_net_param[:], sp.test_iter[:]
        sp.test_interval = 0
    else:
        sp = caffe_pb2.SolverParameter(type="SGD", lr_policy="step")
        sp.base_lr, sp.gamma, sp.stepsize = recipe.base_lr, recipe.gamma, int(recipe.stepsize)
        sp.momentum, sp.weight_decay = recipe.momentum, recipe.weight_decay
        sp.max_iter, sp.snapshot, sp.display = int(recipe.max_iter), int(recipe.snapshot), int(recipe.display)
        sp.random_seed = int(recipe.random_seed)
    sp.net = train_net
    sp.snapshot_prefix = prefix
    return sp


def resolve_labels(labels: str, images: Optional[Sequence[str]], out_list: str) -> Tuple[int, int]:
    """Write ``out_list`` (absolute paths) from ``labels``; with ``images``, every one must be labelled.

    Returns (images, k).  Labels must be 0 ... k-1.
    """
    from .cluster import match_truth
    from .labels import read_list, write_list
    if images is not None:
        lab = match_truth(list(images), labels)
        names = [os.path.abspath(p) for p in images]
    else:
        names, lab = read_list(labels)
        base = os.path.dirname(os.path.abspath(labels))
        names = [n if os.path.isabs(n) else os.path.join(base, n) for n in names]
    if len(lab) == 0:
        raise CaffeCompatError(f"{labels}: no labelled images")
    if lab.min() < 0:
        raise CaffeCompatError(f"{labels}: labels must be >= 0, found {int(lab.min())}")
    missing = [n for n in names[:1000] if not os.path.isfile(n)]
    if missing:
        raise CaffeCompatError(f"{labels}: image file not found: {missing[0]!r}")
    write_list(out_list, names, lab)
    return len(names), int(lab.max()) + 1


def train_cc(labels: str, out: str, *, images: Optional[Sequence[str]] = None, arch: str = "alexnet",
             solver: Optional[str] = None, recipe: CCRecipe = CCRecipe(), k: Optional[int] = None,
             resume: str = "auto", workers: int = 0, progress: bool = True, callbacks=()):
    """Train CC into ``out`` (resuming from its latest snapshot); returns ``caffe_compat.train.TrainResult``."""
    from caffe_compat.prototxt import write_prototxt
    from caffe_compat.train import train

    from .labels import read_list

    os.makedirs(out, exist_ok=True)
    list_file = os.path.join(out, "train_list.txt")
    n, k_found = resolve_labels(labels, images, list_file)
    k = int(k or k_found)
    if k < k_found:
        raise CaffeCompatError(f"{labels}: labels go up to {k_found - 1} but k={k}")
    names, lab = read_list(list_file)
    lmdb_dir, labels_bin = write_lmdb_and_labels(names, lab, out, resize=recipe.resize, seed=recipe.random_seed)
    write_prototxt(train_param(k, os.path.abspath(lmdb_dir), recipe, arch), os.path.join(out, "train.prototxt"))
    write_prototxt(deploy_param(k, arch), os.path.join(out, "deploy.prototxt"))
    sp = solver_param(os.path.abspath(os.path.join(out, "train.prototxt")), os.path.join(out, "cc"), recipe, solver)
    solver_path = os.path.join(out, "solver.prototxt")
    write_prototxt(sp, solver_path)
    return train(solver_path, resume=resume, out=out, workers=workers, progress=progress, callbacks=callbacks,
                 labels_bin=labels_bin, progress_desc="cc")


def latest_model(out: str) -> Optional[str]:
    """The caffemodel of the latest complete snapshot in ``out``."""
    from caffe_compat.train import latest_snapshot
    st = latest_snapshot(os.path.join(out, "cc"))
    if st is None:
        return None
    model = st[:-len(".solverstate")] + ".caffemodel"
    return model if os.path.isfile(model) else None


__all__ = ["CCRecipe", "train_cc", "train_param", "deploy_param", "solver_param", "resolve_labels",
           "write_lmdb_and_labels", "latest_model"]
