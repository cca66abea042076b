"""Caffe's DataTransformer: crop, mirror, mean, scale (src/caffe/data_transformer.cpp).

One formula covers both of Caffe's per-image paths (``Transform(const Datum&)``
for C x H x W Datum arrays and ``Transform(const cv::Mat&)`` for H x W x C
images)::

    out[c, h, mirror ? crop-1-w : w] = (pixel[c, h_off+h, w_off+w] - mean[c, h_off+h, w_off+w]) * scale

* ``h_off = Rand(H - crop + 1)``, ``w_off = Rand(W - crop + 1)`` in TRAIN; the
  centre ``(H - crop) / 2`` (integer division) in TEST; 0 without ``crop_size``.
* ``do_mirror = mirror && Rand(2)``, with no phase check (TEST mirrors too);
  the flip is applied to the output index, so the mean is read at the
  unmirrored source position.
* ``mean`` is the ``mean_file`` blob (same C, H, W as the image, read at the
  uncropped source position) or ``mean_value`` (one value for all channels, or
  one per channel); the two are exclusive.  No mean: ``out = pixel * scale``.
* The arithmetic is float32, as Caffe's ``Dtype = float``.

Randomness: Caffe draws ``Rand(2)`` for the mirror first (only when
``mirror`` is set), then ``h_off``, then ``w_off`` (only in TRAIN with a
crop), each as ``rng() % n`` from a boost mt19937.  We draw in the same order
from a seeded ``numpy.random.Generator``: the distribution is Caffe's, the
stream is not (no bit-for-bit reproduction of a Caffe run's crops).
"""
from __future__ import annotations

import warnings
from typing import Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..errors import CaffeFormatError, ShapeError, UnsupportedParameter
from ..proto import caffe_pb2

F32 = np.float32

# Jigsaw++ fork fields: puzzle tiling, done by caffekt.kt.puzzle, not here.
# the Jigsaw fork's transform fields: its puzzle Data layers go to data.jps.JpsTransformer instead
FORK_FIELDS = ("hash_file", "siamese_size", "patch_size", "gap_size", "jitter_size")


class Draw(NamedTuple):
    """The random choices for one image: mirror flag and crop offsets."""

    mirror: bool
    h_off: int
    w_off: int


def _phase(phase) -> int:
    if isinstance(phase, str):
        key = phase.upper()
        if key not in ("TRAIN", "TEST"):
            raise UnsupportedParameter(f"phase must be TRAIN or TEST, got {phase!r}")
        return caffe_pb2.TRAIN if key == "TRAIN" else caffe_pb2.TEST
    if phase not in (caffe_pb2.TRAIN, caffe_pb2.TEST):
        raise UnsupportedParameter(f"phase must be TRAIN (0) or TEST (1), got {phase!r}")
    return int(phase)


def _as_param(tp) -> "caffe_pb2.TransformationParameter":
    if tp is None:
        return caffe_pb2.TransformationParameter()
    if isinstance(tp, caffe_pb2.TransformationParameter):
        return tp
    if isinstance(tp, Mapping):
        msg = caffe_pb2.TransformationParameter()
        for k, v in tp.items():
            if k == "mean_value":
                msg.mean_value.extend(float(x) for x in (v if isinstance(v, Sequence) else [v]))
            elif k not in msg.DESCRIPTOR.fields_by_name:
                raise UnsupportedParameter(f"TransformationParameter has no field {k!r}")
            else:
                setattr(msg, k, v)
        return msg
    raise UnsupportedParameter(
        f"transform_param must be a caffe_pb2.TransformationParameter or a dict, got {type(tp).__name__}")


def legacy_dims(shape: Sequence[int]) -> Tuple[int, int, int, int]:
    """(num, channels, height, width) as Caffe's ``Blob::LegacyShape`` reads a shape.

    An axis beyond the blob's rank reads as 1, so a 3-D mean blob (C, H, W)
    reports channels = H: Caffe then refuses it, and so do we.
    """
    if len(shape) > 4:
        raise ShapeError(f"a mean blob has at most 4 axes; got shape {list(shape)}")
    return tuple(int(shape[i]) if i < len(shape) else 1 for i in range(4))  # type: ignore[return-value]


class DataTransformer:
    """Caffe's ``DataTransformer`` (data_transformer.cpp): out = (pixel - mean) * scale, cropped, mirrored.

    ``transform_param``: a ``caffe_pb2.TransformationParameter`` (or a dict of
    its fields; None for the defaults).  ``phase``: ``"TRAIN"``/``"TEST"`` or
    ``caffe_pb2.TRAIN``/``TEST``.  ``seed`` seeds this transformer's own
    generator, used when no ``rng``/``draw`` is passed per call.  ``mean``
    overrides ``mean_file`` with an array already in memory (shape as the
    blob would have, e.g. 1 x C x H x W).
    """

    def __init__(self, transform_param=None, phase="TRAIN", seed: int = 0, *,
                 mean: Optional[np.ndarray] = None):
        p = _as_param(transform_param)
        self.param = p
        self.phase = _phase(phase)
        bad = [f for f in FORK_FIELDS if p.HasField(f)]
        if bad:
            raise UnsupportedParameter(
                f"transform_param sets the Jigsaw++ fork field(s) {', '.join(bad)}: puzzle tiling is "
                "done by caffe_compat.data.jps.JpsTransformer, not by DataTransformer")
        if p.HasField("mean_file") and len(p.mean_value):
            raise UnsupportedParameter("Cannot specify mean_file and mean_value at the same time "
                                       f"(mean_file {p.mean_file!r}, {len(p.mean_value)} mean_value)")
        if p.force_color and p.force_gray:
            raise UnsupportedParameter("cannot set both force_color and force_gray")
        self.crop_size = int(p.crop_size)
        self.scale = F32(p.scale)
        self.mirror = bool(p.mirror)
        self.mean_values = tuple(F32(v) for v in p.mean_value)
        self.mean_source = p.mean_file if p.HasField("mean_file") else None
        self.mean_blob: Optional[np.ndarray] = None
        if mean is not None:
            self.mean_blob = np.asarray(mean, dtype=F32)
            self.mean_source = self.mean_source or "<mean array>"
        elif p.HasField("mean_file"):
            from ..binary import read_blobproto
            try:
                self.mean_blob = read_blobproto(p.mean_file)
            except OSError as e:
                raise CaffeFormatError(f"cannot read mean_file ({e.strerror})", p.mean_file) from None
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    # ------------------------------------------------------------ randomness

    @property
    def needs_rand(self) -> bool:
        """Whether a draw consumes randomness (Caffe's ``InitRand`` condition)."""
        return self.mirror or (self.phase == caffe_pb2.TRAIN and self.crop_size > 0)

    def draw(self, height: int, width: int, rng: Optional[np.random.Generator] = None) -> Draw:
        """Mirror flag and crop offsets for an H x W image, drawn in Caffe's order."""
        self._check_size(height, width)
        g = self.rng if rng is None else rng
        flip = bool(self.mirror and g.integers(2))
        h_off = w_off = 0
        if self.crop_size:
            if self.phase == caffe_pb2.TRAIN:
                h_off = int(g.integers(height - self.crop_size + 1))
                w_off = int(g.integers(width - self.crop_size + 1))
            else:
                h_off = (height - self.crop_size) // 2
                w_off = (width - self.crop_size) // 2
        return Draw(flip, h_off, w_off)

    # ------------------------------------------------------------ shapes and checks

    def output_shape(self, channels: int, height: int, width: int) -> Tuple[int, int, int]:
        """C x h x w of the result (``InferBlobShape``)."""
        self._check_size(height, width)
        c = self.crop_size
        return (channels, c or height, c or width)

    def _check_size(self, height: int, width: int) -> None:
        if height < self.crop_size or width < self.crop_size:
            raise ShapeError(f"crop_size {self.crop_size} is larger than the {height}x{width} image "
                             "(Caffe: CHECK_GE(height, crop_size))")

    def _mean_for(self, c: int, h: int, w: int) -> Optional[np.ndarray]:
        """The C x H x W mean to subtract: the mean file's, or mean_value broadcast; None without."""
        if self.mean_blob is not None:
            _n, mc, mh, mw = legacy_dims(self.mean_blob.shape)
            if (mc, mh, mw) != (c, h, w):
                raise ShapeError(
                    f"mean file {self.mean_source} is {mc}x{mh}x{mw} (channels x height x width of "
                    f"blob shape {list(self.mean_blob.shape)}) but the image is {c}x{h}x{w}; "
                    "Caffe requires them equal (data_transformer.cpp CHECK_EQ)")
            return self.mean_blob.reshape(-1)[:c * h * w].reshape(c, h, w)
        if self.mean_values:
            if len(self.mean_values) not in (1, c):
                raise UnsupportedParameter(
                    f"Specify either 1 mean_value or as many as channels: {c} "
                    f"(got {len(self.mean_values)})")
            vals = self.mean_values * c if len(self.mean_values) == 1 else self.mean_values
            return np.asarray(vals, dtype=F32).reshape(c, 1, 1)
        return None

    # ------------------------------------------------------------ decoding

    @property
    def imdecode_flag(self) -> Optional[int]:
        """cv2 flag for encoded Datums: force_color -> IMREAD_COLOR, force_gray -> GRAYSCALE, else None (native)."""
        if self.param.force_color:
            return 1   # cv2.IMREAD_COLOR
        if self.param.force_gray:
            return 0   # cv2.IMREAD_GRAYSCALE
        return None

    def transform_datum(self, datum, *, draw: Optional[Draw] = None,
                        rng: Optional[np.random.Generator] = None, where: str = "datum") -> np.ndarray:
        """``Transform(const Datum&)``: encoded Datums are decoded (force_color/gray), raw ones used as C x H x W."""
        if datum.encoded:
            img = decode_image(datum.data, self.imdecode_flag, where)
            return self.transform(img, layout="HWC", draw=draw, rng=rng)
        if self.param.force_color or self.param.force_gray:
            # Caffe only logs this (LOG(ERROR)) and goes on with the raw pixels
            warnings.warn("force_color and force_gray only for encoded datum", stacklevel=2)
        return self.transform(datum.to_array(), layout="CHW", draw=draw, rng=rng)

    # ------------------------------------------------------------ transforms

    def transform(self, image: np.ndarray, *, layout: str = "HWC", draw: Optional[Draw] = None,
                  rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """One image -> float32 C x h x w.

        ``layout="HWC"``: an H x W (gray) or H x W x C uint8 image as cv2
        gives it (Caffe's cv::Mat path).  ``layout="CHW"``: a Datum array,
        uint8 or float (Caffe's Datum path, ``float_data`` included).
        ``draw`` fixes the random choices; otherwise they come from ``rng``
        or the transformer's generator.
        """
        chw = as_chw(image, layout)
        c, h, w = chw.shape
        if layout.upper() == "HWC" and chw.dtype != np.uint8:
            raise UnsupportedParameter(f"Image data type must be unsigned byte, got {chw.dtype}")
        if c <= 0:
            raise ShapeError("image has no channels")
        d = self.draw(h, w, rng) if draw is None else draw
        ch, cw = (self.crop_size or h, self.crop_size or w)
        out = np.empty((c, ch, cw), dtype=F32)
        self._apply(chw, d, self._mean_for(c, h, w), out)
        return out

    def _apply(self, chw: np.ndarray, d: Draw, mean: Optional[np.ndarray], out: np.ndarray) -> None:
        """Write (pixel - mean) * scale of the drawn window, output-mirrored, into ``out`` (C x h x w)."""
        _c, h, w = chw.shape
        ch, cw = out.shape[1:]
        if d.h_off < 0 or d.w_off < 0 or d.h_off + ch > h or d.w_off + cw > w:
            raise ShapeError(f"crop {ch}x{cw} at ({d.h_off}, {d.w_off}) leaves the {h}x{w} image")
        # reading the source columns backwards puts source column w_off + j at output column cw-1-j
        cols = slice(d.w_off + cw - 1, d.w_off - 1 if d.w_off else None, -1) if d.mirror \
            else slice(d.w_off, d.w_off + cw)
        rows = slice(d.h_off, d.h_off + ch)
        pix = chw[:, rows, cols]
        if mean is None:
            np.multiply(pix, self.scale, out=out, dtype=F32, casting="unsafe")
            return
        m = mean if mean.shape[1] == 1 else mean[:, rows, cols]   # same window, same flip as the pixels
        np.subtract(pix, m, out=out, dtype=F32, casting="unsafe")
        np.multiply(out, self.scale, out=out)

    __call__ = transform

    def transform_batch(self, images: np.ndarray, *, layout: str = "NHWC",
                        draws: Optional[Sequence[Draw]] = None,
                        rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """N same-sized images -> float32 N x C x h x w, into one preallocated array.

        Equal, element for element, to ``transform`` on each image with the
        same draws (drawn in image order when not given).
        """
        arr = np.asarray(images)
        lay = layout.upper()
        if lay not in ("NHWC", "NCHW"):
            raise UnsupportedParameter(f"layout must be NHWC or NCHW, got {layout!r}")
        if lay == "NHWC" and arr.ndim == 3:
            arr = arr[..., None]
        if arr.ndim != 4:
            raise ShapeError(f"a batch must be 4-D ({lay}), got shape {list(arr.shape)}")
        if lay == "NHWC" and arr.dtype != np.uint8:
            raise UnsupportedParameter(f"Image data type must be unsigned byte, got {arr.dtype}")
        n = arr.shape[0]
        c, h, w = (arr.shape[3], arr.shape[1], arr.shape[2]) if lay == "NHWC" else arr.shape[1:]
        if draws is None:
            draws = [self.draw(h, w, rng) for _ in range(n)]
        if len(draws) != n:
            raise ShapeError(f"{len(draws)} draws for {n} images")
        self._check_size(h, w)
        ch, cw = (self.crop_size or h, self.crop_size or w)
        mean = self._mean_for(c, h, w)
        out = np.empty((n, c, ch, cw), dtype=F32)
        # per-image slicing beats one fancy-index gather here: the windows are contiguous rows
        chws = arr.transpose(0, 3, 1, 2) if lay == "NHWC" else arr
        for k in range(n):
            self._apply(chws[k], Draw(*draws[k]), mean, out[k])
        return out


def as_chw(image: np.ndarray, layout: str) -> np.ndarray:
    """An HWC (cv2) or CHW (Datum) image as a C x H x W view."""
    arr = np.asarray(image)
    lay = layout.upper()
    if lay == "HWC":
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3:
            raise ShapeError(f"an HWC image must be 2-D or 3-D, got shape {list(arr.shape)}")
        return arr.transpose(2, 0, 1)
    if lay == "CHW":
        if arr.ndim != 3:
            raise ShapeError(f"a CHW array must be 3-D, got shape {list(arr.shape)}")
        return arr
    raise UnsupportedParameter(f"layout must be HWC or CHW, got {layout!r}")


def decode_image(data: bytes, flag: Optional[int] = None, where: str = "datum") -> np.ndarray:
    """``cv::imdecode`` of an encoded Datum: flag None = native (``DecodeDatumToCVMatNative``, -1).

    Returns H x W x C uint8 (H x W x 1 for gray); BGR order as OpenCV decodes.
    """
    import cv2
    buf = np.frombuffer(data, dtype=np.uint8)
    img = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED if flag is None else flag) if buf.size else None
    if img is None:
        raise CaffeFormatError(f"Could not decode datum ({len(data)} bytes of encoded image)", None, where)
    if img.dtype != np.uint8:
        raise CaffeFormatError(f"decoded image is {img.dtype}; Caffe requires unsigned byte (CV_8U)",
                               None, where)
    return img if img.ndim == 3 else img[:, :, None]
