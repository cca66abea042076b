"""Narrow copies of the fork's CaffeNet Fast R-CNN train/test prototxts, and random 'exported' weights for them."""
from __future__ import annotations

import os

import numpy as np

WIDTHS = {"conv1": 24, "conv2": 48, "conv3": 64, "conv4": 64, "conv5": 48, "fc6": 256, "fc7": 256}


def narrow(src: str, dst: str, num_classes: int, widths=WIDTHS) -> None:
    """``src`` with num_output scaled down, cls_score/bbox_pred for ``num_classes`` (background included)."""
    from caffe_compat.io import read_net
    from caffe_compat.prototxt import write_prototxt
    net = read_net(src)
    for lp in net.layer:
        if lp.name in widths:
            p = lp.convolution_param if lp.type == "Convolution" else lp.inner_product_param
            p.num_output = widths[lp.name]
        elif lp.name == "cls_score":
            lp.inner_product_param.num_output = num_classes
        elif lp.name == "bbox_pred":
            lp.inner_product_param.num_output = 4 * num_classes
        elif lp.type == "Python":
            lp.python_param.param_str = f"'num_classes': {num_classes}"
    write_prototxt(net, dst)


def solver(path: str, train_net: str, base_lr=0.001, stepsize=30000, max_iter=40000, prefix="caffenet_fast_rcnn",
           momentum=0.9, type="SGD") -> None:
    """The fork's CaffeNet solver settings; ``type: "Adam"`` (momentum2 0.999) for the short from-scratch runs."""
    extra = 'type: "Adam"\nmomentum2: 0.999\n' if type == "Adam" else ""
    with open(path, "w") as f:
        f.write(f'train_net: "{train_net}"\nbase_lr: {base_lr}\nlr_policy: "step"\ngamma: 0.1\n'
                f'stepsize: {stepsize}\ndisplay: 20\naverage_loss: 100\nmomentum: {momentum}\n'
                f'weight_decay: 0.0005\nsnapshot: 0\nsnapshot_prefix: "{prefix}"\nmax_iter: {max_iter}\n'
                f'random_seed: 1\n{extra}')


def random_weights(train_prototxt: str, out: str, num_classes: int, seed: int = 0) -> None:
    """A CaffeNet-shaped caffemodel standing in for an exported one: MSRA-scaled convs/fcs, biases 0.

    conv1 is scaled down by 60 more: its input is mean-subtracted 0..255 pixels, not unit-variance data.
    """
    import torch

    from caffe_compat.net import load_net
    from caffe_compat.weights import save_caffemodel
    k4 = 4 * num_classes
    net = load_net(train_prototxt, phase="TRAIN", python_layers="as_input",
                   input_shapes={"data": (1, 3, 227, 227), "rois": (1, 5), "labels": (1,),
                                 "bbox_targets": (1, k4), "bbox_loss_weights": (1, k4)})
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, blobs in net.params.items():
            w = blobs[0]
            fan_in = int(np.prod(w.shape[1:]))
            std = 0.01 if name == "cls_score" else 0.001 if name == "bbox_pred" else (2.0 / fan_in) ** 0.5
            if name == "conv1":
                std /= 60.0
            w.copy_(torch.randn(w.shape, generator=g) * std)
            if len(blobs) > 1:
                blobs[1].fill_(0.0)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    save_caffemodel(net, out)
