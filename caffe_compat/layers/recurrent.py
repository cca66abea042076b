"""RNN, LSTM, LSTMUnit: mirror src/caffe/layers/{recurrent,rnn,lstm,lstm_unit}_layer.cpp (BVLC/caffe 9b89154).

RNN:  h_t = tanh(W_hh (cont_t * h_{t-1}) + W_xh x_t + b_h [+ W_xh_static x_static]);
      o_t = tanh(W_ho h_t + b_o).                                     (rnn_layer.cpp)
LSTM: [i f o g]' = W_hc (cont_t * h_{t-1}) + W_xc x_t + b_c [+ W_xc_static x_static];
      i,o = sigmoid, f = cont_t * sigmoid, g = tanh; c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
                                                       (lstm_layer.cpp + lstm_unit_layer.cpp)

Params (recurrent_param): num_output H (required, > 0), weight_filler, bias_filler,
debug_info (a logging switch of Caffe's inner net; ignored), expose_hidden (false).

Bottoms: x (T, N, ...), cont (T, N), optional x_static (N, ...), then with expose_hidden the
initial state (1, N, H): h_0 (RNN) or h_0, c_0 (LSTM).  Tops: o / h (T, N, H), then with
expose_hidden the final state (1, N, H): h_T (RNN) or h_T, c_T (LSTM).

Blobs, in Caffe's order (owners of the unrolled net's parameters, first use first):
RNN  W_xh (H, D), b_h (H), [W_xh_static (H, S)], W_hh (H, H), W_ho (H, H), b_o (H);
LSTM W_xc (4H, D), b_c (4H), [W_xc_static (4H, S)], W_hc (4H, H); gate rows i, f, o, g.
D = count of x from axis 2, S = count of x_static from axis 1.  Weight blobs take
weight_filler, bias blobs bias_filler (an unset filler is constant 0, as in Caffe).

Caffe's quirks kept on purpose:
* Without expose_hidden the state carries over between forward calls: h_0 (and c_0) of a
  call is the h_T (c_T) of the previous call, as data only (RecurrentLayer::Forward_cpu);
  ``reset_state()`` zeroes it like RecurrentLayer::Reset.  A batch of more streams than
  ever seen starts from zeros; fewer streams keep the first ones' state (Blob::Reshape
  reuses its memory).  torch.export keeps the carry (a buffer mutation); a TorchScript
  trace (torch.onnx.export, dynamo=False) does not: its graph starts every call from the
  state held at export time, zeros after ``reset_state()``.
* Exposed h_0/c_0 bottoms share data, not diff, with the inner net and the exposed h_T/c_T
  tops likewise: no gradient reaches h_0/c_0 and the diffs fed into h_T/c_T are ignored.
* cont gets no gradient.  The forget gate's backward uses f (1 - f) with f = cont *
  sigmoid(.), as lstm_unit_layer.cpp does, which differs from the true derivative when
  cont is neither 0 nor 1.
"""
from __future__ import annotations

import torch

from ._params import count, fail, shape_fail
from ._registry import register
from .base import CaffeLayer


def _forget_gate(pre: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """f = cont * sigmoid(pre) forward; d f / d pre = f (1 - f) backward (LSTMUnitLayer::Backward_cpu).

    autograd's own derivative is cont s (1 - s), s = sigmoid(pre); the missing part,
    cont s^2 (1 - cont), rides on a term whose value is exactly zero.
    """
    s = torch.sigmoid(pre)
    f = cont * s
    if not (torch.is_grad_enabled() and pre.requires_grad):
        return f  # inference and export: the plain forward
    correction = (cont * s * s * (1 - cont)).detach()
    zero = torch.where(torch.isfinite(pre), pre - pre.detach(), torch.zeros_like(pre))  # inf - inf is NaN
    return f + zero * correction


def lstm_unit(c_prev: torch.Tensor, gates: torch.Tensor, cont: torch.Tensor):
    """One LSTMUnit step: (c, h) from c_prev (..., H) and gates (..., 4H) in i, f, o, g order.

    ``cont`` broadcasts against c_prev (one value per stream).
    """
    H = c_prev.shape[-1]
    i = torch.sigmoid(gates[..., 0:H])
    f = _forget_gate(gates[..., H:2 * H], cont)
    o = torch.sigmoid(gates[..., 2 * H:3 * H])
    g = torch.tanh(gates[..., 3 * H:4 * H])
    c = f * c_prev + i * g
    h = o * torch.tanh(c)
    return c, h


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    # InnerProduct with transpose: false over the trailing (already flattened) axis.
    y = x.matmul(w.t())
    return y if b is None else y + b


class _Recurrent(CaffeLayer):
    """What RecurrentLayer (recurrent_layer.cpp) shares between RNN and LSTM."""

    n_recur = 1  # recurrent state blobs: h (RNN) or h, c (LSTM)
    gate_mult = 1  # rows of the x/h transforms per output unit

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        p = lp.recurrent_param
        self.H = int(p.num_output)
        if self.H <= 0:
            raise fail(self, f"recurrent_param.num_output must be positive (got {self.H})")
        self.expose_hidden = bool(p.expose_hidden)
        n_hidden = self.n_recur if self.expose_hidden else 0
        nb, nt = len(self.bottom_shapes), len(lp.top)
        if not 2 + n_hidden <= nb <= 3 + n_hidden:
            raise fail(self, f"takes {2 + n_hidden} or {3 + n_hidden} bottoms (x, cont, [x_static]"
                             f"{', initial state' if n_hidden else ''}) with expose_hidden: "
                             f"{str(self.expose_hidden).lower()}, got {nb}")
        if nt != 1 + n_hidden:
            raise fail(self, f"takes exactly {1 + n_hidden} top(s) with expose_hidden: "
                             f"{str(self.expose_hidden).lower()}, got {nt}")
        self.static_input = nb > 2 + n_hidden
        x, cont = self.bottom_shapes[0], self.bottom_shapes[1]
        if len(x) < 3:
            # Caffe checks >= 2 axes, then its inner InnerProduct (axis 2) aborts on 2.
            raise shape_fail(self, f"bottom[0] (x) must have at least 3 axes (T, N, ...), got shape {x}")
        self.T, self.N = x[0], x[1]
        if len(cont) != 2 or cont != (self.T, self.N):
            raise shape_fail(self, f"bottom[1] (cont) must have shape (T, N) = {(self.T, self.N)}, "
                                   f"got {cont}")
        self.D = count(x, 2)
        G = self.gate_mult * self.H
        if self.static_input:
            xs = self.bottom_shapes[2]
            if len(xs) < 2 or xs[0] != self.N:
                raise shape_fail(self, f"bottom[2] (x_static) must have shape (N, ...) with N = "
                                       f"{self.N} and at least 2 axes, got {xs}")
            self.S = count(xs, 1)
        state_shape = (1, self.N, self.H)
        if self.expose_hidden:
            first = 3 if self.static_input else 2
            for j, s in enumerate(self.bottom_shapes[first:]):
                if s != state_shape:
                    raise shape_fail(self, f"bottom[{first + j}] ({self.recur_names[j]}_0) must have "
                                           f"shape {state_shape}, got {s}")
        wf, bf = p.weight_filler, p.bias_filler
        self.add_blob((G, self.D), wf)
        self.add_blob((G,), bf)
        if self.static_input:
            self.add_blob((G, self.S), wf)
        self._add_recurrent_blobs(wf, bf)
        self.top_shapes = [(self.T, self.N, self.H)] + [state_shape] * n_hidden
        for j in range(self.n_recur):
            self.register_buffer(f"carried{j}", torch.zeros(self.N * self.H), persistent=False)

    def _add_recurrent_blobs(self, wf, bf) -> None:
        raise NotImplementedError

    def reset_state(self) -> None:
        """Zero the state carried between calls (RecurrentLayer::Reset)."""
        for j in range(self.n_recur):
            getattr(self, f"carried{j}").zero_()

    def _initial_state(self, n: int):
        states = []
        for j in range(self.n_recur):
            buf = getattr(self, f"carried{j}")
            if buf.numel() < n * self.H:  # a bigger blob is fresh, zeroed memory in Caffe
                buf = buf.new_zeros(n * self.H)
                setattr(self, f"carried{j}", buf)
            states.append(buf[:n * self.H].reshape(1, n, self.H).clone())
        return states

    def _store_state(self, finals) -> None:
        with torch.no_grad():
            for j, s in enumerate(finals):
                getattr(self, f"carried{j}")[:s.numel()].copy_(s.reshape(-1))

    def forward(self, x, cont, *rest):
        T, n = x.shape[0], x.shape[1]
        if T != self.T or tuple(cont.shape) != (T, n):  # RecurrentLayer::Reshape's CHECKs
            raise shape_fail(self, f"x {tuple(x.shape)} and cont {tuple(cont.shape)} must be (T, N, ...) and "
                                   f"(T, N) with T = {self.T} timesteps fixed at setup")
        cont = cont.detach().to(x.dtype)
        x_static = rest[0] if self.static_input else None
        if self.expose_hidden:
            # Caffe shares the data of these bottoms, not their diff.
            init = [s.detach() for s in rest[1 if self.static_input else 0:]]
        else:
            init = self._initial_state(n)
        x_proj = _linear(x.reshape(T, n, -1), self.blobs[0], self.blobs[1])
        static_proj = None
        if self.static_input:
            static_proj = _linear(x_static.reshape(n, -1), self.blobs[2]).reshape(1, n, -1)
        out, finals = self._unroll(x_proj, static_proj, cont, init)
        if not self.expose_hidden:
            if not torch.jit.is_tracing():  # an ONNX graph is stateless (see the module docstring)
                self._store_state(finals)
            return out
        # The final state tops share data only: their diffs never reach the inner net.
        return (out,) + tuple(s.detach() for s in finals)


@register("RNN", bottoms=(2, 4), tops=(1, 2))
class RNN(_Recurrent):
    recur_names = ("h",)

    def _add_recurrent_blobs(self, wf, bf) -> None:
        self.add_blob((self.H, self.H), wf)  # W_hh
        self.add_blob((self.H, self.H), wf)  # W_ho
        self.add_blob((self.H,), bf)  # b_o

    def _unroll(self, x_proj, static_proj, cont, init):
        W_hh, W_ho, b_o = self.blobs[-3], self.blobs[-2], self.blobs[-1]
        T, n = x_proj.shape[0], x_proj.shape[1]
        h = init[0]
        outs = []
        for t in range(T):  # T is fixed by the bottom shape, so export sees a static loop
            h_conted = h * cont[t].reshape(1, n, 1)
            pre = _linear(h_conted, W_hh) + x_proj[t:t + 1]  # Eltwise SUM in bottom order
            if static_proj is not None:
                pre = pre + static_proj
            h = torch.tanh(pre)
            outs.append(torch.tanh(_linear(h, W_ho, b_o)))
        return torch.cat(outs, 0), [h]


@register("LSTM", bottoms=(2, 5), tops=(1, 3))
class LSTM(_Recurrent):
    n_recur = 2
    gate_mult = 4
    recur_names = ("h", "c")

    def _add_recurrent_blobs(self, wf, bf) -> None:
        self.add_blob((4 * self.H, self.H), wf)  # W_hc

    def _unroll(self, x_proj, static_proj, cont, init):
        W_hc = self.blobs[-1]
        T, n = x_proj.shape[0], x_proj.shape[1]
        h, c = init
        outs = []
        for t in range(T):
            cont_t = cont[t].reshape(1, n, 1)
            gates = _linear(h * cont_t, W_hc) + x_proj[t:t + 1]
            if static_proj is not None:
                gates = gates + static_proj
            c, h = lstm_unit(c, gates, cont_t)
            outs.append(h)
        return torch.cat(outs, 0), [h, c]


@register("LSTMUnit", bottoms=3, tops=2)
class LSTMUnit(CaffeLayer):
    """bottoms c_prev (1, N, H), gates (1, N, 4H), cont (1, N) -> tops c (1, N, H), h (1, N, H)."""

    def __init__(self, lp, bottom_shapes, phase="TEST"):
        super().__init__(lp, bottom_shapes, phase)
        c_prev, gates, cont = self.bottom_shapes
        n = c_prev[1] if len(c_prev) > 1 else None
        for j, (s, axes) in enumerate(((c_prev, 3), (gates, 3), (cont, 2))):
            if len(s) != axes or s[0] != 1 or s[1] != n:
                form = "(1, N, ...)" if axes == 3 else "(1, N)"
                raise shape_fail(self, f"bottom[{j}] must have {axes} axes, shaped {form} with N "
                                       f"from bottom[0]; got shapes {self.bottom_shapes}")
        self.H = c_prev[2]
        if gates[2] != 4 * self.H:
            raise shape_fail(self, f"bottom[1] (gates) must have 4 * H = {4 * self.H} channels, "
                                   f"got {gates[2]}")
        self.top_shapes = [c_prev, c_prev]

    def forward(self, c_prev, gates, cont):
        n = c_prev.shape[1]
        return lstm_unit(c_prev, gates, cont.detach().to(gates.dtype).reshape(1, n, 1))
