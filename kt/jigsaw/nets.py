"""The 9-tower context-free network (AlexNet or VGG16 towers) as a NetParameter."""
from __future__ import annotations

from typing import Optional

from caffe_compat.errors import UnsupportedParameter

from ..puzzle import TILE
from .merge import NTILES

AUTHORS_BATCH = 256


def _param_spec(lp, name: Optional[str], lr: float, decay: float):
    p = lp.param.add()
    if name:
        p.name = name
    p.lr_mult, p.decay_mult = lr, decay


def _filler(f, kind: str, value: float):
    f.type = kind
    if kind == "gaussian":
        f.std = value
    elif kind == "constant":
        f.value = value


def _layer(net, name, type_, bottom, top):
    lp = net.layer.add()
    lp.name, lp.type = name, type_
    lp.bottom.extend([bottom] if isinstance(bottom, str) else bottom)
    lp.top.extend([top] if isinstance(top, str) else top)
    return lp


def _conv(net, name, bottom, top, pname, n, k, stride=1, pad=0, group=1, std=0.01, bias=0.0, filler="gaussian"):
    lp = _layer(net, name, "Convolution", bottom, top)
    _param_spec(lp, f"{pname}_w", 1, 1)
    _param_spec(lp, f"{pname}_b", 2, 0)
    cp = lp.convolution_param
    cp.num_output, cp.kernel_size[:] = n, [k]
    if stride != 1:
        cp.stride[:] = [stride]
    if pad:
        cp.pad[:] = [pad]
    if group != 1:
        cp.group = group
    _filler(cp.weight_filler, filler, std)
    _filler(cp.bias_filler, "constant", bias)
    return lp


def _fc(net, name, bottom, top, n, std, bias, pname=None, filler="gaussian"):
    lp = _layer(net, name, "InnerProduct", bottom, top)
    _param_spec(lp, f"{pname}_w" if pname else None, 1, 1)
    _param_spec(lp, f"{pname}_b" if pname else None, 2, 0)
    ip = lp.inner_product_param
    ip.num_output = n
    _filler(ip.weight_filler, filler, std)
    _filler(ip.bias_filler, "constant", bias)
    return lp


def _pool(net, name, bottom, top, k=3, s=2):
    lp = _layer(net, name, "Pooling", bottom, top)
    lp.pooling_param.pool = lp.pooling_param.MAX
    lp.pooling_param.kernel_size, lp.pooling_param.stride = k, s


def _lrn(net, name, bottom, top):
    lp = _layer(net, name, "LRN", bottom, top)
    lp.lrn_param.local_size, lp.lrn_param.alpha, lp.lrn_param.beta = 5, 1e-4, 0.75


def _relu(net, name, blob):
    _layer(net, name, "ReLU", blob, blob)


def _drop(net, name, blob, ratio=0.5):
    _layer(net, name, "Dropout", blob, blob).dropout_param.dropout_ratio = ratio


def _even(x: float) -> int:
    return max(2, int(round(x / 2.0)) * 2)  # group-2 convolutions need even widths


VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _tower(net, arch: str, t: int, width: float, fc6: int, dropout: float, init: str) -> str:
    """One tower on blob ``tile{t}``; tower 1's layer names are the deploy names, others get ``_t{t}``."""
    sfx = "" if t == 1 else f"_t{t}"
    x = f"tile{t}_n"
    _layer(net, f"datamvn{sfx}", "MVN", f"tile{t}", x).mvn_param.across_channels = True
    _layer(net, f"datascale{sfx}", "Power", x, x).power_param.scale = 50
    cf = "msra" if init == "msra" else "gaussian"
    b1 = 1 if cf == "gaussian" else 0  # the authors' bias 1 suits their gaussian init only
    if arch == "alexnet":
        c = [_even(96 * width), _even(256 * width), _even(384 * width), _even(384 * width), _even(256 * width)]
        # msra's gain assumes unit-variance inputs; the tiles arrive with std 50 (the Power layer)
        std1 = 0.01 if cf == "gaussian" else (2.0 / (3 * 11 * 11)) ** 0.5 / 50.0
        _conv(net, f"conv1{sfx}", x, f"conv1{sfx}", "conv1", c[0], 11, stride=2, std=std1)
        _relu(net, f"relu1{sfx}", f"conv1{sfx}")
        _pool(net, f"pool1{sfx}", f"conv1{sfx}", f"pool1{sfx}")
        _lrn(net, f"norm1{sfx}", f"pool1{sfx}", f"norm1{sfx}")
        _conv(net, f"conv2{sfx}", f"norm1{sfx}", f"conv2{sfx}", "conv2", c[1], 5, pad=2, group=2, bias=b1, filler=cf)
        _relu(net, f"relu2{sfx}", f"conv2{sfx}")
        _pool(net, f"pool2{sfx}", f"conv2{sfx}", f"pool2{sfx}")
        _lrn(net, f"norm2{sfx}", f"pool2{sfx}", f"norm2{sfx}")
        _conv(net, f"conv3{sfx}", f"norm2{sfx}", f"conv3{sfx}", "conv3", c[2], 3, pad=1, filler=cf)
        _relu(net, f"relu3{sfx}", f"conv3{sfx}")
        _conv(net, f"conv4{sfx}", f"conv3{sfx}", f"conv4{sfx}", "conv4", c[3], 3, pad=1, group=2, bias=b1, filler=cf)
        _relu(net, f"relu4{sfx}", f"conv4{sfx}")
        _conv(net, f"conv5{sfx}", f"conv4{sfx}", f"conv5{sfx}", "conv5", c[4], 3, pad=1, group=2, bias=b1, filler=cf)
        _relu(net, f"relu5{sfx}", f"conv5{sfx}")
        _pool(net, f"pool5{sfx}", f"conv5{sfx}", f"pool5{sfx}")
        last, std6, filler = f"pool5{sfx}", 0.005, cf
    elif arch == "vgg16":
        last = x
        for bi, block in enumerate(VGG16_BLOCKS, 1):
            for ci, ch in enumerate(block, 1):
                name = f"conv{bi}_{ci}{sfx}"
                _conv(net, name, last, name, f"conv{bi}_{ci}", max(1, int(round(ch * width))), 3, pad=1,
                      filler="msra")
                _relu(net, f"relu{bi}_{ci}{sfx}", name)
                last = name
            _pool(net, f"pool{bi}{sfx}", last, f"pool{bi}{sfx}", k=2, s=2)
            last = f"pool{bi}{sfx}"
        std6, filler = 0.005, "gaussian"
    else:
        raise UnsupportedParameter(f"arch must be 'alexnet' or 'vgg16', got {arch!r}")
    _fc(net, f"fc6{sfx}", last, f"fc6{sfx}", fc6, std6, 1.0 if filler == "gaussian" else 0.0, pname="fc6",
        filler=filler)
    _relu(net, f"relu6{sfx}", f"fc6{sfx}")
    if dropout > 0:
        _drop(net, f"drop6{sfx}", f"fc6{sfx}", dropout)
    return f"fc6{sfx}"


def cfn_net_param(n_perms: int = 701, arch: str = "alexnet", batch_size: int = AUTHORS_BATCH,
                  width: float = 1.0, fc6: int = 1024, fc7: int = 4096, dropout: float = 0.5,
                  init: str = "authors"):
    """The 9-tower context-free network as a ``NetParameter`` (inputs ``data`` N x 27 x 64 x 64, ``label``).

    ``alexnet`` at width 1 is ``prototxt/jigsaw_cfn_pretext_9tower.prototxt``
    with fc8 sized ``n_perms`` (CaffeNet order, conv1 stride 2, fc6 1024 per
    tile, concat 9216, fc7 4096, the authors' fillers).  ``vgg16``: 13 3x3
    convolutions in VGG16's five blocks (msra fillers, no LRN) on the same
    64x64 tiles, so pool5 is 2x2x512 -> fc6 1024 per tile; the authors released
    no VGG16 Jigsaw++ definition, this is our choice.  ``width`` scales
    every convolution; ``dropout`` 0 drops the Dropout layers and ``init="msra"``
    uses msra weight fillers everywhere (both only for short test runs).
    """
    if init not in ("authors", "msra"):
        raise UnsupportedParameter(f"init must be 'authors' or 'msra', got {init!r}")
    from caffe_compat.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name=f"jigsaw_cfn_pretext_9tower_{arch}")
    inp = _layer(net, "data", "Input", [], ["data", "label"])
    inp.input_param.shape.add().dim.extend([batch_size, 3 * NTILES, TILE, TILE])
    inp.input_param.shape.add().dim.extend([batch_size])
    sl = _layer(net, "slice_tiles", "Slice", "data", [f"tile{t}" for t in range(1, NTILES + 1)])
    sl.slice_param.axis = 1
    sl.slice_param.slice_point.extend([3 * t for t in range(1, NTILES)])
    heads = [_tower(net, arch, t, width, fc6, dropout, init) for t in range(1, NTILES + 1)]
    _layer(net, "concat", "Concat", heads, "concat")
    fc_fill = "msra" if init == "msra" else "gaussian"
    _fc(net, "fc7", "concat", "fc7", fc7, 0.005, 1.0 if init == "authors" else 0.0, filler=fc_fill)
    _relu(net, "relu7", "fc7")
    if dropout > 0:
        _drop(net, "drop7", "fc7", dropout)
    _fc(net, "fc8_jigsaw", "fc7", "fc8_jigsaw", int(n_perms), 0.01, 0.0)  # small logits at the start
    acc = _layer(net, "accuracy", "Accuracy", ["fc8_jigsaw", "label"], "accuracy")
    acc.include.add().phase = caffe_pb2.TEST
    _layer(net, "loss", "SoftmaxWithLoss", ["fc8_jigsaw", "label"], "loss")
    return net


def write_cfn_prototxt(path: str, **kw) -> str:
    """``cfn_net_param(**kw)`` written as a prototxt (atomically); returns ``path``."""
    from caffe_compat.prototxt import write_prototxt
    write_prototxt(cfn_net_param(**kw), path)
    return path
