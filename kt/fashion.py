"""Fashion-MNIST in the formats the pipeline reads: upsampled PNGs, ``path label`` lists, an LMDB of stored images.

Fashion-MNIST (Xiao et al. 2017: 60,000 train / 10,000 test 28x28 gray
images of 10 clothing classes) ships in Debian as ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``).
``build_fashion_mnist`` reads the IDX files with ``caffe_compat.data.idx``
and writes, under ``out`` (cached: a second call with the same parameters
returns at once):

* ``images/{train,test}/NNNNN.png``: each image upsampled to ``size`` x
  ``size`` (bilinear; one gray channel, which Caffe's colour read turns into
  3 equal BGR channels), so the stride-2 Jigsaw tower and the stride-4
  AlexNet apply; ``NNNNN`` is the index in the original file;
* ``unlabelled.txt``: the train subset, paths only: what the pretext task,
  the features, the clustering and the student see (no label anywhere);
* ``train.txt`` / ``test.txt``: ``path label`` lists, for the linear probes
  and the cluster metrics only; ``test.txt`` is all 10,000 test images
  unless ``test`` says fewer;
* ``pretext_lmdb/`` (``lmdb=True``): the train subset as Caffe Datums,
  255x255x3 raw uint8 CHW (the fork's stored image: ``kt.puzzle.stored_image``
  of the upsampled image), no label field: what the authors' Jigsaw++ Data
  layers read;
* ``classes.txt``, ``fashion_mnist.json`` (the parameters and counts).

The train subset is ``train`` images drawn uniformly without labels (seeded).
"""
from __future__ import annotations

import json
import os
from typing import Dict, Optional

import numpy as np

from caffe_compat.files import atomic_output
from caffe_compat.errors import CaffeCompatError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
VERSION = 1


def source_dir() -> str:
    """``$CAFFEKT_FASHION_MNIST`` or the Debian package's folder."""
    return os.environ.get("CAFFEKT_FASHION_MNIST") or DEFAULT_DIR


def available(src: Optional[str] = None) -> bool:
    """Whether the four IDX files are there."""
    src = src or source_dir()
    return all(os.path.isfile(os.path.join(src, f)) for pair in FILES.values() for f in pair)


def load_split(split: str, src: Optional[str] = None):
    """(images (N, 28, 28) uint8, labels (N,) int64) of ``train`` or ``test``."""
    from caffe_compat.data.idx import read_idx_pair
    src = src or source_dir()
    if split not in FILES:
        raise CaffeCompatError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    if not available(src):
        raise CaffeCompatError(f"Fashion-MNIST is not installed in {src} (apt-get install dataset-fashion-mnist, "
                               "or set CAFFEKT_FASHION_MNIST to a folder holding the four .gz files)")
    img, lab = FILES[split]
    return read_idx_pair(os.path.join(src, img), os.path.join(src, lab))


def _upsample(img: np.ndarray, size: int) -> np.ndarray:
    import cv2
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_LINEAR)


def _write_png(path: str, img: np.ndarray) -> None:
    import cv2
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise CaffeCompatError(f"{path}: OpenCV could not encode the PNG")
    with atomic_output(path) as f:
        f.write(buf.tobytes())


def _pretext_lmdb(path: str, rels, images: np.ndarray, size: int) -> int:
    """Raw 255x255x3 Datums (no label) of ``images``, keys ``%08d_<rel path>`` as convert_imageset names them."""
    import shutil

    from caffe_compat.binary import encode_datum
    from caffe_compat.data.sources import write_lmdb_records

    from .puzzle import stored_image

    def records():
        for i, (rel, img) in enumerate(zip(rels, images)):
            up = _upsample(img, size)
            stored = stored_image(np.repeat(up[:, :, None], 3, axis=2))
            yield f"{i:08d}_{rel}", encode_datum(np.ascontiguousarray(stored.transpose(2, 0, 1)))

    if os.path.isdir(path):
        shutil.rmtree(path)   # a stale one (different parameters): Caffe's db::NEW refuses to overwrite
    return write_lmdb_records(path, records(), map_size=1 << 28)


def build_fashion_mnist(out: str, *, train: int = 60000, test: int = 10000, size: int = 64, seed: int = 0,
                        lmdb: bool = False, src: Optional[str] = None, progress: bool = False) -> Dict[str, str]:
    """Write the Fashion-MNIST subset into ``out`` (see the module doc); returns the list files' paths."""
    src = src or source_dir()
    if not 1 <= int(train) <= 60000 or not 1 <= int(test) <= 10000:
        raise CaffeCompatError(f"Fashion-MNIST subset sizes must be 1..60000 train and 1..10000 test, "
                               f"got {train} and {test}")
    if int(size) < 28:
        raise CaffeCompatError(f"upsample size must be >= 28 (the images are 28x28), got {size}")
    params = {"version": VERSION, "train": int(train), "test": int(test), "size": int(size), "seed": int(seed),
              "lmdb": bool(lmdb)}
    paths = {k: os.path.join(out, f"{k}.txt") for k in ("unlabelled", "train", "test", "classes")}
    if lmdb:
        paths["lmdb"] = os.path.join(out, "pretext_lmdb")
    stamp = os.path.join(out, "fashion_mnist.json")
    if os.path.isfile(stamp) and all(os.path.exists(p) for p in paths.values()):
        with open(stamp, encoding="utf-8") as f:
            if {k: v for k, v in json.load(f).items() if k in params} == params:
                return paths
    from .labels import write_list
    counts = {}
    for split, n in (("train", int(train)), ("test", int(test))):
        x, y = load_split(split, src)
        idx = np.sort(np.random.default_rng(seed).permutation(len(x))[:n]) if split == "train" else np.arange(n)
        os.makedirs(os.path.join(out, "images", split), exist_ok=True)
        rels = [os.path.join("images", split, f"{i:05d}.png") for i in idx]
        it = zip(rels, idx)
        if progress:
            from tqdm import tqdm
            it = tqdm(it, total=len(rels), desc=f"Fashion-MNIST {split} -> {size}x{size} PNG", leave=False)
        for rel, i in it:
            _write_png(os.path.join(out, rel), _upsample(x[i], int(size)))
        write_list(paths[split], rels, y[idx])
        counts[split] = np.bincount(y[idx], minlength=len(CLASSES)).tolist()
        if split == "train":
            with atomic_output(paths["unlabelled"]) as f:
                f.write("".join(f"{r}\n" for r in rels).encode())
            if lmdb:
                _pretext_lmdb(paths["lmdb"], rels, x[idx], int(size))
    with atomic_output(paths["classes"]) as f:
        f.write("".join(f"{n} {i}\n" for i, n in enumerate(CLASSES)).encode())
    with atomic_output(stamp) as f:
        f.write(json.dumps({**params, "source": os.path.abspath(src), "class_counts": counts},
                           indent=1).encode())
    return paths


__all__ = ["build_fashion_mnist", "load_split", "available", "source_dir", "CLASSES", "DEFAULT_DIR"]
