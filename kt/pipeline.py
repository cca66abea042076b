"""``caffekt kt run CONFIG``: the knowledge-transfer stages in order, every input and output on disk.

A config (JSON) is ``{"name", "workdir", "vars": {...}, "stages": [...]}``;
each stage is ``{"name", "kind", ...params}``.  Strings may use ``{var}``
for ``vars``, ``{workdir}`` and ``{config_dir}``.  Kinds:

* ``photos``   the small labelled set built from scikit-image's photos (``build_photo_set``)
* ``fashion-mnist``  Fashion-MNIST as upsampled PNGs + lists (+ a pretext LMDB), cached
               (``kt.fashion.build_fashion_mnist``; keys: out, train, test, size, seed, lmdb)
* ``jigsaw``   Jigsaw++ pretext training (``caffekt.kt.jigsaw.train``) -> ``teacher.caffemodel``
               (keys: arch, width, fc6, fc7, perms (a count: that many generated
               permutations, or a file), max_iter, batch_size, base_lr, snapshot,
               seed; ``init`` "authors"|"msra", ``dropout``, and ``solver_type``
               (e.g. "Adam": a constant-rate solver of that type instead of the
               authors' SGD schedule; ``momentum``/``momentum2`` optional))
* ``features`` any blob of a net (``kt.features.extract``)
* ``hog``      HOG features (``kt.hog.extract_hog``)
* ``cluster``  k-means pseudo-labels (``kt.cluster.cluster_file``)
* ``train-cc`` cluster classification (``kt.cc.train_cc``) -> ``final.caffemodel``
* ``probe``    linear probes per conv layer + random-init baseline (``kt.probes.run_probes``)

Resuming: a stage counts as done when all its outputs exist.  ``run``
starts at the first stage that is not done and runs it and every later stage
(their old outputs are removed first, since they were made from inputs that
are being remade).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from caffe_compat.files import atomic_output
from caffe_compat.errors import CaffeCompatError, CaffeFormatError


# ---------------------------------------------------------------- the small real labelled set

# scikit-image's bundled photographs (public domain / CC0, shipped inside the wheel: no download)
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "brick", "grass", "gravel")
PHOTO_SET_VERSION = 2


def build_photo_set(out: str, *, crops_per_photo: int = 40, size: int = 96, val_fraction: float = 0.25,
                    photos: Sequence[str] = PHOTOS, seed: int = 0) -> Dict[str, str]:
    """Random crops of scikit-image photos, labelled by source photo, in ``out`` (cached).

    Each crop is a random square covering 15-50% of the photo's shorter
    side, with a random contrast (x0.6-1.4) and brightness (-40..40) change so
    that mean colour alone does not name the photo, resized to ``size`` and
    saved as PNG (BGR, 3 channels).  Writes
    ``all.txt``, ``train.txt``, ``val.txt`` (``path label`` lists, paths
    relative to ``out``), ``classes.txt`` and ``photo_set.json``; a second
    call with the same parameters returns at once.
    """
    import cv2
    import skimage.data

    params = {"version": PHOTO_SET_VERSION, "crops_per_photo": crops_per_photo, "size": size,
              "val_fraction": val_fraction, "photos": list(photos), "seed": seed}
    paths = {k: os.path.join(out, f"{k}.txt") for k in ("all", "train", "val", "classes")}
    stamp = os.path.join(out, "photo_set.json")
    if os.path.isfile(stamp) and all(os.path.isfile(p) for p in paths.values()):
        with open(stamp, encoding="utf-8") as f:
            if json.load(f) == params:
                return paths
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    rows, split = [], []
    for label, name in enumerate(photos):
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.repeat(img[:, :, None], 3, axis=2)
        img = np.ascontiguousarray(img[:, :, 2::-1])   # RGB(A) -> BGR, as cv2 files hold it
        if img.dtype != np.uint8:
            img = (255 * (img.astype(np.float64) / max(float(img.max()), 1e-12))).astype(np.uint8)
        h, w = img.shape[:2]
        n_val = int(round(crops_per_photo * val_fraction))
        for i in range(crops_per_photo):
            s = int(rng.uniform(0.15, 0.5) * min(h, w))
            y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
            crop = cv2.resize(img[y:y + s, x:x + s], (size, size), interpolation=cv2.INTER_AREA)
            crop = np.clip(crop * rng.uniform(0.6, 1.4) + rng.uniform(-40, 40), 0, 255).astype(np.uint8)
            rel = os.path.join("images", f"{name}_{i:03d}.png")
            ok, buf = cv2.imencode(".png", crop)
            with atomic_output(os.path.join(out, rel)) as f:
                f.write(buf.tobytes())
            rows.append((rel, label))
            split.append("val" if i < n_val else "train")
    from .labels import write_list
    write_list(paths["all"], [r for r, _ in rows], [l for _, l in rows])
    for part in ("train", "val"):
        sel = [r for r, s in zip(rows, split) if s == part]
        write_list(paths[part], [r for r, _ in sel], [l for _, l in sel])
    with atomic_output(paths["classes"]) as f:
        f.write("".join(f"{n} {i}\n" for i, n in enumerate(photos)).encode())
    with atomic_output(stamp) as f:
        f.write(json.dumps(params).encode())
    return paths


# ---------------------------------------------------------------- config


def default_cache_dir() -> str:
    """``$CAFFEKT_CACHE`` or ``~/.cache/caffekt``: where the photo set is built once and reused."""
    return os.environ.get("CAFFEKT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "caffekt")


def load_config(path: str, overrides: Optional[Dict[str, str]] = None, workdir: Optional[str] = None) -> dict:
    """Read a config and substitute ``{var}``s; ``workdir`` replaces the config's. Errors name the file and stage."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except ValueError as e:
        raise CaffeFormatError(f"pipeline config is not JSON ({e})", path) from None
    if not isinstance(cfg, dict) or not isinstance(cfg.get("stages"), list) or not cfg["stages"]:
        raise CaffeFormatError("pipeline config needs a non-empty 'stages' list", path)
    cdir = os.path.dirname(os.path.abspath(path))
    import caffekt.prototxt as shipped
    base = {"config_dir": cdir, "prototxt_dir": os.path.dirname(os.path.abspath(shipped.__file__)),
            "cache_dir": default_cache_dir()}
    vars_ = dict(base)
    for k, v in {**{k: str(v) for k, v in cfg.get("vars", {}).items()}, **(overrides or {})}.items():
        try:   # a var may use the built-in ones ({prototxt_dir}, {cache_dir}, {config_dir})
            vars_[k] = v.format(**base)
        except (KeyError, IndexError, ValueError):
            raise CaffeFormatError(f"var {k!r} = {v!r} may only use {', '.join(sorted(base))}", path) from None
    work = workdir or str(cfg.get("workdir", "kt_work")).format(**vars_)
    vars_["workdir"] = work if os.path.isabs(work) else os.path.abspath(work)

    def sub(v, where):
        if isinstance(v, str):
            try:
                return v.format(**vars_)
            except KeyError as e:
                raise CaffeFormatError(f"{where}: unknown variable {{{e.args[0]}}} (known: "
                                       f"{', '.join(sorted(vars_))})", path) from None
        if isinstance(v, list):
            return [sub(x, where) for x in v]
        if isinstance(v, dict):
            return {k: sub(x, where) for k, x in v.items()}
        return v
    names = set()
    for i, st in enumerate(cfg["stages"]):
        if not isinstance(st, dict) or "kind" not in st or "name" not in st:
            raise CaffeFormatError(f"stage {i} needs 'name' and 'kind'", path)
        if st["kind"] not in STAGES:
            raise CaffeFormatError(f"stage {st['name']!r}: unknown kind {st['kind']!r} "
                                   f"(known: {', '.join(STAGES)})", path)
        if st["name"] in names:
            raise CaffeFormatError(f"stage name {st['name']!r} used twice", path)
        names.add(st["name"])
    cfg["stages"] = [sub(st, f"stage {st['name']!r}") for st in cfg["stages"]]
    cfg["workdir"] = vars_["workdir"]
    cfg["path"] = path
    return cfg


def _need(st: dict, *keys: str):
    missing = [k for k in keys if k not in st]
    if missing:
        raise CaffeCompatError(f"stage {st['name']!r} ({st['kind']}): missing parameter(s) {missing}")
    return [st[k] for k in keys]


# ---------------------------------------------------------------- stages: (outputs, run)


def _photos_outputs(st):
    return [os.path.join(st["out"], f) for f in ("all.txt", "train.txt", "val.txt", "photo_set.json")]


def _photos(st):
    build_photo_set(st["out"], crops_per_photo=st.get("crops_per_photo", 40), size=st.get("size", 96),
                    val_fraction=st.get("val_fraction", 0.25), seed=st.get("seed", 0))


def _jigsaw_outputs(st):
    return [os.path.join(st["out"], "teacher.caffemodel")]


def _jigsaw(st):
    from . import jigsaw
    from .images import open_images
    from .permutations import generate_permutations
    images, out = _need(st, "images", "out")
    perms = st.get("perms", 100)
    if isinstance(perms, int):
        perms = generate_permutations(perms, seed=st.get("seed", 0))
    kw = {k: st[k] for k in ("arch", "max_iter", "batch_size", "base_lr", "snapshot", "seed", "solver",
                             "width", "fc6", "fc7", "workers", "init", "dropout") if k in st}
    if "solver_type" in st and "solver" not in st:
        kw["solver"] = _teacher_solver(st, out)
    res = jigsaw.train(open_images(images=images), perms=perms, out=out, resume=_latest_state(out, "jigsaw"),
                       progress=st.get("progress", True), **kw)
    model = res.snapshot[0] if res.snapshot else _latest_model(out, "jigsaw")
    if not model or not os.path.isfile(model):
        raise CaffeCompatError(f"stage {st['name']!r}: Jigsaw++ training wrote no snapshot in {out}")
    shutil.copyfile(model, os.path.join(out, "teacher.caffemodel.tmp"))
    os.replace(os.path.join(out, "teacher.caffemodel.tmp"), os.path.join(out, "teacher.caffemodel"))


def _teacher_solver(st: dict, out: str) -> str:
    """A constant-rate solver prototxt of type ``st["solver_type"]`` (e.g. ``"Adam"``) in ``out``.

    The small-scale teacher recipe: the authors' SGD 0.01 with Gaussian fillers
    stays at chance in a net this narrow, msra fillers + Adam 3e-4 learn.
    """
    kind = st["solver_type"]
    if kind not in ("SGD", "Adam", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta"):
        raise CaffeCompatError(f"stage {st['name']!r}: solver_type must be a Caffe solver type, got {kind!r}")
    lr = st.get("base_lr", 3e-4 if kind == "Adam" else 0.01)
    lines = [f'type: "{kind}"', f"base_lr: {lr!r}", f"momentum: {st.get('momentum', 0.9)!r}",
             'lr_policy: "fixed"', f"max_iter: {int(st.get('max_iter', 1000))}",
             f"snapshot: {int(st.get('snapshot', 0))}", f'snapshot_prefix: "{os.path.join(out, "jigsaw")}"']
    if kind == "Adam":
        lines.insert(3, f"momentum2: {st.get('momentum2', 0.999)!r}")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "solver.prototxt")
    with atomic_output(path) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def constant_solver_file(path: str, solver_type: str, base_lr: float, max_iter: int, *, snapshot: int = 0,
                         random_seed: int = -1, weight_decay: float = 0.0005, momentum: float = 0.9,
                         momentum2: float = 0.999, display: int = 10) -> str:
    """A constant-rate solver prototxt (no net: ``train-cc``'s ``solver`` key, whose net and prefix CC sets).

    The small-scale student recipe: Adam at a constant rate trains the
    full-width stride-4 AlexNet (Gaussian fillers) in a few hundred
    iterations where the ImageNet recipe's SGD 0.01 stays at chance.
    """
    if solver_type not in ("SGD", "Adam", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta"):
        raise CaffeCompatError(f"{path}: solver type must be a Caffe solver type, got {solver_type!r}")
    lines = [f'type: "{solver_type}"', f"base_lr: {float(base_lr)!r}", 'lr_policy: "fixed"',
             f"momentum: {float(momentum)!r}", f"weight_decay: {float(weight_decay)!r}",
             f"max_iter: {int(max_iter)}", f"snapshot: {int(snapshot)}", f"display: {int(display)}",
             f"random_seed: {int(random_seed)}"]
    if solver_type == "Adam":
        lines.insert(4, f"momentum2: {float(momentum2)!r}")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_output(path) as f:
        f.write(("\n".join(lines) + "\n").encode("utf-8"))
    return path


def _latest_state(out: str, stem: str) -> Optional[str]:
    from caffe_compat.train import latest_snapshot
    return latest_snapshot(os.path.join(out, stem)) if os.path.isdir(out) else None


def _latest_model(out: str, stem: str) -> Optional[str]:
    st = _latest_state(out, stem)
    return st[:-len(".solverstate")] + ".caffemodel" if st else None


def _image_paths(src: str) -> List[str]:
    from .images import image_paths
    return image_paths(src)


def _features_outputs(st):
    return [st["out"], st["out"] + ".json"]


def _features(st):
    from .features import IMAGENET_MEAN_BGR, extract
    images, out, blob = _need(st, "images", "out", "blob")
    extract(_image_paths(images), out, model=st.get("model"), checkpoint=st.get("checkpoint"), blob=blob,
            preprocess=st.get("preprocess", "caffe"), mean=st.get("mean", IMAGENET_MEAN_BGR),
            input_size=st.get("input_size"), resize=st.get("resize"), scale=st.get("scale", 1.0),
            pool_grid=st.get("pool_grid"), l2=st.get("l2", False), pca=st.get("pca"),
            whiten=st.get("whiten", False), pca_sample=st.get("pca_sample", 100000),
            batch_size=st.get("batch_size", 64), progress=st.get("progress", True))


def _hog(st):
    from .hog import HOG_DEFAULTS, extract_hog
    images, out = _need(st, "images", "out")
    extract_hog(_image_paths(images), out, progress=st.get("progress", True),
                **{k: st.get(k, v) for k, v in HOG_DEFAULTS.items()})


def _cluster_outputs(st):
    stem = os.path.splitext(st["out"])[0]
    return [st["out"], stem + ".bin", stem + ".json"]


def _cluster(st):
    from .cluster import cluster_file
    features, k, out = _need(st, "features", "k", "out")
    s = cluster_file(features, int(k), out, seed=st.get("seed", 0), max_train=st.get("max_train"),
                     niter=st.get("niter", 20), truth=st.get("truth"), montage=st.get("montage"),
                     hist_png=st.get("hist_png"))
    print(f"[{st['name']}] k={k}: objective {s['objective']:.4g}, empty {s['empty_clusters']}"
          + (f", NMI {s['nmi']:.3f}, purity {s['purity']:.3f}" if "nmi" in s else ""))


def _cc_outputs(st):
    return [os.path.join(st["out"], "final.caffemodel"), os.path.join(st["out"], "deploy.prototxt")]


def _cc(st):
    from .cc import CCRecipe, latest_model, train_cc
    labels, out = _need(st, "labels", "out")
    recipe = CCRecipe().replace(**{k: (tuple(v) if k == "mean" else v) for k, v in st.get("recipe", {}).items()})
    train_cc(labels, out, images=_image_paths(st["images"]) if st.get("images") else None,
             arch=st.get("arch", "alexnet"), solver=st.get("solver"), recipe=recipe,
             progress=st.get("progress", True))
    model = latest_model(out)
    if model is None:
        raise CaffeCompatError(f"stage {st['name']!r}: CC training wrote no snapshot in {out} "
                               "(set recipe.snapshot or let max_iter finish)")
    shutil.copyfile(model, os.path.join(out, "final.caffemodel.tmp"))
    os.replace(os.path.join(out, "final.caffemodel.tmp"), os.path.join(out, "final.caffemodel"))


def _probe_outputs(st):
    return [os.path.join(st["out"], f) for f in ("probes.md", "probes.csv", "probes.png")]


def _probe(st):
    from .features import parse_model
    from .probes import ProbeSettings, run_probes, table_markdown
    models, train, val, out = _need(st, "models", "train", "val", "out")
    if isinstance(train, str) and not train.endswith(".txt"):
        raise CaffeCompatError(f"stage {st['name']!r}: 'train' must be a 'path label' list (.txt)")
    parsed = {name: parse_model(spec) for name, spec in models.items()}
    settings = ProbeSettings(**st.get("settings", {}))
    table = run_probes(parsed, train, val, out, layers=st.get("layers", ("conv1", "conv2", "conv3", "conv4",
                                                                        "conv5")),
                       settings=settings, random_baseline=st.get("random_baseline", "random init"),
                       input_size=st.get("input_size"), progress=st.get("progress", True))
    print(table_markdown(table))


def _fashion_outputs(st):
    return [os.path.join(st["out"], f) for f in ("unlabelled.txt", "train.txt", "test.txt", "fashion_mnist.json")]


def _fashion(st):
    from .fashion import build_fashion_mnist
    (out,) = _need(st, "out")
    build_fashion_mnist(out, train=st.get("train", 60000), test=st.get("test", 10000), size=st.get("size", 64),
                        seed=st.get("seed", 0), lmdb=st.get("lmdb", False), src=st.get("source"),
                        progress=st.get("progress", False))


STAGES: Dict[str, tuple] = {
    "photos": (_photos_outputs, _photos),
    "fashion-mnist": (_fashion_outputs, _fashion),
    "jigsaw": (_jigsaw_outputs, _jigsaw),
    "features": (_features_outputs, _features),
    "hog": (_features_outputs, _hog),
    "cluster": (_cluster_outputs, _cluster),
    "train-cc": (_cc_outputs, _cc),
    "probe": (_probe_outputs, _probe),
}


def stage_outputs(st: dict) -> List[str]:
    return STAGES[st["kind"]][0](st)


def _clear(st: dict, workdir: str) -> None:
    """Remove a stage's outputs (and a training stage's snapshots) before it is run again."""
    paths = list(stage_outputs(st))
    if st["kind"] in ("jigsaw", "train-cc"):
        paths.append(st["out"])
    if st["kind"] in ("features", "hog"):
        paths += [st["out"] + ".raw.npy", st["out"] + ".raw.npy.json", st["out"] + ".pca.npz"]
    for p in paths:
        ap = os.path.abspath(p)
        if st["kind"] != "photos" and os.path.isdir(ap):
            if not ap.startswith(os.path.abspath(workdir) + os.sep):
                raise CaffeCompatError(f"stage {st['name']!r}: will not delete {ap}, outside the workdir {workdir}")
            shutil.rmtree(ap)
        elif os.path.isfile(ap):
            os.remove(ap)


def plan(cfg: dict) -> int:
    """Index of the first stage whose outputs are not all there (``len(stages)`` when all are done)."""
    for i, st in enumerate(cfg["stages"]):
        if not all(os.path.exists(p) for p in stage_outputs(st)):
            return i
    return len(cfg["stages"])


def run(cfg: dict, *, only_plan: bool = False, log: Callable[[str], None] = print,
        stop_after: Optional[str] = None) -> List[str]:
    """Run the stages from the first missing one; returns the names of the stages run."""
    if not only_plan:
        os.makedirs(cfg["workdir"], exist_ok=True)
    first = plan(cfg)
    stages = cfg["stages"]
    for st in stages[:first]:
        log(f"[{st['name']}] done (outputs present)")
    ran = []
    for i, st in enumerate(stages[first:], first):
        if only_plan:
            log(f"[{st['name']}] would run ({st['kind']})")
            ran.append(st["name"])
            continue
        if i > first:
            _clear(st, cfg["workdir"])   # made from inputs that were just remade
        elif st["kind"] not in ("jigsaw", "train-cc", "features", "hog", "photos"):
            _clear(st, cfg["workdir"])   # resumable kinds keep their partial work
        elif st["kind"] in ("features", "hog") and not os.path.exists(st["out"]):
            _clear(st, cfg["workdir"])   # a manifest without its data file cannot be resumed
        log(f"[{st['name']}] running ({st['kind']})")
        t0 = time.perf_counter()
        STAGES[st["kind"]][1](st)
        log(f"[{st['name']}] finished in {time.perf_counter() - t0:.1f}s")
        ran.append(st["name"])
        if stop_after == st["name"]:
            break
    return ran


def shipped_configs() -> Dict[str, str]:
    """name -> path of the configs shipped in ``caffekt/kt/configs``."""
    d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    return {os.path.splitext(f)[0]: os.path.join(d, f) for f in sorted(os.listdir(d)) if f.endswith(".json")}


def resolve_config(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    shipped = shipped_configs()
    if name_or_path in shipped:
        return shipped[name_or_path]
    raise CaffeFormatError(f"no such config file, nor a shipped config (shipped: {', '.join(shipped)})",
                           name_or_path)
