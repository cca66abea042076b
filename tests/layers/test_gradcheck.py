"""torch.autograd.gradcheck (float64) of every differentiable registered layer type, oracle-free.

Each layer's backward (autograd, custom Functions, ``straight_through`` surrogates) is compared with
central differences of its own forward, bottoms and learnable blobs alike.  The table below holds one
or more tiny cases per type; ``NOT_DIFFERENTIABLE`` names the types with no gradient to check and why.
A newly registered type must join one of the two (``test_every_type_is_covered``).

Where Caffe's backward is deliberately not the derivative of its forward, the case keeps away from
that corner (noted on the case), since the NumPy-port tests of each module pin the Caffe formula there.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import numpy as np
import pytest
import torch
from torch.func import functional_call

from _util import labels, make_layer, randn
from caffe_compat import layers as L

# Types without a gradient to check (Caffe's Backward_cpu is NOT_IMPLEMENTED, or there is no bottom).
NOT_DIFFERENTIABLE = {
    "Input": "no bottoms, no blobs: its tops are tensors fed by the caller",
    "Data": "a data layer: tops fed by the data pipeline, no bottoms, no blobs",
    "ImageData": "a data layer: tops fed by the data pipeline, no bottoms, no blobs",
    "WindowData": "a data layer: tops fed by the data pipeline, no bottoms, no blobs",
    "MemoryData": "a data layer: tops fed by the data pipeline, no bottoms, no blobs",
    "HDF5Data": "a data layer: tops fed by the data pipeline, no bottoms, no blobs",
    "DummyData": "no bottoms, no blobs: its tops are filler draws",
    "Accuracy": "a piecewise-constant count (accuracy_layer.cpp: Backward NOT_IMPLEMENTED)",
    "ArgMax": "integer indices (argmax_layer.cpp: Backward NOT_IMPLEMENTED)",
    "Threshold": "a step function (threshold_layer.cpp: Backward NOT_IMPLEMENTED)",
    "Silence": "no top to differentiate (silence_layer.cpp writes zero bottom diffs)",
}


@dataclass
class G:
    """One gradcheck case: layer text, bottom shapes or values, what is differentiated."""

    body: str = ""
    shapes: Sequence[Sequence[int]] = ((2, 3, 4, 5),)          # bottoms ~ randn (documentation only with ``make``)
    make: Optional[Callable[[], List[np.ndarray]]] = None   # bottom values (labels, indices, positive data)
    grad: Optional[Sequence[int]] = None                     # differentiable bottoms (default: all)
    tops: Optional[Sequence[int]] = None                     # checked tops (default: all)
    n_tops: int = 1
    phase: str = "TEST"
    params: bool = True                                      # also differentiate the blobs
    prepare: Optional[Callable] = None                       # run before every forward (reseed, reset)
    name: str = ""
    rtol: float = 1e-4


def _pos(shape, seed, lo=0.3):
    return np.abs(randn(shape, seed)) + lo


def _away_from(x, points, gap=0.05):
    """Move entries within ``gap`` of a kink to ``gap`` away from it (central differences need smoothness)."""
    x = x.copy()
    for p in points:
        near = np.abs(x - p) < gap
        x[near] = p + np.where(x[near] >= p, gap, -gap)
    return x


def _rnd(shape, seed, kinks=(0.0,)):
    return lambda: [_away_from(randn(shape, seed), kinks)]


def _probs(n, c, seed):
    p = np.random.default_rng(seed).dirichlet(np.ones(c), size=n).astype(np.float32)
    return np.clip(p, 0.05, None)


ROIS = np.array([[0, 0, 0, 5, 4], [1, 2, 1, 6, 5], [0, 1, 2, 3, 6]], np.float32)
S4 = (2, 3, 4, 5)
T_, N_, D_ = 3, 2, 3  # recurrent: time steps, streams, input dim
SIM = np.array([1, 0, 0, 1], np.float32).reshape(4, 1, 1, 1)  # ContrastiveLoss: similar pairs
# 0/1 only: Caffe's forget-gate diff is the exact derivative there; cont 1 at t = 0 reads the
# initial (carried or exposed) state
CONT = np.array([[1, 0], [1, 1], [0, 1]], np.float32)


def _recurrent(static=False, expose=0):
    def make():
        out = [randn((T_, N_, D_), 1), CONT.copy()]
        if static:
            out.append(randn((N_, 2), 2))
        out += [randn((1, N_, 4), 3 + j) for j in range(expose)]
        return out
    return make


CASES = {
    # neuron.py: inputs kept off the kinks (0, Clip's bounds)
    "AbsVal": [G(make=_rnd(S4, 1))],
    "BNLL": [G(make=lambda: [randn(S4, 1, 3.0)])],
    "Clip": [G("clip_param { min: -0.5 max: 0.8 }", make=_rnd(S4, 1, (-0.5, 0.8)))],
    "ELU": [G("elu_param { alpha: 0.7 }", make=_rnd(S4, 1))],
    "ReLU": [G(make=_rnd(S4, 1)), G("relu_param { negative_slope: 0.1 }", make=_rnd(S4, 2), name="leaky")],
    "Sigmoid": [G()],
    "Swish": [G("swish_param { beta: 1.7 }")],
    "TanH": [G()],
    # power.py
    "Power": [G("power_param { power: 2.5 scale: 0.7 shift: 0.2 }", make=lambda: [_pos(S4, 1)]),
              G("power_param { power: 3 scale: 1.5 }", make=lambda: [_pos(S4, 2)], name="shift0"),
              G("power_param { power: 2 scale: 0.5 shift: 1 }", name="square"),
              G("power_param { power: 1 scale: -1.5 shift: 2 }", name="linear"),
              G("power_param { power: 2.5 scale: 0 shift: 2 }", name="constant")],
    "Exp": [G("exp_param { base: 2 scale: 0.5 shift: 1 }"), G(name="base_e")],
    "Log": [G("log_param { base: 10 scale: 2 shift: 1 }", make=lambda: [_pos(S4, 1)]),
            G(make=lambda: [_pos(S4, 2)], name="base_e")],
    "PReLU": [G(make=_rnd(S4, 1)), G("prelu_param { channel_shared: true }", make=_rnd(S4, 2), name="shared")],
    # a TRAIN mask, reseeded before every forward so the finite differences see one mask
    "Dropout": [G("dropout_param { dropout_ratio: 0.3 }", phase="TRAIN", prepare=lambda lay: lay.reseed(7))],
    "Softmax": [G(), G("softmax_param { axis: -1 }", name="last_axis")],
    # plumbing and shapes
    "Split": [G(n_tops=2)],
    "Concat": [G(shapes=[(2, 3, 2), (2, 1, 2)])],
    "Slice": [G("slice_param { axis: 1 slice_point: 1 }", shapes=[(2, 3, 2)], n_tops=2)],
    "Flatten": [G()],
    "Reshape": [G("reshape_param { shape { dim: 0 dim: -1 dim: 2 } }")],
    "Tile": [G("tile_param { axis: 1 tiles: 2 }", shapes=[(2, 3, 2)])],
    "Crop": [G("crop_param { axis: 2 offset: 1 }", shapes=[S4, (1, 1, 2, 3)], grad=[0])],
    "Eltwise": [G("eltwise_param { coeff: 0.5 coeff: -2 }", shapes=[S4, S4], name="sum"),
                G("eltwise_param { operation: PROD }", shapes=[S4] * 3, name="prod"),
                G("eltwise_param { operation: PROD stable_prod_grad: false }", shapes=[S4] * 2,
                  make=lambda: [_pos(S4, 1), _pos(S4, 2)], name="prod_unstable"),  # y/x: x away from 0
                G("eltwise_param { operation: MAX }", shapes=[S4] * 3, name="max")],
    "Reduction": [G("reduction_param { operation: SUM axis: 1 coeff: 2 }", name="sum"),
                  G("reduction_param { operation: ASUM axis: 2 }", make=_rnd(S4, 1), name="asum"),
                  G("reduction_param { operation: SUMSQ }", name="sumsq"),
                  G("reduction_param { operation: MEAN axis: -1 coeff: -0.5 }", name="mean")],
    # indexing.py: index bottoms are data, not differentiable
    "BatchReindex": [G(make=lambda: [randn(S4, 1), np.array([1, 0, 1], np.float32)], grad=[0])],
    "Filter": [G(make=lambda: [randn(S4, 1), randn(S4, 2), np.array([1, 0], np.float32)], grad=[0, 1], n_tops=2,
                 shapes=[S4, S4, (2,)])],
    "Parameter": [G("parameter_param { shape { dim: 3 dim: 2 } }", shapes=[])],
    # vision layers with blobs
    "Convolution": [G("convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 "
                      "bias_filler { type: 'gaussian' } weight_filler { type: 'gaussian' } }", shapes=[(2, 4, 5, 4)]),
                    G("convolution_param { num_output: 2 kernel_size: 2 dilation: 2 weight_filler { type: 'gaussian' } }",
                      shapes=[(2, 2, 6)], name="1d_dilated"),
                    G("convolution_param { num_output: 2 kernel_size: 2 stride: 1 stride: 2 stride: 1 pad: 1 "
                      "weight_filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }", shapes=[(1, 2, 3, 4, 3)],
                      name="3d"),
                    G("convolution_param { num_output: 2 kernel_size: 2 axis: 2 weight_filler { type: 'gaussian' } }",
                      shapes=[(2, 1, 2, 3, 3)], name="axis2")],
    "Deconvolution": [G("convolution_param { num_output: 4 kernel_size: 3 stride: 2 pad: 1 group: 2 "
                        "bias_filler { type: 'gaussian' } weight_filler { type: 'gaussian' } }", shapes=[(1, 4, 3, 2)]),
                      G("convolution_param { num_output: 2 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 "
                        "pad_h: 1 pad_w: 0 dilation: 2 bias_term: false weight_filler { type: 'gaussian' } }",
                        shapes=[(1, 2, 3, 3)], name="dilated")],
    "InnerProduct": [G("inner_product_param { num_output: 3 weight_filler { type: 'gaussian' } "
                       "bias_filler { type: 'gaussian' } }", shapes=[(2, 2, 3)]),
                     G("inner_product_param { num_output: 3 axis: 2 transpose: true weight_filler { type: 'gaussian' } "
                       "bias_filler { type: 'gaussian' } }", shapes=[(2, 2, 3)], name="axis2_transpose")],
    "Embed": [G("embed_param { num_output: 3 input_dim: 5 weight_filler { type: 'gaussian' } "
                "bias_filler { type: 'gaussian' } }",
                make=lambda: [np.array([[0, 4, 2], [2, 2, 1]], np.float32)], grad=[])],  # indices: data
    "Im2col": [G("convolution_param { kernel_size: 2 stride: 1 pad: 1 dilation: 2 }", shapes=[(1, 2, 4, 3)])],
    # STOCHASTIC is left out: its backward routes the diff to the TRAIN draw (pooling_layer.cu), not a derivative
    "Pooling": [G("pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", name="max"),
                G("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", name="ave"),
                G("pooling_param { pool: AVE kernel_size: 2 stride: 2 pad: 1 }", shapes=[(1, 2, 5, 6)], name="ave_clip"),
                G("pooling_param { pool: MAX kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 0 }",
                  shapes=[(1, 2, 5, 7)], name="max_rect"),
                G("pooling_param { pool: AVE global_pooling: true }", name="ave_global")],
    "SPP": [G("spp_param { pyramid_height: 2 pool: MAX }", shapes=[(1, 2, 5, 4)], name="max"),
            G("spp_param { pyramid_height: 2 pool: AVE }", shapes=[(1, 2, 5, 4)], name="ave")],
    "ROIPooling": [G("roi_pooling_param { pooled_h: 2 pooled_w: 3 spatial_scale: 0.5 }", shapes=[(2, 2, 4, 4), (3, 5)],
                     make=lambda: [randn((2, 2, 4, 4), 1), ROIS.copy()], grad=[0])],
    "LRN": [G("lrn_param { local_size: 3 alpha: 0.3 beta: 0.75 k: 2 }", name="across"),
            G("lrn_param { local_size: 5 alpha: 1.5 beta: 0.6 k: 1 }", shapes=[(1, 6, 2, 3)], name="across5"),
            G("lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL k: 2 }", name="within")],
    "MVN": [G(), G("mvn_param { across_channels: true }", name="across"),
            G("mvn_param { normalize_variance: false }", name="mean_only")],
    # BatchNorm's blobs are running statistics, not learned (batch_norm_layer.cpp writes no param
    # diffs; Caffe forces lr_mult 0): only the bottom is differentiated.
    "BatchNorm": [G(phase="TRAIN", params=False, name="train"),
                  G("batch_norm_param { use_global_stats: true }", params=False, name="global")],
    "Scale": [G("scale_param { bias_term: true filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }",
                name="blobs"),
              G("scale_param { axis: 1 bias_term: true bias_filler { type: 'gaussian' } }", shapes=[S4, (3, 4)],
                name="bottom1"),
              G("scale_param { num_axes: 0 filler { type: 'gaussian' } }", name="scalar")],
    "Bias": [G("bias_param { filler { type: 'gaussian' } }", name="blob"),
             G("bias_param { axis: 2 }", shapes=[S4, (4, 5)], name="bottom1")],
    # recurrent.py: cont is data; exposed h_0/c_0 share data, not diff, with the inner net and
    # h_T/c_T are data only (so only the sequence top is differentiated); the carried state is reset
    # before every forward.
    "RNN": [G("recurrent_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } "
              "bias_filler { type: 'gaussian' } }", shapes=[(T_, N_, D_), (T_, N_), (N_, 2)], make=_recurrent(True),
              grad=[0, 2], prepare=lambda lay: lay.reset_state()),
            G("recurrent_param { num_output: 4 expose_hidden: true weight_filler { type: 'gaussian' std: 0.5 } }",
              shapes=[(T_, N_, D_), (T_, N_), (1, N_, 4)], make=_recurrent(expose=1), grad=[0], n_tops=2, tops=[0],
              name="expose")],
    "LSTM": [G("recurrent_param { num_output: 4 weight_filler { type: 'gaussian' std: 0.5 } "
               "bias_filler { type: 'gaussian' } }", shapes=[(T_, N_, D_), (T_, N_), (N_, 2)], make=_recurrent(True),
               grad=[0, 2], prepare=lambda lay: lay.reset_state())],
    "LSTMUnit": [G(shapes=[(1, N_, 3), (1, N_, 12), (1, N_)],
                   make=lambda: [randn((1, N_, 3), 1), randn((1, N_, 12), 2), np.array([[1, 0]], np.float32)],
                   grad=[0, 1], n_tops=2)],
    # losses: label bottoms are data
    "SoftmaxWithLoss": [G("loss_param { ignore_label: 1 }", shapes=[(3, 4, 2), (3, 2)],
                          make=lambda: [randn((3, 4, 2), 1), labels((3, 2), 4, 2, ignore=1)], grad=[0]),
                        G("softmax_param { axis: 2 } loss_param { normalization: FULL }", shapes=[(3, 2, 4), (3, 2)],
                          make=lambda: [randn((3, 2, 4), 1), labels((3, 2), 4, 2)], grad=[0], name="axis2_full"),
                        G("loss_param { normalization: NONE }", shapes=[(3, 4, 2), (3, 2)], n_tops=2,
                          make=lambda: [randn((3, 4, 2), 1), labels((3, 2), 4, 3)], grad=[0], name="prob_top")],
    "InfogainLoss": [G(shapes=[(3, 4), (3,), (4, 4)],
                       make=lambda: [randn((3, 4), 1), labels((3,), 4, 2), _pos((4, 4), 3)], grad=[0])],
    "MultinomialLogisticLoss": [G(shapes=[(3, 4), (3,)], make=lambda: [_probs(3, 4, 1), labels((3,), 4, 2)],
                                  grad=[0])],  # p >= 0.05: away from the 1e-20 clamp
    "SigmoidCrossEntropyLoss": [G("loss_param { ignore_label: -1 normalization: VALID }", shapes=[(3, 4), (3, 4)],
                                  make=lambda: [randn((3, 4), 1, 2.0),
                                                np.where(np.arange(12).reshape(3, 4) % 5 == 0, -1,
                                                         np.random.default_rng(2).random((3, 4))).astype(np.float32)],
                                  grad=[0]),
                                G(shapes=[(3, 4), (3, 4)], name="batch_size",
                                  make=lambda: [randn((3, 4), 1, 2.0), np.random.default_rng(3).random((3, 4)).astype(np.float32)],
                                  grad=[0])],
    "EuclideanLoss": [G(shapes=[(3, 4), (3, 4)])],
    "HingeLoss": [G(shapes=[(3, 4), (3,)], make=lambda: [_away_from(randn((3, 4), 1, 2.0), (-1.0, 1.0)),
                                                         labels((3,), 4, 2)], grad=[0], name="l1"),
                  G("hinge_loss_param { norm: L2 }", shapes=[(3, 4), (3,)],
                    make=lambda: [randn((3, 4), 1, 2.0), labels((3,), 4, 2)], grad=[0], name="l2")],
    # Caffe divides by (d + 1e-4) where the derivative has d: a 1e-4/d relative gap for dissimilar
    # pairs, so that case gets rtol 1e-3 (d ~ 1-2 here); the legacy form is exact.  Pairs are off the margin.
    "ContrastiveLoss": [G("contrastive_loss_param { margin: 2.5 }", shapes=[(4, 3, 1, 1), (4, 3, 1, 1), (4, 1, 1, 1)],
                          make=lambda: [randn((4, 3, 1, 1), 1), randn((4, 3, 1, 1), 2), SIM.copy()],
                          grad=[0, 1], rtol=1e-3),
                        G("contrastive_loss_param { margin: 2.5 legacy_version: true }", shapes=[(4, 3, 1, 1), (4, 3, 1, 1), (4, 1, 1, 1)],
                          make=lambda: [randn((4, 3, 1, 1), 1), randn((4, 3, 1, 1), 2), SIM.copy()],
                          grad=[0, 1], name="legacy")],
    # The 3-bottom (Fast R-CNN) form drops the inside weights from the diff on purpose (checked in
    # test_smooth_l1_loss.py); the 2- and 4-bottom forms are the exact derivative.  Off |d| = 1/sigma^2.
    "SmoothL1Loss": [G(shapes=[(2, 4), (2, 4)], make=lambda: [_away_from(randn((2, 4), 1, 1.5), (-1.0, 1.0)),
                                                              np.zeros((2, 4), np.float32)], name="plain"),
                     G("smooth_l1_loss_param { sigma: 2 }", shapes=[(2, 4)] * 4,
                       make=lambda: [_away_from(randn((2, 4), 1), (-0.125, 0.125)), np.zeros((2, 4), np.float32),
                                     np.full((2, 4), 2.0, np.float32), _pos((2, 4), 4)],
                       grad=[0, 1], name="weighted")],
    # the fork has no backward; here gradients follow the copies, so check them on one fixed draw
    "MergeData": [G("merge_data_param { min_substitute: 1 max_substitute: 2 }", shapes=[(3, 2)] * 6, n_tops=4, tops=[0, 1, 2],
                    prepare=lambda lay: lay.reseed(3))],
}


def _case_ids():
    return [(t, c) for t in sorted(CASES) for c in CASES[t]]


def test_every_type_is_covered():
    # A newly registered type needs a gradcheck case or a reason in NOT_DIFFERENTIABLE.
    known = set(L.known_types())
    assert not set(CASES) & set(NOT_DIFFERENTIABLE)
    assert not known - set(CASES) - set(NOT_DIFFERENTIABLE), \
        f"no gradcheck case and no reason for: {sorted(known - set(CASES) - set(NOT_DIFFERENTIABLE))}"
    assert not (set(CASES) | set(NOT_DIFFERENTIABLE)) - known, "the table names unregistered types"


def _build(type_name, case):
    bottoms = case.make() if case.make else [randn(s, seed=1 + i) for i, s in enumerate(case.shapes)]
    layer = make_layer(type_name, case.body, [b.shape for b in bottoms], phase=case.phase, n_tops=case.n_tops)
    layer = layer.double()
    grad = range(len(bottoms)) if case.grad is None else case.grad
    xs = [torch.tensor(b, dtype=torch.float64, requires_grad=i in grad) for i, b in enumerate(bottoms)]
    names = [n for n, _ in layer.named_parameters()] if case.params else []
    params = [p.detach().clone().requires_grad_() for n, p in layer.named_parameters() if n in names]
    return layer, xs, names, params


@pytest.mark.parametrize("type_name,case", _case_ids(),
                         ids=[f"{t}-{c.name}" if c.name else t for t, c in _case_ids()])
def test_gradcheck(type_name, case):
    layer, xs, names, params = _build(type_name, case)
    nb = len(xs)

    def f(*args):
        if case.prepare:
            case.prepare(layer)
        out = functional_call(layer, dict(zip(names, args[nb:])), tuple(args[:nb]))
        out = out if isinstance(out, tuple) else (out,)
        return tuple(out[j] for j in case.tops) if case.tops is not None else out

    inputs = tuple(xs) + tuple(params)
    assert any(t.requires_grad for t in inputs), "a case must differentiate something"
    if case.params:
        assert len(params) == len(layer.blobs)  # every blob is differentiated
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=case.rtol)
