"""The Jigsaw / Jigsaw++ fork's Data layer: its ``DataTransformer`` puzzle path and ``labels.bin``.

Mirrors ``caffe-master-jps++/src/caffe/data_transformer.cpp`` and
``data_reader.cpp`` of MehdiNoroozi/JigsawPuzzleSolver at HEAD (8c7ec09);
line numbers below are of those files.  A ``Data`` layer whose
``transform_param`` sets ``siamese_size`` > 1 (with or without ``hash_file``)
emits, per Datum (C x H x W), ``siamese_size * C`` channels of
``patch_size`` x ``patch_size``:

* **hash file** (data_transformer.cpp:36-56): int32 ``[n, k]`` then ``n*k``
  int32 cell indices, 1-based (``hashes_[i] -= 1``).  ``k`` must equal
  ``siamese_size`` here (the fork does not check it).
* **cells** (:84-96): with ``S = siamese_size`` on a ``sqrt(S)`` x ``sqrt(S)``
  grid over the crop, cell ``r*sqrt(S) + c`` (row r, column c) starts at
  ``x = int(c*crop/sqrt(S))``, ``y = int(r*crop/sqrt(S))``.  ``gap_size`` is
  read but these cells replace the gap layout, so it has no effect.
* **label** (:166-174): ``label = rand() % n``; output tile ``s`` reads cell
  ``H[label][s]``; the Datum's label becomes ``label``.  Without a hash file
  tile ``s`` reads cell ``s`` and the Datum keeps its label.
* **crop** (:185-193): TRAIN ``h_off = Rand(H - crop + 1)``, ``w_off`` likewise
  (Caffe's RNG there, the same ``rand()`` stream here); TEST the centre.
* **pixels** (:199-253): per tile ``jx = rand() % (J+1)``, then
  ``jy = rand() % (J+1)``; per channel ``x = jx + rand() % 3``,
  ``y = jy + rand() % 3``; ``out[s*C + c][h][w] = (data[(c*H + h_off + cell.y + y + h)*W
  + w_off + cell.x + x + w] - mean_value[c]) * scale`` in float.  The index is
  flat: a read past a row's end continues on the next row (and past the last
  row into the next channel).  With ``jitter_size`` 21 (the ECCV prototxt) the
  last cells can read up to 2 rows past the record; the fork reads whatever
  memory follows, caffekt reads zeros there and says so once.
* **colour** (:262-301, only when S > 1): ``make_gray = rand() % 10 >= 5``,
  ``proj = rand() % 2 == 0``, once per Datum; channels are (b, g, r) =
  (0, 1, 2).  Gray: ``g = 0.3333*r + 0.3333*g + 0.3333*b`` (double, stored as
  float) copied to all three; else with ``proj``: ``r' = 0.8333r + 0.3333g -
  0.1667b``, ``g' = 0.3333(r + g + b)``, ``b' = -0.1667r + 0.3333g + 0.8333b``.

``rand()`` is the caller's: a per-sample NumPy generator (``rand_from``) in
the feeders, so a run is repeatable but not the fork's libc stream.

``labels.bin`` (data_reader.cpp:69-80, 131-144): int32 ``count`` then
``count`` int32 labels; record ``i`` of the LMDB in key order gets label
``i`` of the file, restarting at the first record when the cursor wraps.
The fork opens ``labels.bin`` from the working directory for every Data
layer; ``caffekt train --labels-bin FILE`` applies it to the train net's
Data layers only, and refuses a file shorter than the LMDB (the fork would
read past its array).

Refused, naming the field: ``siamese_size`` not a square of 2..4 (the fork
keeps 16 cells), no ``patch_size``, ``patch_size`` above the crop, ``mirror``
(the fork's mirrored index ignores the tile and overwrites tile 0),
``mean_file``, ``hash_file`` with ``siamese_size`` 1, a hash table whose width
is not ``siamese_size``; Datums smaller than ``crop_size`` and
``mean_value`` counts other than 1 or C are refused per record.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Callable, Optional, Tuple

import numpy as np

from ..errors import CaffeFormatError, ShapeError, UnsupportedParameter
from .transformer import FORK_FIELDS, as_chw

log = logging.getLogger("caffe_compat.jps")

F32 = np.float32
RAND_MAX = 2 ** 31                 # rand() returns 0 .. RAND_MAX - 1 (glibc)
_MAX_TABLE = 1 << 20               # permutation rows a hash file may claim
GRAY_W = 0.3333                    # the fork's literal constants (data_transformer.cpp:283-297)
PROJ = ((0.8333, 0.3333, -0.1667),   # r' from (r, g, b)
        (0.3333, 0.3333, 0.3333),    # g'
        (-0.1667, 0.3333, 0.8333))   # b'


def is_fork_layer(lp) -> bool:
    """A Data layer using the fork's puzzle transform (any fork field set)."""
    tp = lp.transform_param
    return lp.type == "Data" and any(tp.HasField(f) for f in FORK_FIELDS)


# ---------------------------------------------------------------- files

def check_table(perms, path: Optional[str], tiles: Optional[int] = None) -> np.ndarray:
    """An ``(n, k)`` table of 0-based permutations of ``0..k-1`` without repeats, as int64."""
    perms = np.asarray(perms)
    if perms.ndim != 2 or perms.shape[0] == 0:
        raise CaffeFormatError(f"expected an (n, tiles) permutation table, got shape {perms.shape}", path)
    k = perms.shape[1]
    if tiles is not None and k != tiles:
        raise CaffeFormatError(f"the permutations have {k} tiles but siamese_size is {tiles}", path)
    srt = np.sort(perms, axis=1)
    bad = np.flatnonzero((srt != np.arange(k)).any(axis=1))
    if bad.size:
        raise CaffeFormatError(f"row {int(bad[0])} is not a permutation of 0..{k - 1} (0-based): "
                               f"{perms[bad[0]].tolist()}", path)
    uniq = np.unique(perms, axis=0)
    if len(uniq) != len(perms):
        raise CaffeFormatError(f"{len(perms) - len(uniq)} repeated permutation(s) in the set", path)
    return perms.astype(np.int64)


def read_hash_file(path: str, tiles: Optional[int] = None) -> np.ndarray:
    """The fork's ``hash_file`` (int32 ``[n, k]`` + 1-based table) as a 0-based ``(n, k)`` int64 table."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CaffeFormatError(f"cannot read the permutation file ({e.strerror})", path) from None
    if size < 8 or size % 4:
        raise CaffeFormatError(f"a permutation .bin holds int32 values; size {size} bytes is not", path)
    with open(path, "rb") as f:
        n, k = (int(v) for v in np.frombuffer(f.read(8), dtype="<i4"))
        if n <= 0 or n > _MAX_TABLE or k <= 1 or k > 64:
            raise CaffeFormatError(f"header [n, tiles] = [{n}, {k}] is not a permutation set header "
                                   f"(expected 1 <= n <= {_MAX_TABLE}, 2 <= tiles <= 64)", path)
        if size != 4 * (2 + n * k):
            raise CaffeFormatError(f"header says {n} permutations of {k} tiles ({2 + n * k} int32 values) "
                                   f"but the file holds {size // 4}", path)
        table = np.frombuffer(f.read(), dtype="<i4").reshape(n, k)
    if table.min() < 1:
        raise CaffeFormatError("the .bin table is 1-based; found an index below 1", path)
    return check_table(table - 1, path, tiles)


def read_labels_bin(path: str) -> np.ndarray:
    """The fork's ``labels.bin``: int32 count, then that many int32 labels (data_reader.cpp:69-80)."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise CaffeFormatError(f"cannot read labels file ({e.strerror})", path) from None
    if size < 8 or size % 4:
        raise CaffeFormatError(f"expected int32 count then at least one int32 label; the file has {size} bytes",
                               path)
    raw = np.fromfile(path, dtype="<i4")
    n = int(raw[0])
    if n < 1 or raw.size != 1 + n:
        raise CaffeFormatError(f"the count says {n} labels but the file holds {raw.size - 1}", path)
    labels = raw[1:].astype(np.int64)
    if labels.min() < 0:
        raise CaffeFormatError(f"labels must be >= 0; found {int(labels.min())} at index "
                               f"{int(np.argmin(labels))}", path)
    return labels


def write_labels_bin(path: str, labels) -> str:
    """Write ``labels`` in the fork's layout, atomically."""
    from ..files import atomic_output
    lab = np.asarray(labels, dtype=np.int64).ravel()
    if lab.size == 0 or lab.min() < 0 or lab.max() >= 2 ** 31:
        raise CaffeFormatError("labels.bin needs at least one label, each in 0 .. 2^31-1", path)
    with atomic_output(path) as tmp:
        np.concatenate([[lab.size], lab]).astype("<i4").tofile(tmp)
    return path


# ---------------------------------------------------------------- rand()

def rand_from(rng: np.random.Generator, block: int = 128) -> Callable[[], int]:
    """A ``rand()`` (0 .. 2^31-1) drawn from ``rng`` in blocks: same values as one draw at a time."""
    buf = []

    def rand() -> int:
        if not buf:
            buf.extend(rng.integers(0, RAND_MAX, size=block).tolist()[::-1])
        return buf.pop()
    return rand


# ---------------------------------------------------------------- the transform

class JpsTransformer:
    """The fork's ``DataTransformer`` for puzzle Data layers (see the module docstring).

    ``transform(image, layout, rng)`` -> float32 ``(S*C, P, P)``; with a hash
    file ``transform_labelled`` also returns the drawn permutation index.
    """

    needs_rand = True

    def __init__(self, tp, phase: str = "TRAIN", *, where: str = "layer", base_dir: str = ".",
                 table: Optional[np.ndarray] = None, colour: bool = True):
        """``tp``: the layer's TransformationParameter.  ``table`` (0-based) replaces reading
        ``hash_file``; ``colour=False`` skips the gray/projection step (its two draws too)."""
        self.where = where
        self.colour = bool(colour)
        S = int(tp.siamese_size)
        g = int(round(math.sqrt(S))) if S > 0 else 0
        if S <= 1 or g * g != S or g > 4:
            raise UnsupportedParameter(f"{where}: transform_param.siamese_size must be a square of 2..4 "
                                       f"tiles per side (4, 9 or 16), got {S}")
        self.tiles, self.grid = S, g
        self.patch = int(tp.patch_size)
        self.crop = int(tp.crop_size)
        if self.crop <= 0:
            raise UnsupportedParameter(f"{where}: transform_param.crop_size must be set: the {g}x{g} grid "
                                       "is laid over the crop")
        if not 0 < self.patch <= self.crop:
            raise UnsupportedParameter(f"{where}: transform_param.patch_size must lie in 1..crop_size "
                                       f"({self.crop}), got {self.patch}")
        if tp.mirror:
            raise UnsupportedParameter(f"{where}: transform_param.mirror with siamese_size: the fork's "
                                       "mirrored index ignores the tile (it overwrites tile 0); not honoured")
        if tp.HasField("mean_file"):
            raise UnsupportedParameter(f"{where}: transform_param.mean_file with siamese_size is not "
                                       "supported (the authors' nets use mean_value or none)")
        self.jitter = int(tp.jitter_size)
        self.scale = F32(tp.scale)
        self.mean_values = [F32(v) for v in tp.mean_value]
        self.force_color, self.force_gray = bool(tp.force_color), bool(tp.force_gray)
        self.train = str(phase).upper() in ("TRAIN", "0")
        self.table: Optional[np.ndarray] = None
        self.hash_file: Optional[str] = None
        if table is not None:
            self.table = check_table(table, None, S)
        elif tp.hash_file:
            self.hash_file = tp.hash_file if os.path.isabs(tp.hash_file) or os.path.exists(tp.hash_file) \
                else _beside(tp.hash_file, base_dir)
            if not os.path.isfile(self.hash_file):
                raise CaffeFormatError(f"{where}: transform_param.hash_file not found (the fork opens it "
                                       "from the working directory)", tp.hash_file)
            self.table = read_hash_file(self.hash_file, S)
        # cell origins (x, y), data_transformer.cpp:86-93
        side = self.crop / math.sqrt(S)
        self.cells = np.array([(int(c * side), int(r * side)) for r in range(g) for c in range(g)], dtype=np.int64)
        self._warned = False

    @property
    def sets_label(self) -> bool:
        return self.table is not None

    @property
    def imdecode_flag(self) -> Optional[int]:
        return 1 if self.force_color else (0 if self.force_gray else None)

    def output_shape(self, channels: int, height: int, width: int) -> Tuple[int, int, int]:
        return (self.tiles * channels, self.patch, self.patch)

    def transform(self, image, *, layout: str = "CHW", rng: Optional[np.random.Generator] = None) -> np.ndarray:
        return self.transform_labelled(image, layout=layout, rng=rng)[0]

    def transform_labelled(self, image, *, layout: str = "CHW", rng: Optional[np.random.Generator] = None,
                           rand: Optional[Callable[[], int]] = None) -> Tuple[np.ndarray, Optional[int]]:
        """(tiles, label or None) of one image; ``rand`` overrides the draws from ``rng``."""
        chw = as_chw(image, layout)
        C, H, W = chw.shape
        if H < self.crop or W < self.crop:
            raise ShapeError(f"{self.where}: a {H}x{W} record is smaller than crop_size {self.crop}")
        if self.mean_values and len(self.mean_values) not in (1, C):
            raise ShapeError(f"{self.where}: Specify either 1 mean_value or as many as channels: {C}")
        # every rand() of this Datum, in the fork's order: label, crop (TRAIN), per tile (jx, jy, then
        # (x, y) per channel), colour (2); drawn at once from ``rng``, or one by one from ``rand``
        n_colour = 2 if C == 3 and self.colour else 0
        head = (self.table is not None) + 2 * self.train
        n = head + self.tiles * (2 + 2 * C) + n_colour
        if rand is None:
            g = rng if rng is not None else np.random.default_rng()
            draws = g.integers(0, RAND_MAX, size=n, dtype=np.int64)
        else:
            draws = np.array([rand() for _ in range(n)], dtype=np.int64)
        label = None
        order = np.arange(self.tiles)
        k = 0
        if self.table is not None:
            label = int(draws[0] % len(self.table))
            order = self.table[label]
            k = 1
        if self.train:   # Caffe's Rand() there; the same rand() stream here
            h_off, w_off = int(draws[k] % (H - self.crop + 1)), int(draws[k + 1] % (W - self.crop + 1))
            k += 2
        else:
            h_off, w_off = (H - self.crop) // 2, (W - self.crop) // 2
        per_tile = draws[k:k + self.tiles * (2 + 2 * C)].reshape(self.tiles, 2 + 2 * C)
        J = self.jitter + 1
        jx, jy = per_tile[:, 0:1] % J, per_tile[:, 1:2] % J                  # (S, 1)
        x = jx + per_tile[:, 2::2] % 3                                        # (S, C)
        y = jy + per_tile[:, 3::2] % 3
        x0, y0 = self.cells[order, 0][:, None], self.cells[order, 1][:, None]
        # flat read positions (data_transformer.cpp:224)
        base = (np.arange(C)[None, :] * H + h_off + y0 + y) * W + w_off + x0 + x
        P = self.patch
        rows, cols = (base % (H * W)) // W, base % W       # where each tile's window starts
        if rows.max() + P <= H and cols.max() + P <= W:
            # every window inside its plane: plain slices (the flat index of the fork reads the same)
            out = np.empty((self.tiles, C, P, P), dtype=F32)
            for s_ in range(self.tiles):
                for c in range(C):
                    r, q = int(rows[s_, c]), int(cols[s_, c])
                    out[s_, c] = chw[c, r:r + P, q:q + P]
        else:
            out = self._flat_gather(chw, base, P)
        if self.mean_values:
            mv = np.array(self.mean_values * (C if len(self.mean_values) == 1 else 1), dtype=F32)
            out -= mv[None, :, None, None]
        if self.scale != F32(1):
            out *= self.scale
        if n_colour:
            _colour(out, int(draws[-2]), int(draws[-1]))
        return np.ascontiguousarray(out.reshape(self.tiles * C, P, P)), label


    def _flat_gather(self, chw: np.ndarray, base: np.ndarray, P: int) -> np.ndarray:
        """The fork's flat reads (data_transformer.cpp:224) where a window leaves its plane's rows or
        columns: past a row's end on the next row, past the last row into the next channel, past
        the record zeros (the fork reads whatever memory follows)."""
        C, H, W = chw.shape
        idx = base[:, :, None, None] + (np.arange(P) * W)[:, None] + np.arange(P)
        flat = chw.reshape(-1)
        if idx.max() >= flat.size:
            if not self._warned:
                log.warning("%s: jitter_size %d + channel shift 2 + patch_size %d reads past the record for "
                            "the last cells (the fork reads beyond its buffer there); those pixels read 0",
                            self.where, self.jitter, P)
                self._warned = True
            flat = np.concatenate([flat, np.zeros(int(idx.max()) + 1 - flat.size, dtype=flat.dtype)])
        return flat[idx].astype(F32)


def _colour(tiles: np.ndarray, r1: int, r2: int) -> None:
    """data_transformer.cpp:262-301 in place on (S, 3, P, P): gray or colour projection, in double."""
    make_gray = r1 % 10 >= 5
    proj = r2 % 2 == 0
    if not make_gray and not proj:
        return
    b, g, r = (tiles[:, i].astype(np.float64) for i in range(3))
    if make_gray:
        gray = (GRAY_W * r + GRAY_W * g + GRAY_W * b).astype(F32)
        tiles[:, 0] = tiles[:, 1] = tiles[:, 2] = gray
        return
    tiles[:, 2] = (PROJ[0][0] * r + PROJ[0][1] * g + PROJ[0][2] * b).astype(F32)
    tiles[:, 1] = (PROJ[1][0] * r + PROJ[1][1] * g + PROJ[1][2] * b).astype(F32)
    tiles[:, 0] = (PROJ[2][0] * r + PROJ[2][1] * g + PROJ[2][2] * b).astype(F32)


def authors_param(hash_file: str = "", jitter: int = 18):
    """The TransformationParameter of the Jigsaw++ prototxt's Data layers (crop 255, 9 tiles of 64)."""
    from ..proto import caffe_pb2
    tp = caffe_pb2.TransformationParameter(crop_size=255, siamese_size=9, patch_size=64, jitter_size=jitter)
    if hash_file:
        tp.hash_file = hash_file
    return tp


def _beside(path: str, base_dir: str) -> str:
    alt = os.path.join(base_dir, path)
    return alt if os.path.exists(alt) else path


class RelabelledSource:
    """An LMDB source whose record ``i`` carries ``labels[i]`` (labels.bin, data_reader.cpp:131-144)."""

    def __init__(self, source, labels: np.ndarray, path: str):
        if len(labels) < len(source):
            raise CaffeFormatError(f"holds {len(labels)} labels but the LMDB {getattr(source, 'path', '')!r} "
                                   f"has {len(source)} records (one label per record, in key order)", path)
        self.source, self.labels, self.path = source, labels, path

    def __len__(self) -> int:
        return len(self.source)

    def get(self, i: int, imdecode_flag=None):
        s = self.source.get(i, imdecode_flag)
        return None if s is None else s._replace(label=int(self.labels[i]))

    __getitem__ = get


__all__ = ["JpsTransformer", "authors_param", "is_fork_layer", "read_hash_file", "check_table", "read_labels_bin",
           "write_labels_bin", "rand_from", "RelabelledSource", "FORK_FIELDS"]
