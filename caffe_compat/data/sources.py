"""Where images come from: ImageData list files, class folders, LMDBs of Datum records.

Every source is indexable and sized; ``get(i, imdecode_flag)`` returns a
``Sample(image, label, layout)`` where ``layout`` says how ``image`` is laid
out: ``"HWC"`` (uint8, as cv2 decodes, BGR) or ``"CHW"`` (a raw Datum array).

* ``ImageListSource``: ``image_data_layer.cpp`` -- ``path label`` lines, the
  label after the LAST space; images read by ``ReadImageToCVMat``
  (util/io.cpp): ``cv::imread(root_folder + path, is_color ? COLOR : GRAYSCALE)``
  then ``cv::resize`` to (new_width, new_height), INTER_LINEAR, when both > 0.
* ``ImageFolderSource``: class subfolders, labels by sorted name (as
  torchvision's ImageFolder), images read as above.
* ``LMDBSource``: the records ``convert_imageset`` writes, in key order (the
  order of Caffe's LMDB cursor); encoded ones decoded by ``cv::imdecode``.
* ``write_lmdb``: ``tools/convert_imageset.cpp`` -- keys ``%08d_<path>``.

Unreadable images raise ``CaffeFormatError`` naming the file (and list line);
``on_error="skip"`` returns None for them instead and counts them (``skipped``).
"""
from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Iterable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import CaffeFormatError, UnsupportedParameter
from .transformer import decode_image

IMG_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_LABEL_TAIL = re.compile(r" [+-]?\d+\s*\Z")


def list_image_paths(path: str) -> List[str]:
    """Image paths of a folder (recursive, sorted) or of a list file, for tools that need no labels.

    A list file holds one path per line, relative to the list's folder unless
    absolute; a trailing `` <integer>`` (an ImageData label) is dropped unless
    the whole line names an existing file.  Errors name the path (and line).
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        out = []
        for root, dirs, files in os.walk(path):
            dirs.sort()
            out += [os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMG_EXTENSIONS)]
        if not out:
            raise CaffeFormatError(f"no image files ({', '.join(IMG_EXTENSIONS)}) in the folder", path)
        return out
    if not os.path.isfile(path):
        raise CaffeFormatError("no such image folder or list file", path)
    try:
        with open(path, "rb") as f:
            text = f.read().decode("utf-8")
    except OSError as e:
        raise CaffeFormatError(f"cannot read the image list ({e.strerror})", path) from None
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise CaffeFormatError("image list is not UTF-8 text", path, f"line {line}") from None
    base = os.path.dirname(os.path.abspath(path))
    out = []
    for line in text.split("\n"):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        if not os.path.exists(os.path.join(base, line)):
            line = _LABEL_TAIL.sub("", line)
        out.append(line if os.path.isabs(line) else os.path.join(base, line))
    if not out:
        raise CaffeFormatError("the image list is empty", path)
    return out


class Sample(NamedTuple):
    image: np.ndarray
    label: int
    layout: str            # "HWC" (cv2 image) or "CHW" (raw Datum)


class ListEntry(NamedTuple):
    path: str               # as written in the list (root_folder not prepended)
    label: int
    line: int               # 1-based line of the list file


def _check_on_error(on_error: str) -> str:
    if on_error not in ("raise", "skip"):
        raise UnsupportedParameter(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    return on_error


def _check_resize(new_height: int, new_width: int) -> Tuple[int, int]:
    h, w = int(new_height), int(new_width)
    if not ((h == 0 and w == 0) or (h > 0 and w > 0)):
        raise UnsupportedParameter("Current implementation requires new_height and new_width to be "
                                   f"set at the same time (got new_height {h}, new_width {w})")
    return h, w


def read_image(path: str, is_color: bool = True, new_height: int = 0, new_width: int = 0,
               where: Optional[str] = None) -> np.ndarray:
    """``ReadImageToCVMat`` (util/io.cpp): cv2.imread COLOR|GRAYSCALE, then resize when both sizes > 0.

    Returns H x W x 3 BGR (or H x W x 1) uint8.  Gray and RGBA files become
    3-channel BGR with ``is_color`` exactly as cv::imread makes them.
    """
    import cv2
    if not os.path.isfile(path):
        raise CaffeFormatError("Could not open or find file (no such file)", path, where)
    img = cv2.imread(path, cv2.IMREAD_COLOR if is_color else cv2.IMREAD_GRAYSCALE)
    if img is None:
        raise CaffeFormatError("Could not decode the image (not an image OpenCV can read, "
                               "or truncated)", path, where)
    if new_height > 0 and new_width > 0:
        img = cv2.resize(img, (new_width, new_height))  # default interpolation: INTER_LINEAR
    return img if img.ndim == 3 else img[:, :, None]


_LABEL = re.compile(r"\s*[+-]?\d+\s*\Z")


def parse_image_list(list_file: str) -> List[ListEntry]:
    """``path label`` lines, the label after the LAST space (so paths may hold spaces).

    Blank lines are skipped.  Stricter than Caffe's ``atoi`` where it would
    silently read 0: a line without a space or a non-integer label is a
    ``CaffeFormatError`` naming ``file: line N:col``.
    """
    try:
        with open(list_file, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise CaffeFormatError(f"cannot read the image list ({e.strerror})", list_file) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise CaffeFormatError("image list is not UTF-8 text", list_file, f"line {line}") from None
    entries = []
    for n, line in enumerate(text.split("\n"), 1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        pos = line.rfind(" ")
        if pos <= 0:
            raise CaffeFormatError(f"expected '<path> <label>', got {line!r}", list_file, f"line {n}:1")
        lab = line[pos + 1:]
        if not _LABEL.match(lab):
            raise CaffeFormatError(f"label {lab!r} is not an integer", list_file, f"line {n}:{pos + 2}")
        entries.append(ListEntry(line[:pos], int(lab), n))
    return entries


class _ImageFiles:
    """Shared body of the file-backed sources: entries of (path, label), read with read_image."""

    root_folder = ""
    list_file: Optional[str] = None

    def __init__(self, entries: Sequence[ListEntry], is_color: bool, new_height: int, new_width: int,
                 on_error: str):
        self.entries = list(entries)
        self.is_color = bool(is_color)
        self.new_height, self.new_width = _check_resize(new_height, new_width)
        self.on_error = _check_on_error(on_error)
        self.skipped = 0            # unreadable images met in this process (skip mode)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([e.label for e in self.entries], dtype=np.int64)

    def _where(self, e: ListEntry) -> Optional[str]:
        return f"{self.list_file} line {e.line}" if self.list_file else None

    def get(self, i: int, imdecode_flag: Optional[int] = None) -> Optional[Sample]:
        """Image i as HWC uint8 (``imdecode_flag`` is for Datums; ``is_color`` rules here)."""
        e = self.entries[i]
        try:
            img = read_image(self.root_folder + e.path, self.is_color, self.new_height,
                             self.new_width, self._where(e))
        except CaffeFormatError:
            if self.on_error == "skip":
                self.skipped += 1
                return None
            raise
        return Sample(img, e.label, "HWC")

    __getitem__ = get


class ImageListSource(_ImageFiles):
    """Caffe's ImageData list (image_data_layer.cpp): image = imread(root_folder + path), label after the last space.

    ``shuffle`` permutes the lines once, with ``seed`` (Caffe shuffles at
    setup; per-epoch shuffling is the loader's job).
    """

    def __init__(self, list_file: str, root_folder: str = "", new_height: int = 0,
                 new_width: int = 0, is_color: bool = True, shuffle: bool = False, seed: int = 0,
                 on_error: str = "raise"):
        entries = parse_image_list(list_file)
        if not entries:
            raise CaffeFormatError("File is empty (no 'path label' lines)", list_file)
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(entries))
            entries = [entries[k] for k in order]
        self.list_file = list_file
        self.root_folder = root_folder
        super().__init__(entries, is_color, new_height, new_width, on_error)

    @classmethod
    def from_layer(cls, layer_param, seed: int = 0, on_error: str = "raise") -> "ImageListSource":
        """From an ImageData ``LayerParameter`` (its ``image_data_param``)."""
        p = layer_param.image_data_param
        return cls(p.source, p.root_folder, p.new_height, p.new_width, p.is_color, p.shuffle, seed,
                   on_error)


class ImageFolderSource(_ImageFiles):
    """``root/<class>/**/<image>``: classes sorted by name get labels 0..K-1 (torchvision ImageFolder order)."""

    def __init__(self, root: str, is_color: bool = True, new_height: int = 0, new_width: int = 0,
                 extensions: Sequence[str] = IMG_EXTENSIONS, on_error: str = "raise"):
        if not os.path.isdir(root):
            raise CaffeFormatError("image folder not found", root)
        self.root = root
        self.classes = sorted(d.name for d in os.scandir(root) if d.is_dir())
        if not self.classes:
            raise CaffeFormatError("no class subfolders", root)
        self.class_to_idx = {c: k for k, c in enumerate(self.classes)}
        exts = tuple(x.lower() for x in extensions)
        entries = []
        for c in self.classes:
            for dirpath, dirnames, files in sorted(os.walk(os.path.join(root, c), followlinks=True)):
                dirnames.sort()
                for name in sorted(files):
                    if name.lower().endswith(exts):
                        full = os.path.join(dirpath, name)
                        entries.append(ListEntry(full, self.class_to_idx[c], 0))
        if not entries:
            raise CaffeFormatError(f"no images with extensions {', '.join(exts)}", root)
        super().__init__(entries, is_color, new_height, new_width, on_error)


# ================================================================ LMDB

_ENVS: dict = {}   # realpath -> (pid, env): py-lmdb allows one open environment per path per process


def _shared_env(path: str):
    import lmdb
    key = os.path.realpath(path)
    hit = _ENVS.get(key)
    if hit is not None:
        if hit[0] == os.getpid():
            return hit[1]
        # inherited through fork: unmap the parent's handle here (the parent keeps its own),
        # else py-lmdb refuses a second open of the same path
        hit[1].close()
    try:
        env = lmdb.open(path, readonly=True, lock=False, readahead=False, meminit=False,
                        subdir=True, max_readers=512)
    except lmdb.Error as e:
        raise CaffeFormatError(f"cannot open LMDB ({e})", path) from None
    _ENVS[key] = (os.getpid(), env)
    return env


class LMDBSource:
    """The ``Datum`` records of a Caffe LMDB (as convert_imageset writes them), in key order.

    Encoded records are decoded like ``DecodeDatumToCVMatNative`` (imdecode
    flag -1) unless ``get`` is given a flag (the transformer's force_color /
    force_gray); raw ones come back as their C x H x W array (uint8, or
    float32 from ``float_data``).  The environment is opened read-only without
    locks, lazily in each process, so the source can cross into DataLoader workers.
    """

    def __init__(self, path: str, on_error: str = "raise"):
        import lmdb  # noqa: F401  (fail here, not in a worker, when it is missing)
        if not os.path.exists(os.path.join(path, "data.mdb")):
            raise CaffeFormatError("not an LMDB directory (no data.mdb)", path)
        self.path = path
        self.on_error = _check_on_error(on_error)
        self.skipped = 0
        self._env = None
        self._pid = None
        with self._open().begin() as txn:
            self.keys: List[bytes] = list(txn.cursor().iternext(keys=True, values=False))

    def _open(self):
        if self._env is None or self._pid != os.getpid():
            self._env = _shared_env(self.path)
            self._pid = os.getpid()
        return self._env

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_env"] = state["_pid"] = None   # an LMDB handle must not cross a fork/pickle
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def raw(self, i: int) -> bytes:
        """The stored bytes of record i."""
        with self._open().begin(buffers=False) as txn:
            v = txn.get(self.keys[i])
        if v is None:
            raise CaffeFormatError("record vanished", self.path, f"key {self.keys[i]!r}")
        return v

    def datum(self, i: int):
        """Record i as a ``caffe_compat.binary.Datum``."""
        from ..binary import decode_datum
        where = f"key {self.keys[i].decode('utf-8', 'replace')}"
        try:
            return decode_datum(self.raw(i), f"{self.path} {where}")
        except CaffeFormatError:
            raise
        except Exception as e:   # a decoder bug must still name the record
            raise CaffeFormatError(f"cannot parse Datum ({e})", self.path, where) from None

    def get(self, i: int, imdecode_flag: Optional[int] = None) -> Optional[Sample]:
        where = f"key {self.keys[i].decode('utf-8', 'replace')}"
        try:
            d = self.datum(i)
            label = int(d.label or 0)
            if d.encoded:
                return Sample(decode_image(d.data, imdecode_flag, f"{self.path} {where}"), label, "HWC")
            try:
                return Sample(d.to_array(), label, "CHW")
            except CaffeFormatError as e:
                raise CaffeFormatError(e.detail, self.path, where) from None
        except CaffeFormatError:
            if self.on_error == "skip":
                self.skipped += 1
                return None
            raise

    __getitem__ = get

    @property
    def labels(self) -> np.ndarray:
        return np.asarray([int(self.datum(i).label or 0) for i in range(len(self))], dtype=np.int64)


def _match_ext(filename: str, enc: str) -> bool:
    # util/io.cpp matchExt: the extension equals the encoding, case-insensitively; jpeg counts as jpg
    p = filename.rfind(".")
    ext = (filename[p + 1:] if p >= 0 else filename).lower()
    enc = enc.lower()
    return ext == enc or (enc == "jpg" and ext == "jpeg")


def image_to_datum_bytes(filename: str, label: int, resize: Tuple[int, int] = (0, 0),
                         is_color: bool = True, encoding: str = "", where: Optional[str] = None) -> bytes:
    """``ReadImageToDatum`` (util/io.cpp) serialised: the Datum convert_imageset stores for one image.

    With an ``encoding``, the file's own bytes are kept when no resize is asked,
    the channel count fits ``is_color`` and the extension matches; otherwise
    the decoded image is re-encoded with ``cv2.imencode('.' + encoding)``.
    Without, the pixels are stored raw, C x H x W (``CVMatToDatum``).
    """
    import cv2

    from .. import wire
    from ..binary import D_ENCODED, encode_datum
    h, w = resize
    img = read_image(filename, is_color, h, w, where)
    if encoding:
        if (img.shape[2] == 3) == is_color and not h and not w and _match_ext(filename, encoding):
            with open(filename, "rb") as f:
                return encode_datum(f.read(), label, encoded=True)
        ok, buf = cv2.imencode("." + encoding, img)
        if not ok:
            raise CaffeFormatError(f"OpenCV cannot encode as {encoding!r}", filename, where)
        return encode_datum(buf.tobytes(), label, encoded=True)
    # CVMatToDatum sets encoded = false explicitly, so the field is on the wire
    return encode_datum(np.ascontiguousarray(img.transpose(2, 0, 1)), label) + wire.field_varint(D_ENCODED, 0)


def _commit(env, pending) -> None:
    """Write one batch in one transaction, doubling the map size until it fits."""
    import lmdb
    while True:
        try:
            with env.begin(write=True) as txn:
                for k, v in pending:
                    txn.put(k, v)
            return
        except lmdb.MapFullError:
            env.set_mapsize(env.info()["map_size"] * 2)


def write_lmdb_records(path: str, records: Iterable[Tuple[bytes, bytes]], *, commit_every: int = 1000,
                       map_size: int = 1 << 26) -> int:
    """Put (key, value) pairs into a new LMDB at ``path``; written in a temp dir, then renamed into place.

    The map starts at ``map_size`` bytes and doubles whenever a batch does not fit.
    """
    import lmdb
    if os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise FileExistsError(f"{path}: already exists (Caffe's db::NEW refuses it too)")
    parent = os.path.dirname(os.path.abspath(path))
    tmp = tempfile.mkdtemp(prefix=".lmdb-", dir=parent)
    count = 0
    try:
        env = lmdb.open(tmp, map_size=map_size, subdir=True, meminit=False)
        try:
            pending: List[Tuple[bytes, bytes]] = []
            for key, value in records:
                pending.append((key.encode() if isinstance(key, str) else bytes(key), bytes(value)))
                if len(pending) == commit_every:   # convert_imageset commits every 1000 records
                    _commit(env, pending)
                    count += len(pending)
                    pending = []
            _commit(env, pending)
            count += len(pending)
        finally:
            env.close()
        os.chmod(tmp, 0o755)   # mkdtemp's 0700 would hide the database from other users
        if os.path.isdir(path):
            os.rmdir(path)
        os.replace(tmp, path)
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return count


def write_lmdb(path: str, items: Iterable[Tuple[str, int]], *, encoded: bool = True,
               resize: Optional[Tuple[int, int]] = None, is_color: bool = True, encode_type: str = "",
               root_folder: str = "", on_error: str = "raise") -> int:
    """``convert_imageset``: one Datum per (image path, label), keys ``%08d_<path>``; returns the count written.

    ``resize=(height, width)``; ``encoded`` keeps encoded images (type from
    ``encode_type`` or the file extension).  ``root_folder`` is prepended to
    read the file, not put in the key.  ``on_error="skip"`` leaves unreadable
    images out (convert_imageset's behaviour), keeping the line numbers in the keys.
    """
    _check_on_error(on_error)
    rh, rw = (max(0, int(resize[0])), max(0, int(resize[1]))) if resize else (0, 0)
    encoded = encoded or bool(encode_type)

    def records():
        for line_id, (name, label) in enumerate(items):
            enc = encode_type
            if encoded and not enc:
                p = name.rfind(".")
                enc = name[p + 1:].lower()   # as Caffe: the whole name when there is no dot
            try:
                value = image_to_datum_bytes(root_folder + name, int(label), (rh, rw), is_color, enc,
                                             f"item {line_id}")
            except CaffeFormatError:
                if on_error == "skip":
                    continue
                raise
            yield f"{line_id:08d}_{name}", value

    return write_lmdb_records(path, records())
