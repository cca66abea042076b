"""A train/test net's deploy form: what a detector's test net or an ONNX export is built from.

``deploy_form`` turns a train_val (or Fast R-CNN train) prototxt into its TEST
net with the data layers replaced by one Input layer and the label-needing
layers dropped, as Caffe users write deploy.prototxt by hand (and as the
fork's test.prototxt is for its train.prototxt); ``export_form`` says whether
a net needs it and which layers went.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

DEFAULT_DATA_SIDE = 224   # a data top whose size no layer declares: 224x224 (ImageNet's crop)


def _declared_shape(lp, i: int) -> Optional[Tuple[int, ...]]:
    """Top ``i``'s shape as the data layer declares it (``layers.input``), unknowns filled in:
    batch 1, channels 3 (x siamese_size for the Jigsaw++ tiles), sides 224; None if unknown."""
    from caffe_compat.layers import _registry
    from caffe_compat.layers.input import NetInput

    try:
        cls = _registry.get(lp.type, lp.name)
    except Exception:   # noqa: BLE001 - an unregistered type: the caller guesses
        return None
    if not (isinstance(cls, type) and issubclass(cls, NetInput)) or lp.type == "Input":
        return None
    probe = cls.__new__(cls)
    probe.lp, probe.layer_name = lp, lp.name
    try:
        declared = probe.declared_shapes()
    except Exception:   # noqa: BLE001 - a malformed layer: the net build reports it
        return None
    if i >= len(declared) or declared[i] is None:
        return None
    siamese = int(getattr(lp.transform_param, "siamese_size", 1) or 1)
    fill = [1, 3 * siamese] + [DEFAULT_DATA_SIDE] * 8
    dims = [int(d) if d is not None else fill[min(j, len(fill) - 1)] for j, d in enumerate(declared[i])]
    return tuple([1] + dims[1:]) if dims else ()   # batch 1: the deploy form's batch is dynamic


# Long on purpose: one pass over the TEST layers that decides data tops, dead tops and the Softmax
# left by each dropped loss; the rules are listed in the docstring in the same order.
def deploy_form(param, path: Optional[str] = None,
                input_shapes: Optional[Mapping[str, Sequence[int]]] = None, keep_losses: bool = False):
    """The target's deploy net: its TEST-phase layers, data layers replaced by one Input layer.

    * Data layers (Input, Data, ImageData, HDF5Data, MemoryData, WindowData,
      DummyData, bottomless Python) become one ``Input`` layer ``input``
      whose tops are the data tops some non-loss layer still reads (Fast
      R-CNN: ``data`` and ``rois``).  Shapes: ``input_shapes``, else an
      Input layer's own, else ``data`` 1x3xSxS (S = crop_size or 224), ``rois``
      1x5, others (1,).
    * Loss and Accuracy layers go, with every layer that depends on what
      they or the dropped data tops produce; a ``SoftmaxWithLoss`` leaves a
      ``Softmax`` on its scores (``cls_score`` -> ``cls_prob``, else
      ``<bottom>_prob``), as Fast R-CNN's test.prototxt has.
    * include/exclude rules are cleared (the net is already the TEST one).
    * ``keep_losses``: Loss and Accuracy layers stay, and every data top
      they read (labels) becomes an input as well.
    """
    from caffe_compat.layers import is_data_layer, needs_labels
    from caffe_compat.net import PHASES, filter_layers
    from caffe_compat.proto import caffe_pb2

    kept = filter_layers(param, PHASES["TEST"], 0, list(param.state.stage), path)
    shapes: Dict[str, Tuple[int, ...]] = {}
    data_tops: List[str] = []
    rest = []
    for lp in kept:
        if is_data_layer(lp):
            in_shapes = list(lp.input_param.shape) if lp.type == "Input" else []
            for i, t in enumerate(lp.top):
                data_tops.append(t)
                declared = _declared_shape(lp, i)
                if in_shapes:
                    shapes[t] = tuple(int(d) for d in in_shapes[0 if len(in_shapes) == 1 else i].dim)
                elif declared is not None:
                    shapes[t] = declared
                elif t == "data":
                    s = int(lp.transform_param.crop_size) or DEFAULT_DATA_SIDE
                    shapes[t] = (1, 3, s, s)
                elif t == "rois":
                    shapes[t] = (1, 5)
                else:
                    shapes[t] = (1,)
        else:
            rest.append(lp)
    shapes.update({k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()})
    is_loss = [not keep_losses and needs_labels(lp) for lp in rest]
    read = {b for lp, loss in zip(rest, is_loss) if not loss for b in lp.bottom}
    dead = {t for t in data_tops if t not in read}
    layers = []
    for lp, loss in zip(rest, is_loss):
        if loss or any(b in dead for b in lp.bottom):
            dead.update(t for t in lp.top if not (t in lp.bottom))   # in-place tops stay alive
            if lp.type == "SoftmaxWithLoss" and lp.bottom[0] not in dead:
                b = lp.bottom[0]
                name = b[:-len("_score")] + "_prob" if b.endswith("_score") else b + "_prob"
                layers.append(caffe_pb2.LayerParameter(name=name, type="Softmax", bottom=[b], top=[name]))
            continue
        out = caffe_pb2.LayerParameter()
        out.CopyFrom(lp)
        del out.include[:]
        del out.exclude[:]
        layers.append(out)
    net = caffe_pb2.NetParameter(name=param.name)
    inp = net.layer.add(name="input", type="Input")
    for t in data_tops:
        if t not in dead:
            inp.top.append(t)
            inp.input_param.shape.add().dim.extend(shapes[t])
    net.layer.extend(layers)
    return net


def export_form(prototxt, keep_losses: bool = False,
                input_shapes: Optional[Mapping[str, Sequence[int]]] = None):
    """(NetParameter, path, dropped layer names): the net ONNX gets.

    A deploy net is exported as it is.  A train/test net (data layers other
    than Input, or losses) is exported in its deploy form
    (``deploy_form``): TEST phase, data layers replaced by one Input
    layer, layers that need labels dropped (``keep_losses``: kept, with the
    labels as inputs).
    """
    from caffe_compat.layers import is_data_layer, needs_labels
    from caffe_compat.net import PHASES, _read_param, filter_layers

    param, path = _read_param(prototxt)
    kept = filter_layers(param, PHASES["TEST"], 0, list(param.state.stage), path)
    is_data = [is_data_layer(lp) for lp in kept]
    needs = any(d and lp.type != "Input" for lp, d in zip(kept, is_data)) or \
        (not keep_losses and any(needs_labels(lp) for lp in kept)) or len(kept) != len(param.layer)
    if not needs:
        return param, path, []
    form = deploy_form(param, path, input_shapes, keep_losses=keep_losses)
    names = {lp.name for lp in form.layer}
    dropped = [lp.name for lp, d in zip(kept, is_data) if not d and lp.name not in names]
    return form, path, dropped


__all__ = ["deploy_form", "export_form", "DEFAULT_DATA_SIDE"]
