"""Legacy nets and solvers to the current form: a port of Caffe's upgrade_proto.

Mirrors ``src/caffe/util/upgrade_proto.cpp`` (BVLC 9b89154): the same steps,
tested and applied in the same order as ``UpgradeNetAsNeeded``:

1. ``V0ToV1``      V0 ``layers { layer { ... } }``: padding layers folded into
                   the next conv/pool, then each V0 field moved per type string.
2. ``DataTransform`` V1 Data/ImageData/WindowData scale, mean_file, crop_size,
                   mirror moved into ``transform_param``.
3. ``V1ToV2``      ``layers`` (enum type) -> ``layer`` (type string),
                   blobs_lr/weight_decay/param/blob_share_mode -> ``param``.
4. ``Input``       ``input`` + ``input_shape``/``input_dim`` -> an ``Input``
                   layer named "input" at the front (inputs without any shape,
                   as in old caffemodels, are simply dropped).
5. ``BatchNorm``   a BatchNorm declaring exactly 3 ``param`` gets lr_mult 0 and
                   decay_mult 0 on all of them.

Where Caffe would LOG(FATAL), or LOG(ERROR) "not fully compatible" and go on
with a silently different net, this raises ``UpgradeError`` naming the file,
the layer and the field.  Each applied step is announced with an
``UpgradeWarning``.

Blobs stay with their layers: layers map 1:1 through every step except that
V0 padding layers (which have no blobs) disappear and the Input layer is new;
``upgrade_net_traced`` reports, for each resulting layer, the index of the
source layer it came from.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .errors import UpgradeError
from .proto import caffe_pb2

pb = caffe_pb2
V1 = pb.V1LayerParameter


class UpgradeWarning(UserWarning):
    """A legacy file was upgraded (one warning per applied step)."""


@dataclass(frozen=True)
class Step:
    """One upgrade: ``needs(msg)`` says whether ``apply(msg, ctx)`` has work to do."""
    name: str
    what: str
    needs: Callable
    apply: Callable


class _Ctx:
    def __init__(self, path: Optional[str], n_layers: int):
        self.path = path
        # origin[i]: index, in the message as given, of the layer that became layer i
        self.origin: List[Optional[int]] = list(range(n_layers))

    def error(self, msg: str, layer: Optional[str] = None, index: Optional[int] = None) -> UpgradeError:
        where = f"{self.path}: " if self.path else ""
        if layer is not None or index is not None:
            where += f"layer {index} '{layer or ''}': "
        return UpgradeError(where + msg)


# --------------------------------------------------------------------- V0 -> V1

# V0 type string -> V1 enum name (UpgradeV0LayerType)
V0_TYPES = {
    "accuracy": "ACCURACY", "bnll": "BNLL", "concat": "CONCAT", "conv": "CONVOLUTION",
    "data": "DATA", "dropout": "DROPOUT", "euclidean_loss": "EUCLIDEAN_LOSS",
    "flatten": "FLATTEN", "hdf5_data": "HDF5_DATA", "hdf5_output": "HDF5_OUTPUT",
    "im2col": "IM2COL", "images": "IMAGE_DATA", "infogain_loss": "INFOGAIN_LOSS",
    "innerproduct": "INNER_PRODUCT", "lrn": "LRN",
    "multinomial_logistic_loss": "MULTINOMIAL_LOGISTIC_LOSS", "pool": "POOLING",
    "relu": "RELU", "sigmoid": "SIGMOID", "softmax": "SOFTMAX", "softmax_loss": "SOFTMAX_LOSS",
    "split": "SPLIT", "tanh": "TANH", "window_data": "WINDOW_DATA",
}

# V0 field -> {V0 type -> (V1 sub-message, its field)}; "*" means any type.
# Fields absent here (new_num, new_channels) are ignored, as Caffe ignores them.
_CONV_IP = lambda f: {"conv": ("convolution_param", f), "innerproduct": ("inner_product_param", f)}  # noqa: E731
_DATA4 = lambda f: {"data": ("data_param", f), "hdf5_data": ("hdf5_data_param", f),  # noqa: E731
                    "images": ("image_data_param", f), "window_data": ("window_data_param", f)}
V0_FIELDS = {
    "num_output": _CONV_IP("num_output"),
    "biasterm": _CONV_IP("bias_term"),
    "weight_filler": _CONV_IP("weight_filler"),
    "bias_filler": _CONV_IP("bias_filler"),
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"), "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": dict(_DATA4("source"), infogain_loss=("infogain_loss_param", "source")),
    "scale": {"*": ("transform_param", "scale")},
    "meanfile": {"*": ("transform_param", "mean_file")},
    "batchsize": _DATA4("batch_size"),
    "cropsize": {"*": ("transform_param", "crop_size")},
    "mirror": {"*": ("transform_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"), "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("hdf5_output_param", None)},
}


def _needs_v0(net) -> bool:
    return any(l.HasField("layer") for l in net.layers)


def _fold_padding_layers(net, ctx: _Ctx) -> Tuple[list, List[int]]:
    """UpgradeV0PaddingLayers: drop "padding" layers, moving their pad downstream.

    Returns the kept V1 layers (copies) and their indices in ``net.layers``.
    """
    last_top = {name: -1 for name in net.input}  # blob -> index of the layer that last wrote it
    kept, kept_idx = [], []
    src = net.layers
    for i, conn in enumerate(src):
        v0 = conn.layer
        if v0.type != "padding":
            c = V1()
            c.CopyFrom(conn)
            kept.append(c)
            kept_idx.append(i)
        for j, blob in enumerate(conn.bottom):
            if blob not in last_top:
                raise ctx.error(f"bottom '{blob}' is produced by no earlier layer and is not a net input",
                                v0.name, i)
            k = last_top[blob]
            if k == -1 or src[k].layer.type != "padding":
                continue
            pad_layer = src[k]
            if v0.type not in ("conv", "pool"):
                raise ctx.error(f"takes the output of padding layer '{pad_layer.layer.name}'; expected a "
                                f"conv or pool layer there, got type '{v0.type}'", v0.name, i)
            if len(conn.bottom) != 1:
                raise ctx.error("a layer fed by a padding layer must have exactly 1 bottom, "
                                f"has {len(conn.bottom)}", v0.name, i)
            if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise ctx.error("padding layer must have exactly 1 bottom and 1 top, has "
                                f"{len(pad_layer.bottom)} and {len(pad_layer.top)}",
                                pad_layer.layer.name, k)
            kept[-1].layer.pad = pad_layer.layer.pad
            kept[-1].bottom[j] = pad_layer.bottom[0]
        for blob in conn.top:
            last_top[blob] = i
    return kept, kept_idx


def _set(msg, field: str, value) -> None:
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if fd.is_repeated:
        getattr(msg, field).append(value)
    elif fd.message_type is not None:
        getattr(msg, field).CopyFrom(value)
    else:
        setattr(msg, field, value)


def _upgrade_v0_layer(conn, out, ctx: _Ctx, index: int) -> None:
    """UpgradeV0LayerParameter: one V0 connection -> one V1 layer (in ``out``)."""
    out.Clear()
    out.bottom.extend(conn.bottom)
    out.top.extend(conn.top)
    if not conn.HasField("layer"):
        return
    v0 = conn.layer
    if v0.HasField("name"):
        out.name = v0.name
    t = v0.type
    if v0.HasField("type"):
        if t not in V0_TYPES:
            raise ctx.error(f"unknown V0 layer type '{t}'; expected one of {', '.join(sorted(V0_TYPES))}",
                            v0.name, index)
        out.type = V1.LayerType.Value(V0_TYPES[t])
    out.blobs.extend(v0.blobs)
    out.blobs_lr.extend(v0.blobs_lr)
    out.weight_decay.extend(v0.weight_decay)
    for fd in v0.DESCRIPTOR.fields:  # declaration order, as Caffe tests them
        rule = V0_FIELDS.get(fd.name)
        if rule is None or not v0.HasField(fd.name):
            continue
        target = rule.get(t) or rule.get("*")
        if target is None:
            raise ctx.error(f"V0 parameter '{fd.name}' is not valid for layer type '{t}'; "
                            f"expected it only for {', '.join(sorted(rule))}", v0.name, index)
        sub, field = target
        value = getattr(v0, fd.name)
        if fd.name == "pool":  # V0 and V1 pool enums share names, not necessarily numbers
            value = pb.PoolingParameter.PoolMethod.Value(pb.V0LayerParameter.PoolMethod.Name(value))
        if field is None:
            getattr(out, sub).CopyFrom(value)
        else:
            _set(getattr(out, sub), field, value)


def _apply_v0(net, ctx: _Ctx) -> None:
    """UpgradeV0Net: padding layers folded, then every layer upgraded."""
    kept, kept_idx = _fold_padding_layers(net, ctx)
    name = net.name if net.HasField("name") else None
    inputs, dims = list(net.input), list(net.input_dim)
    fb = net.force_backward if net.HasField("force_backward") else None
    net.Clear()  # Caffe keeps only these net-level fields of a V0 net
    if name is not None:
        net.name = name
    for conn, i in zip(kept, kept_idx):
        _upgrade_v0_layer(conn, net.layers.add(), ctx, i)
    net.input.extend(inputs)
    net.input_dim.extend(dims)
    if fb is not None:
        net.force_backward = fb
    ctx.origin = [ctx.origin[i] for i in kept_idx]


# ------------------------------------------------------------ data transform

_DATA_TYPES = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param", V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


def _needs_data(net) -> bool:
    for l in net.layers:
        sub = _DATA_TYPES.get(l.type)
        if sub and any(getattr(l, sub).HasField(f) for f in _TRANSFORM_FIELDS):
            return True
    return False


def _apply_data(net, ctx: _Ctx) -> None:
    """UpgradeNetDataTransformation."""
    for l in net.layers:
        sub = _DATA_TYPES.get(l.type)
        if not sub:
            continue
        p = getattr(l, sub)
        for f in _TRANSFORM_FIELDS:
            if p.HasField(f):
                setattr(l.transform_param, f, getattr(p, f))
                p.ClearField(f)


# --------------------------------------------------------------------- V1 -> V2

# V1 enum name -> type string (UpgradeV1LayerType), plus the Jigsaw++ fork's MergeData
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss",
    "IM2COL": "Im2col", "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN", "POOLING": "Pooling",
    "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    "MERGEDATA": "MergeData",
}

# sub-messages copied as they are (UpgradeV1LayerParameter's list, then the fork's)
V1_PARAMS = (
    "accuracy_param", "argmax_param", "concat_param", "contrastive_loss_param",
    "convolution_param", "data_param", "dropout_param", "dummy_data_param", "eltwise_param",
    "exp_param", "hdf5_data_param", "hdf5_output_param", "hinge_loss_param",
    "image_data_param", "infogain_loss_param", "inner_product_param", "lrn_param",
    "memory_data_param", "mvn_param", "pooling_param", "power_param", "relu_param",
    "sigmoid_param", "softmax_param", "slice_param", "tanh_param", "threshold_param",
    "window_data_param", "transform_param", "loss_param",
    "merge_data_param",
)


def _needs_v1(net) -> bool:
    return len(net.layers) > 0


def _param_at(layer, i: int):
    while len(layer.param) <= i:
        layer.param.add()
    return layer.param[i]


def _upgrade_v1_layer(v1, out, ctx: _Ctx, index: int) -> None:
    """UpgradeV1LayerParameter: one V1 layer -> one LayerParameter (in ``out``)."""
    out.Clear()
    out.bottom.extend(v1.bottom)
    out.top.extend(v1.top)
    if v1.HasField("name"):
        out.name = v1.name
    out.include.extend(v1.include)
    out.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        enum_name = V1.LayerType.Name(v1.type)
        if enum_name not in V1_TYPES:
            raise ctx.error(f"V1 layer type {enum_name} has no current equivalent", v1.name, index)
        out.type = V1_TYPES[enum_name]
    out.blobs.extend(v1.blobs)
    for i, name in enumerate(v1.param):
        _param_at(out, i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        _param_at(out, i).share_mode = pb.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        _param_at(out, i).lr_mult = lr
    for i, wd in enumerate(v1.weight_decay):
        _param_at(out, i).decay_mult = wd
    out.loss_weight.extend(v1.loss_weight)
    for f in V1_PARAMS:
        if v1.HasField(f):
            getattr(out, f).CopyFrom(getattr(v1, f))
    if v1.HasField("layer"):
        raise ctx.error("V1 layer still holds a V0 'layer' message; expected V0 nets to be upgraded "
                        "first", v1.name, index)


def _apply_v1(net, ctx: _Ctx) -> None:
    """UpgradeV1Net: ``layers`` -> ``layer``."""
    if len(net.layer) > 0:
        raise ctx.error("the net has both 'layer' and 'layers' fields; expected only 'layer' "
                        "(current format: layer { type: \"Convolution\" ... }) or only the legacy "
                        "'layers' (layers { type: CONVOLUTION ... }); switch the definition to "
                        "'layer' by hand")
    old = list(net.layers)
    new = []
    for i, v1 in enumerate(old):
        lp = pb.LayerParameter()
        _upgrade_v1_layer(v1, lp, ctx, i)
        new.append(lp)
    net.ClearField("layers")
    net.layer.extend(new)


# ------------------------------------------------------------------ input fields

def _needs_input(net) -> bool:
    return len(net.input) > 0


def _apply_input(net, ctx: _Ctx) -> None:
    """UpgradeNetInput: the input fields become an Input layer at the front."""
    has_shape, has_dim = len(net.input_shape) > 0, len(net.input_dim) > 0
    if has_shape or has_dim:
        n = len(net.input)
        if has_shape and len(net.input_shape) < n:
            raise ctx.error(f"net has {n} inputs but {len(net.input_shape)} input_shape; expected one "
                            "input_shape per input")
        if not has_shape and len(net.input_dim) < 4 * n:
            raise ctx.error(f"net has {n} inputs but {len(net.input_dim)} input_dim; expected 4 "
                            "input_dim per input")
        lp = pb.LayerParameter(name="input", type="Input")
        for i, name in enumerate(net.input):
            lp.top.append(name)
            shape = lp.input_param.shape.add()
            if has_shape:
                shape.CopyFrom(net.input_shape[i])
            else:
                shape.dim.extend(net.input_dim[4 * i:4 * i + 4])
        layers = list(net.layer)
        net.ClearField("layer")
        net.layer.extend([lp] + layers)
        ctx.origin = [None] + ctx.origin
    net.ClearField("input")
    net.ClearField("input_shape")
    net.ClearField("input_dim")


# --------------------------------------------------------------------- BatchNorm

def _needs_bn(net) -> bool:
    return any(l.type == "BatchNorm" and len(l.param) == 3 for l in net.layer)


def _apply_bn(net, ctx: _Ctx) -> None:
    """UpgradeNetBatchNorm: the statistics of old BatchNorm nets must not learn."""
    for l in net.layer:
        if l.type == "BatchNorm" and len(l.param) == 3:
            for p in l.param:
                p.lr_mult = 0.0
                p.decay_mult = 0.0


NET_STEPS: Sequence[Step] = (
    Step("V0ToV1", "V0 layer parameters (V0LayerParameter, padding layers)", _needs_v0, _apply_v0),
    Step("DataTransform", "data-layer transformation fields (now transform_param)", _needs_data,
         _apply_data),
    Step("V1ToV2", "V1 layer parameters ('layers' with enum types)", _needs_v1, _apply_v1),
    Step("Input", "input/input_dim/input_shape fields (now an Input layer)", _needs_input, _apply_input),
    Step("BatchNorm", "BatchNorm layers declaring 3 params (now lr_mult/decay_mult 0)", _needs_bn,
         _apply_bn),
)


def net_needs_upgrade(net) -> bool:
    """NetNeedsUpgrade: whether any step would change ``net``."""
    return any(s.needs(net) for s in NET_STEPS)


def upgrade_net_traced(net, path: Optional[str] = None):
    """Upgrade ``net`` in place; return ``(net, applied step names, origin)``.

    ``origin[i]`` is the index of the layer of the given message (in
    ``layers`` for V0/V1 input, ``layer`` otherwise) that became layer ``i``,
    or ``None`` for the Input layer made from the input fields.
    """
    n = len(net.layers) if len(net.layers) else len(net.layer)
    ctx = _Ctx(path, n)
    applied = []
    for step in NET_STEPS:
        if step.needs(net):
            step.apply(net, ctx)
            applied.append(step.name)
            warnings.warn(f"{path or '<net>'}: upgraded deprecated {step.what}", UpgradeWarning,
                          stacklevel=3)
    return net, applied, ctx.origin


def upgrade_net(net, path: Optional[str] = None):
    """Upgrade a NetParameter in place, as Caffe does on every read.

    Returns ``(net, applied_step_names)``; raises ``UpgradeError``.
    """
    net, applied, _ = upgrade_net_traced(net, path)
    return net, applied


# ------------------------------------------------------------------------ solver

SOLVER_TYPES = {"SGD": "SGD", "NESTEROV": "Nesterov", "ADAGRAD": "AdaGrad", "RMSPROP": "RMSProp",
                "ADADELTA": "AdaDelta", "ADAM": "Adam"}


def _needs_solver_type(s) -> bool:
    return s.HasField("solver_type")


def _apply_solver_type(s, ctx: _Ctx) -> None:
    """UpgradeSolverType: the solver_type enum becomes the type string."""
    if s.HasField("type"):
        raise ctx.error("the solver sets both the old 'solver_type' (enum) and the new 'type' "
                        "(string); expected only one")
    s.type = SOLVER_TYPES[pb.SolverParameter.SolverType.Name(s.solver_type)]
    s.ClearField("solver_type")


SOLVER_STEPS: Sequence[Step] = (
    Step("SolverType", "'solver_type' field (enum; now the 'type' string)", _needs_solver_type,
         _apply_solver_type),
)


def upgrade_solver(solver, path: Optional[str] = None):
    """UpgradeSolverAsNeeded, in place: returns ``(solver, applied_step_names)``.

    ``snapshot_prefix`` is not touched here: Caffe fills it in only when it
    reads a solver to train (see ``resolve_snapshot_prefix``), and
    ``upgrade_solver_proto_text`` leaves it as written.
    """
    ctx = _Ctx(path, 0)
    applied = []
    for step in SOLVER_STEPS:
        if step.needs(solver):
            step.apply(solver, ctx)
            applied.append(step.name)
            warnings.warn(f"{path or '<solver>'}: upgraded deprecated {step.what}", UpgradeWarning,
                          stacklevel=2)
    return solver, applied


def resolve_snapshot_prefix(solver, path: str) -> None:
    """UpgradeSnapshotPrefixProperty (upgrade_proto.cpp), in place.

    No ``snapshot_prefix``: it becomes the solver file's path without its
    extension.  A prefix naming an existing directory (tested relative to the
    current directory, as Caffe does): the solver file's stem inside it.
    Any other prefix stays as written (relative to the current directory).
    """
    if not solver.HasField("snapshot_prefix"):
        solver.snapshot_prefix = os.path.splitext(path)[0]
    elif os.path.isdir(solver.snapshot_prefix):
        stem = os.path.splitext(os.path.basename(path))[0]
        solver.snapshot_prefix = os.path.join(solver.snapshot_prefix, stem)


__all__ = ["Step", "UpgradeWarning", "NET_STEPS", "SOLVER_STEPS", "net_needs_upgrade",
           "upgrade_net", "upgrade_net_traced", "upgrade_solver", "resolve_snapshot_prefix",
           "V0_TYPES", "V1_TYPES"]
