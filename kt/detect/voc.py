"""A PASCAL VOC-format folder: ImageSets/Main/<split>.txt, JPEGImages/<id>.jpg, Annotations/<id>.xml.

Mirrors lib/datasets/pascal_voc.py of the fork: the image set lists ids
(:66-78), each image is ``JPEGImages/<id>.jpg`` (:56-64), each annotation
XML's objects give ``name`` and ``bndbox`` with 1 subtracted from every
coordinate (:191-229); all objects are kept for training, ``difficult`` ones
too (the fork reads no ``difficult`` flag; it is kept here for evaluation).
Flipped copies (imdb.py:94-110) are made in ``roidb``.

``root`` may be the VOC year folder (``VOCdevkit/VOC2007``) or any folder
laid out the same way.  Unlike the fork's asserts, a missing split, image or
annotation, an unknown class or an empty box is a ``DatasetError`` naming
the file; a box reaching outside the image is clipped with a warning.
"""
from __future__ import annotations

import os
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from caffe_compat.errors import CaffeFormatError

# pascal_voc.py:28-33 (index 0 is the background)
VOC_CLASSES = ("__background__", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


class DatasetError(CaffeFormatError):
    """A VOC-format folder lacks a file the split names, or a file is malformed."""


@dataclass
class Record:
    """One image: its id, path, size and ground-truth objects (0-based inclusive boxes)."""
    index: str
    image: str
    width: int
    height: int
    boxes: np.ndarray                    # (G, 4) float32
    classes: np.ndarray                  # (G,) int32, 1..K-1
    difficult: np.ndarray                # (G,) bool
    names: List[str] = field(default_factory=list)


def _text(node, tag, path, where):
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DatasetError(f"{where}: <{tag}> missing", path)
    return child.text.strip()


def image_size(path: str):
    """(width, height) from the image header (PIL reads no pixels); imdb.py:96 does the same."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError) as e:
        raise DatasetError(f"cannot read the image: {e}", path) from None


def parse_annotation(path: str, class_to_ind: Dict[str, int], image: str, width: Optional[int] = None,
                     height: Optional[int] = None) -> Record:
    """pascal_voc.py:191-229 plus ``difficult`` (voc_eval's parse_rec) and checks naming ``path``."""
    if not os.path.isfile(path):
        raise DatasetError("annotation file not found", path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise DatasetError(f"not a well-formed XML annotation: {e}", path) from None
    if width is None or height is None:
        width, height = image_size(image)
    boxes, classes, diff, names = [], [], [], []
    for i, obj in enumerate(root.findall("object")):
        where = f"object {i}"
        name = _text(obj, "name", path, where).lower()
        if name not in class_to_ind or class_to_ind[name] == 0:
            raise DatasetError(f"{where}: class {name!r} is not one of the net's classes "
                               f"({', '.join(list(class_to_ind)[1:])})", path)
        bb = obj.find("bndbox")
        if bb is None:
            raise DatasetError(f"{where}: <bndbox> missing", path)
        try:
            x1, y1, x2, y2 = (float(_text(bb, t, path, where)) - 1 for t in ("xmin", "ymin", "xmax", "ymax"))
        except ValueError:
            raise DatasetError(f"{where}: a bndbox coordinate is not a number", path) from None
        if x2 < x1 or y2 < y1:
            raise DatasetError(f"{where}: empty box xmin..xmax {x1 + 1:g}..{x2 + 1:g}, "
                               f"ymin..ymax {y1 + 1:g}..{y2 + 1:g}", path)
        cx1, cy1 = max(x1, 0.0), max(y1, 0.0)
        cx2, cy2 = min(x2, width - 1.0), min(y2, height - 1.0)
        if (cx1, cy1, cx2, cy2) != (x1, y1, x2, y2):
            if cx2 < cx1 or cy2 < cy1:
                raise DatasetError(f"{where}: box lies outside the {width}x{height} image {image}", path)
            warnings.warn(f"{path}: {where}: box {[x1 + 1, y1 + 1, x2 + 1, y2 + 1]} reaches outside the "
                          f"{width}x{height} image {image}; clipped")
        d = obj.find("difficult")
        diff.append(bool(int(d.text)) if d is not None and d.text and d.text.strip() else False)
        boxes.append((cx1, cy1, cx2, cy2))
        classes.append(class_to_ind[name])
        names.append(name)
    return Record(os.path.splitext(os.path.basename(image))[0], image, int(width), int(height),
                  np.asarray(boxes, np.float32).reshape(-1, 4), np.asarray(classes, np.int32),
                  np.asarray(diff, bool), names)


class VOCDataset:
    """The images and ground truth of one split; ``classes[0]`` is ``__background__``."""

    def __init__(self, root: str, split: str, classes: Sequence[str] = VOC_CLASSES[1:]):
        self.root, self.split = root, split
        self.classes = ("__background__",) + tuple(c.lower() for c in classes if c != "__background__")
        self.class_to_ind = {c: i for i, c in enumerate(self.classes)}
        if len(self.class_to_ind) != len(self.classes):
            raise DatasetError(f"class names repeat: {list(self.classes[1:])}", root)
        if not os.path.isdir(root):
            raise DatasetError("dataset folder not found", root)
        set_file = os.path.join(root, "ImageSets", "Main", split + ".txt")
        if not os.path.isfile(set_file):
            raise DatasetError(f"image set {split!r} not found", set_file)
        with open(set_file, encoding="utf-8") as f:
            self.index = [ln.split()[0] for ln in f if ln.strip()]
        if not self.index:
            raise DatasetError(f"image set {split!r} is empty", set_file)
        for i in self.index:
            p = self.image_path(i)
            if not os.path.isfile(p):
                raise DatasetError(f"image {i!r} of {set_file} not found", p)
        self._records: Optional[List[Record]] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def image_path(self, index: str) -> str:
        return os.path.join(self.root, "JPEGImages", index + ".jpg")

    def annotation_path(self, index: str) -> str:
        return os.path.join(self.root, "Annotations", index + ".xml")

    def records(self) -> List[Record]:
        """Every image's ground truth (read once)."""
        if self._records is None:
            self._records = [parse_annotation(self.annotation_path(i), self.class_to_ind, self.image_path(i))
                             for i in self.index]
            present = set(int(c) for r in self._records for c in r.classes)
            absent = [c for k, c in enumerate(self.classes) if k and k not in present]
            if absent:
                warnings.warn(f"{self.root} ({self.split}): no object of class(es) {', '.join(absent)}; "
                              f"the net's outputs for them get no positive example")
        return self._records
