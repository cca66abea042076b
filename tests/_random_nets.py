"""Random small nets drawn from the layer registry, for the sweep test.

``random_net(rng)`` chains 2-6 layers on a small 4-axis input; each layer type
has a generator of valid parameters for the current blob shape.  Types without
a generator are listed in ``NOT_GENERATED`` with the reason (data layers,
losses and layers needing labels or index inputs are covered elsewhere).
"""
from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

Shape = Tuple[int, ...]

NOT_GENERATED = {
    # inputs and data readers: the net's inputs, not layers of its graph
    "Input": "the net's input", "Data": "reads a database", "ImageData": "reads images",
    "HDF5Data": "reads HDF5", "MemoryData": "fed from memory", "WindowData": "reads windows",
    "DummyData": "constant source", "MergeData": "Jigsaw++ data fork", "Parameter": "a learnable source",
    # need labels, indices or several correlated inputs
    "Accuracy": "labels", "ContrastiveLoss": "pairs", "EuclideanLoss": "a loss",
    "HingeLoss": "labels", "InfogainLoss": "labels", "MultinomialLogisticLoss": "labels",
    "SigmoidCrossEntropyLoss": "a loss", "SmoothL1Loss": "a loss", "SoftmaxWithLoss": "labels",
    "BatchReindex": "index input", "Filter": "selector input", "Embed": "index input",
    "ROIPooling": "ROI input (the Fast R-CNN fixtures cover it)", "LSTM": "sequence inputs",
    "RNN": "sequence inputs", "LSTMUnit": "sequence inputs", "Silence": "no top",
    "ArgMax": "integer output (not a float graph)", "Im2col": "an internal layer", "Crop": "two inputs",
}


def _conv(rng, s, deconv=False):
    k = rng.choice([1, 2, 3])
    st = rng.choice([1, 2])
    pad = rng.choice([0, 1]) if k > 1 else 0
    c = s[1]
    group = rng.choice([g for g in (1, 2) if c % g == 0])
    n = rng.choice([2, 4]) * group
    p = (f"num_output: {n} kernel_size: {k} stride: {st} pad: {pad} group: {group} "
         f"weight_filler {{ type: 'gaussian' std: 0.3 }} bias_filler {{ type: 'gaussian' std: 0.1 }}")
    if deconv:
        h, w = [(d - 1) * st - 2 * pad + k for d in s[2:]]
        return "Deconvolution", f"convolution_param {{ {p} }}", (s[0], n, h, w)
    h, w = [(d + 2 * pad - k) // st + 1 for d in s[2:]]
    return "Convolution", f"convolution_param {{ {p} }}", (s[0], n, h, w)


def _pool(rng, s):
    k, st = rng.choice([(2, 2), (3, 2), (3, 1), (2, 1)])
    pad = rng.choice([0, 0, 1]) if k > 1 else 0   # Caffe: pad < kernel
    pool = rng.choice(["MAX", "AVE"])
    mode = rng.choice(["CEIL", "FLOOR"])
    out = []
    for d in s[2:]:
        span = d + 2 * pad - k
        n = (-(-span // st) if mode == "CEIL" else span // st) + 1
        if pad and (n - 1) * st >= d + pad:
            n -= 1
        out.append(n)
    return ("Pooling", f"pooling_param {{ pool: {pool} kernel_size: {k} stride: {st} pad: {pad} "
                       f"round_mode: {mode} }}", (s[0], s[1]) + tuple(out))


def _ip(rng, s):
    n = rng.choice([3, 5, 7])
    return ("InnerProduct", f"inner_product_param {{ num_output: {n} weight_filler {{ type: 'gaussian' "
                            f"std: 0.3 }} bias_filler {{ type: 'gaussian' std: 0.1 }} }}", (s[0], n))


def _lrn(rng, s):
    size = rng.choice([3, 5])
    region = rng.choice(["ACROSS_CHANNELS", "WITHIN_CHANNEL"])
    k = rng.choice([1, 2])
    return ("LRN", f"lrn_param {{ local_size: {size} alpha: 0.3 beta: 0.75 k: {k} norm_region: {region} }}", s)


def _same(t, p=""):
    return lambda rng, s: (t, p, s)


def _power(rng, s):
    return "Power", f"power_param {{ power: {rng.choice([1, 2])} scale: 0.5 shift: 0.25 }}", s


def _elu(rng, s):
    return "ELU", f"elu_param {{ alpha: {rng.choice([0.5, 1.0])} }}", s


def _relu(rng, s):
    return "ReLU", f"relu_param {{ negative_slope: {rng.choice([0, 0.1])} }}", s


def _scale(rng, s):
    return ("Scale", "scale_param { bias_term: true filler { type: 'gaussian' std: 1 } "
                     "bias_filler { type: 'gaussian' std: 0.1 } }", s)


def _bias(rng, s):
    return "Bias", "bias_param { filler { type: 'gaussian' std: 0.5 } }", s


def _bn(rng, s):
    return "BatchNorm", "batch_norm_param { use_global_stats: false }", s


def _softmax(rng, s):
    return "Softmax", "", s


def _flatten(rng, s):
    n = 1
    for d in s[1:]:
        n *= d
    return "Flatten", "", (s[0], n)


def _mvn(rng, s):
    return "MVN", f"mvn_param {{ across_channels: {rng.choice(['true', 'false'])} }}", s


def _reduction(rng, s):
    op = rng.choice(["SUM", "ASUM", "SUMSQ", "MEAN"])
    return "Reduction", f"reduction_param {{ operation: {op} axis: 1 }}", (s[0],)


def _tile(rng, s):
    return "Tile", "tile_param { axis: 1 tiles: 2 }", (s[0], s[1] * 2) + tuple(s[2:])


def _clip(rng, s):
    return "Clip", "clip_param { min: -0.5 max: 0.7 }", s


def _threshold(rng, s):
    return "Threshold", "threshold_param { threshold: 0.1 }", s


def _prelu(rng, s):
    return "PReLU", "prelu_param { filler { type: 'constant' value: 0.2 } }", s


def _spp(rng, s):
    if min(s[2:]) < 4:
        return None
    h = 2
    return ("SPP", f"spp_param {{ pyramid_height: {h} pool: MAX }}",
            (s[0], s[1] * (1 + 4)))


def _reshape(rng, s):
    return "Reshape", "reshape_param { shape { dim: 0 dim: -1 } }", (s[0], _count(s[1:]))


def _count(s):
    n = 1
    for d in s:
        n *= d
    return n


# type -> generator(rng, shape) -> (type, params text, top shape) or None; "4d" needs N x C x H x W
GENERATORS: Dict[str, Tuple[str, Callable]] = {
    "Convolution": ("4d", _conv), "Deconvolution": ("4d", lambda r, s: _conv(r, s, True)),
    "Pooling": ("4d", _pool), "LRN": ("4d", _lrn), "InnerProduct": ("any", _ip),
    "ReLU": ("any", _relu), "Sigmoid": ("any", _same("Sigmoid")), "TanH": ("any", _same("TanH")),
    "AbsVal": ("any", _same("AbsVal")), "BNLL": ("any", _same("BNLL")), "ELU": ("any", _elu),
    "Swish": ("any", _same("Swish")), "Power": ("any", _power), "Exp": ("any", _same("Exp", "exp_param { scale: 0.1 }")),
    "Log": ("pos", _same("Log", "log_param { shift: 10 }")), "Dropout": ("any", _same("Dropout")),
    "Scale": ("4d", _scale), "Bias": ("4d", _bias), "BatchNorm": ("4d", _bn), "Softmax": ("any", _softmax),
    "Flatten": ("any", _flatten), "MVN": ("4d", _mvn), "Reduction": ("any", _reduction),
    "Tile": ("any", _tile), "Clip": ("any", _clip), "Threshold": ("any", _threshold),
    "PReLU": ("4d", _prelu), "SPP": ("4d", _spp), "Reshape": ("any", _reshape),
    "Split": ("any", _same("Split")),
}
# two-bottom or two-top layers: added around the chain
EXTRA = ("Concat", "Eltwise", "Slice")


def random_net(rng: random.Random, name: str = "random") -> str:
    """A prototxt: Input 2xCxHxW, then 2-6 layers, then maybe a fork joined by Concat/Eltwise/Slice."""
    c, h, w = rng.choice([1, 3, 4]), rng.randint(5, 12), rng.randint(5, 12)
    shape: Shape = (2, c, h, w)
    lines = [f'name: "{name}"',
             f'layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 2 dim: {c} '
             f'dim: {h} dim: {w} }} }} }}']
    top = "data"
    shift = False   # Log needs positive inputs: put a Power with shift first
    for i in range(rng.randint(2, 6)):
        if len(shape) < 2:   # after a Reduction: stop the chain
            break
        options = [t for t, (need, _g) in GENERATORS.items()
                   if need in ("any", "pos") or len(shape) == 4]
        t = rng.choice(options)
        need, gen = GENERATORS[t]
        if need == "4d" and min(shape[2:] if len(shape) == 4 else (0,)) < 2:
            continue
        got = gen(rng, shape)
        if got is None:
            continue
        typ, params, out = got
        if any(d <= 0 for d in out) or _count(out) > 20000:
            continue
        if typ == "Log" and not shift:
            lines.append(f'layer {{ name: "pos{i}" type: "Exp" bottom: "{top}" top: "pos{i}" }}')
            top = f"pos{i}"
            shift = True
        name_i = f"{typ.lower()}{i}"
        lines.append(f'layer {{ name: "{name_i}" type: "{typ}" bottom: "{top}" top: "{name_i}" {params} }}')
        top, shape = name_i, out
    if len(shape) >= 2 and rng.random() < 0.6:
        kind = rng.choice(EXTRA)
        if kind == "Slice" and shape[1] >= 2:
            lines.append(f'layer {{ name: "slice" type: "Slice" bottom: "{top}" top: "s_a" top: "s_b" '
                         f'slice_param {{ axis: 1 slice_point: 1 }} }}')
        elif kind == "Concat":
            lines.append(f'layer {{ name: "twin" type: "Sigmoid" bottom: "{top}" top: "twin" }}')
            lines.append(f'layer {{ name: "cat" type: "Concat" bottom: "{top}" bottom: "twin" top: "cat" }}')
        else:
            op = rng.choice(["SUM", "PROD", "MAX"])
            lines.append(f'layer {{ name: "twin" type: "TanH" bottom: "{top}" top: "twin" }}')
            lines.append(f'layer {{ name: "elt" type: "Eltwise" bottom: "{top}" bottom: "twin" top: "elt" '
                         f'eltwise_param {{ operation: {op} }} }}')
    return "\n".join(lines) + "\n"


def generated_types() -> List[str]:
    return sorted(set(GENERATORS) | set(EXTRA))


def uncovered(known: List[str]) -> List[str]:
    """Registry types neither generated nor listed with a reason (should be empty)."""
    return sorted(t for t in known if t not in GENERATORS and t not in EXTRA and t not in NOT_GENERATED)
