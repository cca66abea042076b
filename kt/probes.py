"""Linear probes on frozen conv1 ... conv5, as the FAIR / VISSL benchmark does it for AlexNet.

Each layer's (post-ReLU) blob is average-pooled to about 9k dims, flattened,
batch-normalised without affine parameters and fed to its own linear
classifier; the net stays frozen, all heads train together with SGD
(momentum 0.9, weight decay 5e-4).  Pooling (kernel/stride) per layer:

* stride-4 AlexNet at 227 (conv1 55, conv2 27, conv3-5 13): computed so the
  grids are 10, 6, 5, 5, 6 -> 96x10x10, 256x6x6, 384x5x5, 384x5x5, 256x6x6
  (kernel/stride 10/5, 7/4, 5/2, 5/2, 3/2);
* stride-2 tower at 227 (conv1 109, conv2 54, conv3-5 27): the FAIR pairs
  28/9, 24/6, 14/3, 14/3, 16/2 (same grids);
* other sizes: the stride ``spatial // grid`` and the kernel that makes the
  grid exact (a blob smaller than its grid is kept whole).

Features of the frozen layers are computed once and kept in memory when they
fit ``cache_bytes``, otherwise recomputed every epoch.  Results: a table
(markdown and CSV) and a bar chart; ``run_probes`` probes a random-init net of
the same prototxt too, so each number has its baseline beside it.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from caffe_compat.files import atomic_output
from caffe_compat.errors import CaffeCompatError

LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5")
GRIDS = {"conv1": 10, "conv2": 6, "conv3": 5, "conv4": 5, "conv5": 6}
# FAIR's (kernel, stride) for the stride-2 Jigsaw AlexNet at 227 (notes, "linear classification")
STRIDE2_227 = {"conv1": (109, 28, 9), "conv2": (54, 24, 6), "conv3": (27, 14, 3), "conv4": (27, 14, 3),
               "conv5": (27, 16, 2)}


def pool_params(layer: str, spatial: int, stride2: bool = False) -> Tuple[int, int]:
    """(kernel, stride) of the average pooling that brings ``layer``'s ``spatial`` map to its grid."""
    if stride2 and layer in STRIDE2_227 and STRIDE2_227[layer][0] == spatial:
        return STRIDE2_227[layer][1:]
    g = GRIDS.get(layer, 6)
    if spatial <= g:
        return 1, 1
    s = spatial // g
    return spatial - (g - 1) * s, s


@dataclass
class Head:
    layer: str
    kernel: int
    stride: int
    dim: int


class ProbeHeads(nn.Module):
    """avgpool -> flatten -> BatchNorm1d(affine=False) -> Linear, one per layer."""

    def __init__(self, heads: Sequence[Head], classes: int):
        super().__init__()
        self.specs = list(heads)
        self.bn = nn.ModuleDict({h.layer: nn.BatchNorm1d(h.dim, affine=False) for h in heads})
        self.fc = nn.ModuleDict({h.layer: nn.Linear(h.dim, classes) for h in heads})
        for fc in self.fc.values():
            nn.init.normal_(fc.weight, std=0.01)
            nn.init.zeros_(fc.bias)

    def forward(self, feats: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        return {h.layer: self.fc[h.layer](self.bn[h.layer](feats[h.layer])) for h in self.specs}


def pooled(blobs: Mapping[str, torch.Tensor], heads: Sequence[Head]) -> Dict[str, torch.Tensor]:
    import torch.nn.functional as F
    out = {}
    for h in heads:
        b = blobs[h.layer].float()
        if b.dim() == 4:
            b = F.avg_pool2d(b, h.kernel, h.stride)
        out[h.layer] = b.reshape(b.shape[0], -1)
    return out


def plan_heads(net, layers: Sequence[str] = LAYERS) -> List[Head]:
    """Pooling of each probed layer from the net's blob shapes; conv1's stride decides the FAIR table."""
    missing = [l for l in layers if l not in net.blob_shapes]
    if missing:
        raise CaffeCompatError(f"net has no blob {missing[0]!r} to probe; blobs: {', '.join(net.blob_shapes)}")
    try:   # the FAIR table is for the stride-2 tower; any other net gets computed pooling
        st = getattr(net.layer("conv1"), "stride", None)
        stride2 = st is not None and tuple(np.atleast_1d(st))[0] == 2
    except KeyError:
        stride2 = False
    heads = []
    for l in layers:
        shp = net.blob_shapes[l]
        if len(shp) == 4:
            k, s = pool_params(l, int(shp[2]), stride2)
            grid = (int(shp[2]) - k) // s + 1
            heads.append(Head(l, k, s, int(shp[1]) * grid * grid))
        else:
            heads.append(Head(l, 1, 1, int(np.prod(shp[1:]))))
    return heads


@dataclass
class ProbeSettings:
    epochs: int = 30
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    lr_steps: Tuple[float, ...] = (0.5, 0.75)   # x0.1 at these fractions of training, as FAIR's steps
    seed: int = 0


def train_heads(train: Mapping[str, np.ndarray], y_train: np.ndarray, val: Mapping[str, np.ndarray],
                y_val: np.ndarray, heads: Sequence[Head], classes: int,
                settings: ProbeSettings = ProbeSettings()) -> Dict[str, float]:
    """SGD on the heads over pooled features held in memory; top-1 on ``val`` per layer."""
    g = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    model = ProbeHeads(heads, classes)
    opt = torch.optim.SGD(model.parameters(), lr=settings.lr, momentum=settings.momentum,
                          weight_decay=settings.weight_decay)
    n = len(y_train)
    steps_per_epoch = max(1, (n + settings.batch_size - 1) // settings.batch_size)
    total = settings.epochs * steps_per_epoch
    milestones = [int(f * total) for f in settings.lr_steps]
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones, 0.1)
    xt = {k: torch.as_tensor(v) for k, v in train.items()}
    yt = torch.as_tensor(y_train, dtype=torch.int64)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(settings.epochs):
        model.train()
        perm = torch.randperm(n, generator=g)
        for s in range(0, n, settings.batch_size):
            idx = perm[s:s + settings.batch_size]
            if len(idx) < 2:   # BatchNorm needs two rows to normalise
                continue
            out = model({k: v[idx] for k, v in xt.items()})
            loss = sum(loss_fn(o, yt[idx]) for o in out.values())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        out = model({k: torch.as_tensor(v) for k, v in val.items()})
    yv = torch.as_tensor(y_val, dtype=torch.int64)
    return {k: float((o.argmax(1) == yv).float().mean()) for k, o in out.items()}


@torch.no_grad()
def frozen_features(net, images: Sequence[str], heads: Sequence[Head], preprocess, batch_size: int = 32,
                    progress: bool = False, desc: str = "probe features") -> Dict[str, np.ndarray]:
    """Pooled blobs of every image, net in TEST phase."""
    name = net.inputs[0]
    chunks: Dict[str, List[np.ndarray]] = {h.layer: [] for h in heads}
    it = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm
        it = tqdm(it, desc=desc, leave=False)
    for s in it:
        x = torch.from_numpy(np.stack([preprocess(p) for p in images[s:s + batch_size]]))
        feats = pooled(net.forward_all(**{name: x}), heads)
        for k, v in feats.items():
            chunks[k].append(v.numpy())
    return {k: np.concatenate(v) for k, v in chunks.items()}


def _labelled(list_file: str) -> Tuple[List[str], np.ndarray]:
    from .labels import read_list
    names, labels = read_list(list_file)
    base = os.path.dirname(os.path.abspath(list_file))
    return [n if os.path.isabs(n) else os.path.join(base, n) for n in names], labels


def probe_model(net, train_list: str, val_list: str, *, layers: Sequence[str] = LAYERS,
                settings: ProbeSettings = ProbeSettings(), mean=None, progress: bool = False,
                desc: str = "") -> Dict[str, float]:
    """Top-1 of a linear probe per layer of ``net`` (frozen), trained on ``train_list``, scored on ``val_list``."""
    from .features import IMAGENET_MEAN_BGR, Preprocess
    xtr, ytr = _labelled(train_list)
    xva, yva = _labelled(val_list)
    classes = int(max(ytr.max(), yva.max())) + 1
    if ytr.min() < 0 or yva.min() < 0:
        raise CaffeCompatError(f"{train_list}: probe labels must be >= 0")
    shp = net.blob_shapes[net.inputs[0]]
    prep = Preprocess("caffe", int(shp[2]), int(shp[3]), tuple(mean or IMAGENET_MEAN_BGR))
    heads = plan_heads(net, layers)
    ftr = frozen_features(net, xtr, heads, prep, progress=progress, desc=f"{desc} train")
    fva = frozen_features(net, xva, heads, prep, progress=progress, desc=f"{desc} val")
    return train_heads(ftr, ytr, fva, yva, heads, classes, settings)


def run_probes(models: Mapping[str, Tuple[str, Optional[str]]], train_list: str, val_list: str, out_dir: str, *,
               layers: Sequence[str] = LAYERS, settings: ProbeSettings = ProbeSettings(),
               random_baseline: Optional[str] = "random init", input_size: Optional[int] = None,
               progress: bool = True) -> Dict[str, Dict[str, float]]:
    """Probe every ``name -> (prototxt, weights)``; plus the first prototxt with random weights.

    Writes ``probes.md``, ``probes.csv`` and ``probes.png`` in ``out_dir``.
    """
    from .features import load_model
    from .montage import accuracy_bars_png
    if not models:
        raise CaffeCompatError("no models to probe")
    todo = dict(models)
    if random_baseline and random_baseline not in todo:
        first = next(iter(models.values()))[0]
        todo[random_baseline] = (first, None)
    table: Dict[str, Dict[str, float]] = {}
    for name, (proto, weights) in todo.items():
        torch.manual_seed(settings.seed)   # the random-init net's fillers
        net, _, _ = load_model(f"{proto}:{weights}" if weights else proto, input_size=input_size)
        table[name] = probe_model(net, train_list, val_list, layers=layers, settings=settings,
                                  progress=progress, desc=name)
    os.makedirs(out_dir, exist_ok=True)
    _, yva = _labelled(val_list)
    chance = float(np.bincount(yva).max() / len(yva))
    write_table(table, out_dir, chance)
    accuracy_bars_png(table, os.path.join(out_dir, "probes.png"), chance=chance)
    return table


def table_markdown(table: Mapping[str, Mapping[str, float]], chance: Optional[float] = None) -> str:
    layers = list(dict.fromkeys(l for r in table.values() for l in r))
    lines = ["| model | " + " | ".join(layers) + " |", "|---|" + "---:|" * len(layers)]
    for m, r in table.items():
        lines.append(f"| {m} | " + " | ".join(f"{100 * r[l]:.1f}" if l in r else "" for l in layers) + " |")
    if chance is not None:
        lines.append(f"\nTop-1 accuracy (%) of a linear probe per frozen layer; majority-class chance "
                     f"{100 * chance:.1f}%.")
    return "\n".join(lines) + "\n"


def write_table(table: Mapping[str, Mapping[str, float]], out_dir: str, chance: Optional[float] = None) -> None:
    layers = list(dict.fromkeys(l for r in table.values() for l in r))
    with atomic_output(os.path.join(out_dir, "probes.md")) as f:
        f.write(table_markdown(table, chance).encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["model"] + layers)
    for m, r in table.items():
        w.writerow([m] + [f"{r[l]:.6f}" if l in r else "" for l in layers])
    with atomic_output(os.path.join(out_dir, "probes.csv")) as f:
        f.write(buf.getvalue().encode())


def pixel_features(images: Sequence[str], size: int) -> np.ndarray:
    """Gray pixels of every image, resized to ``size`` x ``size`` (area interpolation), as float32 rows."""
    import cv2

    from caffe_compat.data.sources import read_image
    rows = np.empty((len(images), size * size), np.float32)
    for i, p in enumerate(images):
        g = read_image(p, is_color=False)[:, :, 0]
        rows[i] = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA).reshape(-1)
    return rows


def pixel_probe(train_list: str, val_list: str, *, size: int = 28,
                settings: ProbeSettings = ProbeSettings()) -> float:
    """Top-1 of the same linear probe (BatchNorm without affine + Linear, ``train_heads``) on raw gray pixels."""
    xtr, ytr = _labelled(train_list)
    xva, yva = _labelled(val_list)
    head = [Head("pixels", 1, 1, size * size)]
    classes = int(max(ytr.max(), yva.max())) + 1
    return train_heads({"pixels": pixel_features(xtr, size)}, ytr, {"pixels": pixel_features(xva, size)}, yva,
                       head, classes, settings)["pixels"]
