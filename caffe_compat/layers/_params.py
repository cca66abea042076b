"""Shared parameter plumbing of the vision layers: window geometry and checks.

``conv_geometry`` resolves kernel/stride/pad/dilation of a ConvolutionParameter
the way src/caffe/layers/base_conv_layer.cpp (LayerSetUp) does: either the
repeated N-d fields (given once, or once per spatial axis) or the 2-D-only
``*_h``/``*_w`` forms, never both.  ``pool_geometry`` does the same for the
2-D PoolingParameter (src/caffe/layers/pooling_layer.cpp, LayerSetUp).
Every refusal is an ``UnsupportedParameter`` naming the layer, its type, the
field and the value, where Caffe would abort on a CHECK.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

from ..errors import ShapeError, UnsupportedParameter


def where(layer) -> str:
    """``layer 'conv1' (type Convolution)``: the prefix of every message."""
    return f"layer {layer.layer_name!r} (type {layer.caffe_type})"


def fail(layer, msg: str) -> UnsupportedParameter:
    return UnsupportedParameter(f"{where(layer)}: {msg}")


def shape_fail(layer, msg: str) -> ShapeError:
    return ShapeError(f"{where(layer)}: {msg}")


def canonical_axis(layer, axis: int, num_axes: int, field: str = "axis") -> int:
    """Blob::CanonicalAxisIndex: a negative axis counts from the end; range-checked."""
    if not -num_axes <= axis < num_axes:
        raise fail(layer, f"{field} {axis} is out of range for a {num_axes}-axis blob "
                          f"(expected -{num_axes} <= {field} < {num_axes})")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    n = 1
    for d in shape[start:end]:
        n *= int(d)
    return n


def _repeated(layer, param, field: str, n_spatial: int, default: int | None) -> List[int]:
    vals = list(getattr(param, field))
    if not vals:
        if default is None:
            raise fail(layer, f"{field} is required (once, or once per spatial axis)")
        return [default] * n_spatial
    if len(vals) not in (1, n_spatial):
        raise fail(layer, f"{field} must be given once or once per spatial axis "
                          f"({field} given {len(vals)} times; {n_spatial} spatial axes)")
    return [int(vals[0])] * n_spatial if len(vals) == 1 else [int(v) for v in vals]


def _hw_or_repeated(layer, param, field: str, h: str, w: str, n_spatial: int,
                    default: int | None) -> List[int]:
    if param.HasField(h) or param.HasField(w):
        if n_spatial != 2:
            raise fail(layer, f"{h} & {w} can only be used for 2-D convolution "
                              f"(the bottom has {n_spatial} spatial axes)")
        if len(getattr(param, field)):
            raise fail(layer, f"either {field} or {h}/{w} may be given, not both")
        return [int(getattr(param, h)), int(getattr(param, w))]
    return _repeated(layer, param, field, n_spatial, default)


def conv_geometry(layer, cp, n_spatial: int) -> Tuple[List[int], List[int], List[int], List[int]]:
    """(kernel, stride, pad, dilation), one entry per spatial axis, checked as Caffe does."""
    kernel = _hw_or_repeated(layer, cp, "kernel_size", "kernel_h", "kernel_w", n_spatial, None)
    if any(k <= 0 for k in kernel):
        raise fail(layer, f"kernel dimensions must be nonzero (got {kernel})")
    stride = _hw_or_repeated(layer, cp, "stride", "stride_h", "stride_w", n_spatial, 1)
    if any(s <= 0 for s in stride):
        raise fail(layer, f"stride dimensions must be nonzero (got {stride})")
    pad = _hw_or_repeated(layer, cp, "pad", "pad_h", "pad_w", n_spatial, 0)
    dilation = _repeated(layer, cp, "dilation", n_spatial, 1)
    if any(d <= 0 for d in dilation):
        # Caffe would divide by zero / index out of bounds; refuse instead.
        raise fail(layer, f"dilation must be positive (got {dilation})")
    return kernel, stride, pad, dilation


def pool_geometry(layer, pp, height: int, width: int) -> Tuple[List[int], List[int], List[int]]:
    """(kernel, stride, pad) as [h, w] for a PoolingParameter on an H x W bottom."""
    if pp.global_pooling:
        if pp.HasField("kernel_size") or pp.HasField("kernel_h") or pp.HasField("kernel_w"):
            raise fail(layer, "with global_pooling: true, the kernel size cannot be specified")
        kernel = [height, width]
    else:
        if pp.HasField("kernel_size") == (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
            raise fail(layer, "give either kernel_size or kernel_h and kernel_w (exactly one form)")
        if not (pp.HasField("kernel_size") or (pp.HasField("kernel_h") and pp.HasField("kernel_w"))):
            raise fail(layer, "for non-square windows both kernel_h and kernel_w are required")
        kernel = ([int(pp.kernel_size)] * 2 if pp.HasField("kernel_size")
                  else [int(pp.kernel_h), int(pp.kernel_w)])
        if kernel[0] <= 0 or kernel[1] <= 0:
            raise fail(layer, f"kernel dimensions must be greater than zero (got {kernel})")
    for f in ("pad", "stride"):
        h, w = pp.HasField(f + "_h"), pp.HasField(f + "_w")
        if not ((not pp.HasField(f) and h and w) or (not h and not w)):
            raise fail(layer, f"give either {f} or both {f}_h and {f}_w (exactly one form)")
    if not pp.HasField("pad_h"):
        pad = [int(pp.pad)] * 2
    else:
        pad = [int(pp.pad_h), int(pp.pad_w)]
    if not pp.HasField("stride_h"):
        stride = [int(pp.stride)] * 2
    else:
        stride = [int(pp.stride_h), int(pp.stride_w)]
    if stride[0] <= 0 or stride[1] <= 0:
        raise fail(layer, f"stride must be positive (got {stride})")
    if pp.global_pooling and (pad != [0, 0] or stride != [1, 1]):
        raise fail(layer, f"with global_pooling: true, only pad 0 and stride 1 are allowed "
                          f"(got pad {pad}, stride {stride})")
    if pad != [0, 0]:
        if pp.pool not in (0, 1):  # MAX, AVE
            raise fail(layer, "padding is implemented only for AVE and MAX pooling "
                              f"(pool: {_POOL_NAMES.get(pp.pool, pp.pool)}, pad {pad})")
        if pad[0] >= kernel[0] or pad[1] >= kernel[1]:
            raise fail(layer, f"pad must be smaller than the kernel (pad {pad}, kernel {kernel})")
    return kernel, stride, pad


_POOL_NAMES = {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}


def pool_method_name(pool: int) -> str:
    return _POOL_NAMES.get(int(pool), str(pool))


def ceil_rounding(pp) -> bool:
    """True for CEIL: BVLC ``round_mode`` wins; the fork's ``ceil_mode`` text field is honoured too."""
    if pp.HasField("round_mode"):
        return pp.round_mode == 0
    if "ceil_mode" in pp.DESCRIPTOR.fields_by_name and pp.HasField("ceil_mode"):
        return bool(pp.ceil_mode)
    return True


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil: bool, pad_any: bool) -> int:
    """pooling_layer.cpp Reshape: float division rounded up (CEIL) or down, +1, then
    the last window is dropped if it would start in the bottom/right padding --
    only when some padding (h or w) is non-zero."""
    import math

    q = float(size + 2 * pad - kernel) / float(stride)
    out = int(math.ceil(q) if ceil else math.floor(q)) + 1
    if pad_any and (out - 1) * stride >= size + pad:
        out -= 1
    return out
