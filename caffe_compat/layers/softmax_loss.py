"""SoftmaxWithLoss, InfogainLoss, MultinomialLogisticLoss: mirror src/caffe/layers/
{softmax_loss,infogain_loss,multinomial_logistic_loss}_layer.cpp (BVLC/caffe 9b89154).

SoftmaxWithLoss: p = softmax(x, axis); loss = -sum_valid log(max(p[label], FLT_MIN)) / norm;
  dx = (p - onehot(label)) * valid / norm.  loss_param: ignore_label, normalization (VALID;
  legacy normalize false -> BATCH_SIZE); softmax_param.axis (1).  Optional top[1] = p.
InfogainLoss: p = softmax(x, axis); loss = -sum_valid sum_l H[label, l] log(max(p_l, 1e-20)) / norm;
  dx_l = (p_l * sum_m H[label, m] - H[label, l]) / norm.  H = bottom[2] (C*C values) or the
  binaryproto infogain_loss_param.source; infogain_loss_param.axis (1); normalize refused.
MultinomialLogisticLoss: loss = -sum_n log(max(p[n, label_n], 1e-20)) / N  (bottom[0] = probs);
  dp = -1 / max(p, 1e-20) / N at the label.  Labels are static_cast<int> of the float label blob.
"""
from __future__ import annotations

import numpy as np
import torch

from ._grad import straight_through
from ._loss import FLT_MIN, LOG_THRESHOLD, VALID, LossBase, normalizer
from ._params import canonical_axis, count, fail, shape_fail
from ._registry import register


class _SoftmaxLossBase(LossBase):
    """Geometry shared by the two softmax-based losses: outer x C x inner, one label per (outer, inner)."""

    def reshape(self, bottom_shapes) -> None:
        """LossLayer::Reshape + SoftmaxWithLossLayer::Reshape: outer/inner follow a changed batch."""
        self.bottom_shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        b = self.bottom_shapes
        if b[0][:1] != b[1][:1]:
            raise shape_fail(self, f"the data and label should have the same first dimension "
                                   f"(bottom[0] {b[0]}, bottom[1] {b[1]})")
        self._setup(*self._axis_args)

    def _setup(self, axis_field: str, axis: int):
        self._axis_args = (axis_field, axis)
        s, ls = self.bottom_shapes[0], self.bottom_shapes[1]
        self.axis = canonical_axis(self, axis, len(s), axis_field)
        self.outer, self.classes, self.inner = count(s, 0, self.axis), s[self.axis], count(s, self.axis + 1)
        if self.outer * self.inner != count(ls):
            raise shape_fail(self, f"number of labels ({count(ls)}, shape {ls}) must match the number "
                                   f"of predictions ({self.outer * self.inner} for {s}, axis {self.axis})")
        self.ignore = self.ignore_label()
        if len(self.lp.top) >= 2:
            self.top_shapes = [(), s]

    def _outer(self) -> int:
        # -1, not self.outer: an exported graph's batch may differ from the setup one (with
        # axis 0 the classes are the batch and outer is 1)
        return -1 if self.axis > 0 else self.outer

    def _labels(self, label):
        lab = label.detach().reshape(self._outer(), self.inner).long()
        valid = torch.ones_like(lab, dtype=torch.bool) if self.ignore is None else lab != self.ignore
        return torch.where(valid, lab, torch.zeros_like(lab)), valid

    def _finish(self, loss_sum, valid, prob, x_shape):
        norm = normalizer(self.mode, valid.shape[0], self.inner, valid.sum() if self.mode == VALID else None)
        loss = loss_sum / norm
        if len(self.top_shapes) == 2:
            return loss, prob.reshape(x_shape)
        return loss


@register("SoftmaxWithLoss", bottoms=2, tops=(1, 2))
class SoftmaxWithLoss(_SoftmaxLossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.mode = self.normalization_mode(VALID)
        self._setup("softmax_param.axis", int(lp.softmax_param.axis))

    def forward(self, x, label):
        z = x.reshape(self._outer(), self.classes, self.inner)
        safe, valid = self._labels(label)
        prob = torch.softmax(z, 1)
        p = torch.gather(prob, 1, safe.unsqueeze(1)).squeeze(1)
        value = -torch.log(torch.clamp(p, min=FLT_MIN))
        # log_softmax's gradient is exactly Caffe's (p - onehot), also where the clamp bites.
        surrogate = -torch.gather(torch.log_softmax(z, 1), 1, safe.unsqueeze(1)).squeeze(1)
        per = straight_through(value, surrogate) * valid
        return self._finish(per.sum(), valid, prob, x.shape)


@register("InfogainLoss", bottoms=(2, 3), tops=(1, 2))
class InfogainLoss(_SoftmaxLossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        self.mode = self.normalization_mode(VALID, legacy_ok=False)
        self._setup("infogain_loss_param.axis", int(lp.infogain_loss_param.axis))
        c = self.classes
        if len(bottom_shapes) < 3:
            ip = lp.infogain_loss_param
            if not ip.HasField("source"):
                raise fail(self, "infogain_loss_param.source (the H matrix) must be given "
                                 "when there is no third bottom")
            from ..binary import read_blobproto

            h = np.asarray(read_blobproto(ip.source), dtype=np.float32)
            if h.size != c * c:
                raise shape_fail(self, f"H from {ip.source!r} has {h.size} values, expected "
                                       f"{c}x{c} = {c * c}")
            self.register_buffer("H", torch.from_numpy(h.reshape(c, c).copy()))
        elif count(self.bottom_shapes[2]) != c * c:
            raise shape_fail(self, f"bottom[2] (H) has shape {self.bottom_shapes[2]}, expected "
                                   f"{c}x{c} = {c * c} values")

    def forward(self, x, label, H=None):
        c = self.classes
        h = (self.H if H is None else H.detach().reshape(c, c)).to(x.dtype)  # H: buffer or bottom[2]
        z = x.reshape(self._outer(), c, self.inner)
        safe, valid = self._labels(label)
        prob = torch.softmax(z, 1)
        rows = h[safe].permute(0, 2, 1)  # (outer, C, inner): H[label, l]
        value = -(rows * torch.log(torch.clamp(prob, min=LOG_THRESHOLD))).sum(1)
        surrogate = -(rows * torch.log_softmax(z, 1)).sum(1)
        per = straight_through(value, surrogate) * valid
        return self._finish(per.sum(), valid, prob, x.shape)


@register("MultinomialLogisticLoss", bottoms=2, tops=1)
class MultinomialLogisticLoss(LossBase):
    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        s, ls = self.bottom_shapes
        if count(ls, 1) != 1:
            raise shape_fail(self, f"the label blob must hold one label per item (shape {ls})")
        self.num = s[0]

    def reshape(self, bottom_shapes) -> None:
        """LossLayer::Reshape: N follows a changed batch."""
        self.bottom_shapes = [tuple(int(d) for d in s) for s in bottom_shapes]
        self.num = self.bottom_shapes[0][0]

    def forward(self, p, label):
        z = p.reshape(self.num, -1)
        lab = label.detach().reshape(self.num, 1).long()
        sel = torch.gather(z, 1, lab).squeeze(1)
        # Clamp in the forward value only: Caffe's gradient is -1/max(p, 1e-20), not zero.
        clamped = sel + (torch.clamp(sel, min=LOG_THRESHOLD) - sel).detach()
        return -torch.log(clamped).sum() / float(self.num)
