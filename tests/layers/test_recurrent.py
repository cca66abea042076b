"""RNN, LSTM and LSTMUnit against a float64 NumPy port of Caffe's unrolled nets and real Caffe.

The port follows rnn_layer.cpp / lstm_layer.cpp (the unrolled InnerProduct, Scale, Eltwise,
TanH and LSTMUnit layers) forward and backward, including LSTMUnit's f (1 - f) forget-gate
diff, the ignored diffs of exposed final states and the state carried between calls.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from _util import assert_close, make_layer, oracle_net, randn
from caffe_compat.errors import ShapeError, UnsupportedParameter

# ---------------------------------------------------------------- NumPy port (float64)


def _sig(v):
    return 1.0 / (1.0 + np.exp(-v))


def np_rnn(x, cont, xs, h0, blobs, do):
    """(o, h_T, dx, dxs, dblobs) of rnn_layer.cpp's unrolled net; ``do`` is o's diff."""
    T, N = cont.shape
    W_xh, b_h = blobs[0], blobs[1]
    W_s = blobs[2] if xs is not None else None
    W_hh, W_ho, b_o = blobs[-3], blobs[-2], blobs[-1]
    xf = x.reshape(T, N, -1)
    W_xh_x = xf @ W_xh.T + b_h                       # x_transform (axis 2)
    static = xs.reshape(N, -1) @ W_s.T if xs is not None else 0.0
    hs, hcs, os_ = [h0[0]], [], []
    for t in range(T):
        hc = hs[-1] * cont[t][:, None]               # h_conted_{t-1} (Scale, axis 0)
        hcs.append(hc)
        h = np.tanh(hc @ W_hh.T + W_xh_x[t] + static)  # h_neuron_t
        hs.append(h)
        os_.append(np.tanh(h @ W_ho.T + b_o))        # o_neuron_t
    o = np.stack(os_)
    g = {k: np.zeros_like(v) for k, v in enumerate(blobs)}
    d_xproj = np.zeros_like(W_xh_x)
    d_static = np.zeros((N, W_hh.shape[0]))
    dh_next = np.zeros((N, W_hh.shape[0]))  # h_T's own diff: 0 (Caffe never feeds it)
    iHH, iHO, iBO = len(blobs) - 3, len(blobs) - 2, len(blobs) - 1
    for t in reversed(range(T)):
        d_o_pre = do[t] * (1 - os_[t] ** 2)
        g[iHO] += d_o_pre.T @ hs[t + 1]
        g[iBO] += d_o_pre.sum(0)
        dh = d_o_pre @ W_ho + dh_next
        d_pre = dh * (1 - hs[t + 1] ** 2)
        g[iHH] += d_pre.T @ hcs[t]
        d_xproj[t] = d_pre
        d_static += d_pre
        dh_next = (d_pre @ W_hh) * cont[t][:, None]
    g[0] = np.einsum("tnh,tnd->hd", d_xproj, xf)
    g[1] = d_xproj.sum((0, 1))
    dx = (d_xproj @ W_xh).reshape(x.shape)
    dxs = None
    if xs is not None:
        g[2] = d_static.T @ xs.reshape(N, -1)
        dxs = (d_static @ W_s).reshape(xs.shape)
    return o, hs[-1][None], dx, dxs, [g[k] for k in range(len(blobs))]


def np_lstm_unit(c_prev, X, cont):
    """LSTMUnitLayer::Forward_cpu per (n, d): returns c, h and the gate activations."""
    H = c_prev.shape[-1]
    i = _sig(X[..., :H])
    f = np.where(cont == 0, 0.0, cont * _sig(X[..., H:2 * H]))
    o = _sig(X[..., 2 * H:3 * H])
    gg = np.tanh(X[..., 3 * H:])
    c = f * c_prev + i * gg
    return c, o * np.tanh(c), (i, f, o, gg)


def np_lstm_unit_backward(c_prev, c, acts, C_diff, H_diff):
    """LSTMUnitLayer::Backward_cpu: (c_prev diff, gate diff (..., 4H))."""
    i, f, o, gg = acts
    tanh_c = np.tanh(c)
    c_term = C_diff + H_diff * o * (1 - tanh_c * tanh_c)
    dX = np.concatenate([c_term * gg * i * (1 - i), c_term * c_prev * f * (1 - f),
                         H_diff * tanh_c * o * (1 - o), c_term * i * (1 - gg * gg)], -1)
    return c_term * f, dX


def np_lstm(x, cont, xs, h0, c0, blobs, dh_out):
    """(h, h_T, c_T, dx, dxs, dblobs) of lstm_layer.cpp's unrolled net; ``dh_out`` is h's diff."""
    T, N = cont.shape
    W_xc, b_c, W_hc = blobs[0], blobs[1], blobs[-1]
    W_s = blobs[2] if xs is not None else None
    xf = x.reshape(T, N, -1)
    W_xc_x = xf @ W_xc.T + b_c
    static = xs.reshape(N, -1) @ W_s.T if xs is not None else 0.0
    h, c = h0[0], c0[0]
    steps = []
    for t in range(T):
        ct = cont[t][:, None]
        hc = h * ct
        gate = hc @ W_hc.T + W_xc_x[t] + static
        c_new, h, acts = np_lstm_unit(c, gate, ct)
        steps.append((hc, c, c_new, acts, h))
        c = c_new
    hs = np.stack([s[4] for s in steps])
    g = [np.zeros_like(b) for b in blobs]
    d_xproj = np.zeros_like(W_xc_x)
    d_static = np.zeros((N, W_hc.shape[0]))
    dh_rec = np.zeros((N, W_hc.shape[1]))
    dc_rec = np.zeros((N, W_hc.shape[1]))  # c_T's diff: 0
    for t in reversed(range(T)):
        hc, c_prev, c_t, acts, _h = steps[t]
        dc_prev, dX = np_lstm_unit_backward(c_prev, c_t, acts, dc_rec, dh_out[t] + dh_rec)
        g[-1] += dX.T @ hc
        d_xproj[t] = dX
        d_static += dX
        dh_rec = (dX @ W_hc) * cont[t][:, None]
        dc_rec = dc_prev
    g[0] = np.einsum("tng,tnd->gd", d_xproj, xf)
    g[1] = d_xproj.sum((0, 1))
    dx = (d_xproj @ W_xc).reshape(x.shape)
    dxs = None
    if xs is not None:
        g[2] = d_static.T @ xs.reshape(N, -1)
        dxs = (d_static @ W_s).reshape(xs.shape)
    return hs, h[None], c[None], dx, dxs, g


# ---------------------------------------------------------------- configurations

T_, N_, H_ = 5, 3, 4   # T != N != D != H everywhere
X_SHAPE = (T_, N_, 2, 3)   # D = 6 (x flattened from axis 2)
XS_SHAPE = (N_, 7)         # S = 7
CONT = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [1, 1, 1], [0, 1, 1]], np.float32)  # mid resets
CONT_SOFT = CONT * np.float32(0.5) + np.array([[0, 0, 0], [0.5, 0.25, 0], [0, 0, 0.5], [0, 0, 0], [0, 0, 0]],
                                               np.float32)  # 1 -> 0.5/1/0.75: not binary

# name, type, static, expose, cont
CONFIGS = [
    ("rnn", "RNN", False, False, CONT),
    ("rnn_static", "RNN", True, False, CONT),
    ("rnn_expose", "RNN", False, True, CONT),
    ("rnn_static_expose_soft", "RNN", True, True, CONT_SOFT),
    ("lstm", "LSTM", False, False, CONT),
    ("lstm_static", "LSTM", True, False, CONT),
    ("lstm_expose", "LSTM", False, True, CONT),
    ("lstm_static_expose_soft", "LSTM", True, True, CONT_SOFT),
]


def _n_recur(typ):
    return 2 if typ == "LSTM" else 1


def _build(name, typ, static, expose, cont, seed, dtype=torch.float32, layer_name="L"):
    """The layer, its bottoms (float32 arrays), params (float32) and top diffs."""
    bottoms = [randn(X_SHAPE, seed), cont]
    if static:
        bottoms.append(randn(XS_SHAPE, seed + 1))
    if expose:
        bottoms += [randn((1, N_, H_), seed + 2 + j) for j in range(_n_recur(typ))]
    body = f"recurrent_param {{ num_output: {H_}{' expose_hidden: true' if expose else ''} }}"
    layer = make_layer(typ, body, [b.shape for b in bottoms], name=layer_name,
                       n_tops=1 + (_n_recur(typ) if expose else 0))
    params = [randn(tuple(p.shape), seed + 10 + j, scale=0.6) for j, p in enumerate(layer.blobs)]
    for p, v in zip(layer.blobs, params):
        p.data.copy_(torch.from_numpy(v))
    layer.to(dtype)
    diffs = [randn(s, seed + 20 + j) for j, s in enumerate(layer.top_shapes)]
    return layer, body, bottoms, params, diffs


def _run(layer, bottoms, diffs, dtype):
    """Forward + backward of our layer: tops, bottom grads (zeros where none), param grads."""
    xs = [torch.tensor(b, dtype=dtype, requires_grad=True) for b in bottoms]
    out = layer(*xs)
    tops = list(out) if isinstance(out, tuple) else [out]
    for p in layer.parameters():
        p.grad = None
    pairs = [(o, torch.tensor(d, dtype=dtype)) for o, d in zip(tops, diffs) if o.requires_grad]
    torch.autograd.backward([o for o, _ in pairs], [d for _, d in pairs])
    gx = [x.grad.numpy() if x.grad is not None else np.zeros(b.shape) for x, b in zip(xs, bottoms)]
    return [o.detach().numpy() for o in tops], gx, [p.grad.numpy() for p in layer.blobs]


def _reference(typ, static, expose, bottoms, params, diffs):
    """NumPy tops, bottom diffs (cont, h_0, c_0: zero) and param diffs in float64."""
    b64 = [np.asarray(b, np.float64) for b in bottoms]
    p64 = [np.asarray(p, np.float64) for p in params]
    x, cont = b64[0], b64[1]
    xs = b64[2] if static else None
    k = _n_recur(typ)
    init = b64[-k:] if expose else [np.zeros((1, N_, H_))] * k
    if typ == "RNN":
        o, hT, dx, dxs, dp = np_rnn(x, cont, xs, init[0], p64, np.asarray(diffs[0], np.float64))
        tops = [o, hT]
    else:
        o, hT, cT, dx, dxs, dp = np_lstm(x, cont, xs, init[0], init[1], p64, np.asarray(diffs[0], np.float64))
        tops = [o, hT, cT]
    gx = [dx, np.zeros(cont.shape)] + ([dxs] if static else []) + [np.zeros((1, N_, H_))] * (k if expose else 0)
    return tops[:1 + (k if expose else 0)], gx, dp


# ---------------------------------------------------------------- NumPy-port tests


@pytest.mark.parametrize("name,typ,static,expose,cont", CONFIGS, ids=[c[0] for c in CONFIGS])
def test_vs_numpy_port_float64(name, typ, static, expose, cont):
    # float64 removes rounding, so any formula difference (e.g. the f(1-f) diff) shows.
    layer, _, bottoms, params, diffs = _build(name, typ, static, expose, cont, seed=3, dtype=torch.float64)
    tops, gx, gp = _run(layer, bottoms, diffs, torch.float64)
    want_tops, want_gx, want_gp = _reference(typ, static, expose, bottoms, params, diffs)
    for j, (a, b) in enumerate(zip(tops, want_tops)):
        assert_close(a, b, rtol=1e-10, atol=1e-12, what=f"{name} top[{j}]")
    for j, (a, b) in enumerate(zip(gx, want_gx)):
        assert_close(a, b, rtol=1e-10, atol=1e-12, what=f"{name} bottom[{j}] diff")
    for j, (a, b) in enumerate(zip(gp, want_gp)):
        assert_close(a, b, rtol=1e-10, atol=1e-12, what=f"{name} param[{j}] diff")


def test_forget_gate_diff_is_caffes_not_autograds():
    # With cont = 0.5 Caffe's f(1-f) and the true derivative cont*s*(1-s) differ; we follow Caffe.
    from caffe_compat.layers.recurrent import lstm_unit

    H = 3
    gates = torch.tensor(randn((1, 2, 4 * H), 1), dtype=torch.float64, requires_grad=True)
    c_prev = torch.tensor(randn((1, 2, H), 2), dtype=torch.float64)
    cont = torch.tensor([[[0.5], [1.0]]], dtype=torch.float64)
    c, h = lstm_unit(c_prev, gates, cont)
    c.backward(torch.ones_like(c))
    s = torch.sigmoid(gates[..., H:2 * H]).detach()
    f = cont * s
    want = c_prev * f * (1 - f)
    assert torch.allclose(gates.grad[..., H:2 * H], want, rtol=1e-12, atol=0)
    assert not torch.allclose(gates.grad[0, 0, H:2 * H], (c_prev * cont * s * (1 - s))[0, 0], rtol=1e-3)
    assert torch.equal(c, f * c_prev + torch.sigmoid(gates[..., :H]) * torch.tanh(gates[..., 3 * H:]))


def test_blob_shapes_and_top_shapes():
    layer, *_ = _build("rnn_static_expose_soft", "RNN", True, True, CONT_SOFT, 1)
    assert [tuple(p.shape) for p in layer.blobs] == [(4, 6), (4,), (4, 7), (4, 4), (4, 4), (4,)]
    assert layer.top_shapes == [(5, 3, 4), (1, 3, 4)]
    layer, *_ = _build("lstm_static_expose_soft", "LSTM", True, True, CONT_SOFT, 1)
    assert [tuple(p.shape) for p in layer.blobs] == [(16, 6), (16,), (16, 7), (16, 4)]
    assert layer.top_shapes == [(5, 3, 4), (1, 3, 4), (1, 3, 4)]
    layer, *_ = _build("lstm", "LSTM", False, False, CONT, 1)
    assert [tuple(p.shape) for p in layer.blobs] == [(16, 6), (16,), (16, 4)]


@pytest.mark.parametrize("typ", ["RNN", "LSTM"])
def test_state_carries_between_calls_and_reset(typ):
    # Two calls without resets at t=0 equal one call over the concatenated sequence.
    body = f"recurrent_param {{ num_output: {H_} weight_filler {{ type: 'gaussian' std: 0.5 }} }}"
    torch.manual_seed(0)
    one = make_layer(typ, body, [(4, 2, 3), (4, 2)])
    two = make_layer(typ, body, [(2, 2, 3), (2, 2)])
    two.load_state_dict(one.state_dict())
    x = torch.randn(4, 2, 3)
    ones = torch.ones(4, 2)
    full = one(x, ones)
    first, second = two(x[:2], ones[:2]), two(x[2:], ones[2:])
    assert torch.allclose(torch.cat([first, second]), full, atol=1e-6)
    two.reset_state()
    assert torch.allclose(two(x[:2], ones[:2]), full[:2], atol=1e-6)
    assert not torch.allclose(two(x[:2], ones[:2]), full[:2], atol=1e-3)  # state from the last call
    # a reset marker at t=0 wipes the carried state (h_conted = 0 * h_0)
    reset_first = torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    fresh = make_layer(typ, body, [(2, 2, 3), (2, 2)])
    fresh.load_state_dict(one.state_dict())
    assert torch.equal(two(x[:2], reset_first), fresh(x[:2], reset_first))


def test_lstm_unit_layer_vs_numpy():
    layer = make_layer("LSTMUnit", "", [(1, 3, 4), (1, 3, 16), (1, 3)], n_tops=2)
    c_prev, X = randn((1, 3, 4), 1), randn((1, 3, 16), 2)
    cont = np.array([[1, 0, 0.5]], np.float32)
    tops, gx, _ = _run(layer.double(), [c_prev, X, cont], [randn((1, 3, 4), 3), randn((1, 3, 4), 4)], torch.float64)
    c, h, acts = np_lstm_unit(c_prev.astype(np.float64), X.astype(np.float64), cont.reshape(1, 3, 1))
    dc, dX = np_lstm_unit_backward(c_prev, c, acts, randn((1, 3, 4), 3), randn((1, 3, 4), 4))
    for got, want, what in ((tops[0], c, "c"), (tops[1], h, "h"), (gx[0], dc, "c_prev diff"),
                            (gx[1], dX, "gates diff"), (gx[2], np.zeros((1, 3)), "cont diff")):
        assert_close(got, want, rtol=1e-10, atol=1e-12, what=what)


# ---------------------------------------------------------------- errors


def test_errors_name_the_layer():
    with pytest.raises(UnsupportedParameter, match=r"'lstm1' \(type LSTM\).*num_output must be positive"):
        make_layer("LSTM", "recurrent_param { }", [(5, 3, 2), (5, 3)], name="lstm1")
    with pytest.raises(ShapeError, match=r"'rnn1' \(type RNN\).*bottom\[1\] \(cont\) must have shape "
                                         r"\(T, N\) = \(5, 3\), got \(5, 2\)"):
        make_layer("RNN", "recurrent_param { num_output: 2 }", [(5, 3, 2), (5, 2)], name="rnn1")
    with pytest.raises(ShapeError, match=r"'rnn1'.*cont.*got \(5, 3, 1\)"):
        make_layer("RNN", "recurrent_param { num_output: 2 }", [(5, 3, 2), (5, 3, 1)], name="rnn1")
    with pytest.raises(ShapeError, match=r"'rnn1'.*bottom\[0\] \(x\) must have at least 3 axes.*\(5, 3\)"):
        make_layer("RNN", "recurrent_param { num_output: 2 }", [(5, 3), (5, 3)], name="rnn1")
    with pytest.raises(ShapeError, match=r"'lstm1'.*bottom\[2\] \(x_static\).*N = 3.*got \(4, 2\)"):
        make_layer("LSTM", "recurrent_param { num_output: 2 }", [(5, 3, 2), (5, 3), (4, 2)], name="lstm1")
    with pytest.raises(ShapeError, match=r"'lstm1'.*bottom\[3\] \(c_0\) must have shape \(1, 3, 2\), got \(1, 3, 5\)"):
        make_layer("LSTM", "recurrent_param { num_output: 2 expose_hidden: true }",
                   [(5, 3, 2), (5, 3), (1, 3, 2), (1, 3, 5)], name="lstm1", n_tops=3)
    with pytest.raises(UnsupportedParameter, match=r"'lstm1'.*takes 4 or 5 bottoms.*expose_hidden: true, got 3"):
        make_layer("LSTM", "recurrent_param { num_output: 2 expose_hidden: true }",
                   [(5, 3, 2), (5, 3), (1, 3, 2)], name="lstm1", n_tops=3)
    with pytest.raises(UnsupportedParameter, match=r"'rnn1'.*exactly 1 top\(s\) with expose_hidden: false, got 2"):
        make_layer("RNN", "recurrent_param { num_output: 2 }", [(5, 3, 2), (5, 3)], name="rnn1", n_tops=2)
    layer = make_layer("RNN", "recurrent_param { num_output: 2 }", [(5, 3, 2), (5, 3)], name="rnn1")
    layer(torch.zeros(5, 4, 2), torch.zeros(5, 4))  # N may change between calls, T may not
    with pytest.raises(ShapeError, match=r"'rnn1'.*x \(6, 3, 2\) and cont \(6, 3\).*T = 5 timesteps"):
        layer(torch.zeros(6, 3, 2), torch.zeros(6, 3))
    with pytest.raises(ShapeError, match=r"'rnn1'.*cont \(5, 2\)"):
        layer(torch.zeros(5, 3, 2), torch.zeros(5, 2))
    with pytest.raises(ShapeError, match=r"'u1' \(type LSTMUnit\).*4 \* H = 8 channels, got 9"):
        make_layer("LSTMUnit", "", [(1, 3, 2), (1, 3, 9), (1, 3)], name="u1", n_tops=2)
    with pytest.raises(ShapeError, match=r"'u1' \(type LSTMUnit\).*bottom\[2\] must have 2 axes"):
        make_layer("LSTMUnit", "", [(1, 3, 2), (1, 3, 8), (2, 3)], name="u1", n_tops=2)


# ---------------------------------------------------------------- real Caffe


def _net_layer(i, typ, body, n_bottoms, n_tops):
    bl = " ".join(f'bottom: "c{i}_b{j}"' for j in range(n_bottoms))
    tl = " ".join(f'top: "c{i}_t{j}"' for j in range(n_tops))
    return f'layer {{ name: "c{i}" type: "{typ}" {bl} {tl} {body} }}'


@pytest.mark.caffe
def test_against_real_caffe():
    """Every configuration in one Caffe net: tops, bottom diffs (x, x_static; zeros for
    cont and the exposed h_0/c_0) and param diffs, with random diffs fed into every top
    (those of the exposed h_T/c_T must be ignored)."""
    import _oracle

    _oracle.require_oracle()
    inputs, layers, feeds, params, diffs, ours = {}, [], {}, {}, {}, []
    for i, (name, typ, static, expose, cont) in enumerate(CONFIGS):
        layer, body, bottoms, ps, ds = _build(name, typ, static, expose, cont, seed=40 + 7 * i,
                                              layer_name=f"c{i}")
        for j, b in enumerate(bottoms):
            inputs[f"c{i}_b{j}"], feeds[f"c{i}_b{j}"] = b.shape, b
        for j, d in enumerate(ds):
            diffs[f"c{i}_t{j}"] = d
        params[f"c{i}"] = ps
        layers.append(_net_layer(i, typ, body, len(bottoms), len(ds)))
        ours.append((name, len(bottoms), len(ds)) + _run(layer, bottoms, ds, torch.float32))
    # LSTMUnit on its own, with a non-binary cont
    u = len(CONFIGS)
    unit_bottoms = [randn((1, 3, 4), 90), randn((1, 3, 16), 91), np.array([[1, 0, 0.5]], np.float32)]
    unit_diffs = [randn((1, 3, 4), 92), randn((1, 3, 4), 93)]
    for j, b in enumerate(unit_bottoms):
        inputs[f"c{u}_b{j}"], feeds[f"c{u}_b{j}"] = b.shape, b
    diffs.update({f"c{u}_t{j}": d for j, d in enumerate(unit_diffs)})
    layers.append(_net_layer(u, "LSTMUnit", "", 3, 2))
    unit = make_layer("LSTMUnit", "", [b.shape for b in unit_bottoms], n_tops=2)
    ours.append(("lstm_unit", 3, 2) + _run(unit, unit_bottoms, unit_diffs, torch.float32))

    res = _oracle.caffe_run(oracle_net(inputs, layers), params=params, inputs=feeds, top_diffs=diffs)
    worst = 0.0
    for i, (name, nb, nt, tops, gx, gp) in enumerate(ours):
        checks = [(tops[j], res["data"][f"c{i}_t{j}"], f"top[{j}]") for j in range(nt)]
        checks += [(gx[j], res["diff"][f"c{i}_b{j}"], f"bottom[{j}] diff") for j in range(nb)]
        checks += [(gp[j], res["param_diffs"][f"c{i}/{j}"], f"param[{j}] diff") for j in range(len(gp))]
        for got, want, what in checks:
            assert_close(got, want, rtol=1e-5, atol=1e-5, what=f"{name} {what}")
            worst = max(worst, float(np.max(np.abs(got - want))))
        if nb > 2 and name != "lstm_unit":  # the exposed initial state really gets no diff in Caffe
            for j in range(nb - (nt - 1), nb):
                assert not np.any(res["diff"][f"c{i}_b{j}"]), f"{name} bottom[{j}]"
    # the exposed final state equals the last timestep of the output (h_T is h's last row)
    assert_close(res["data"]["c6_t1"], res["data"]["c6_t0"][-1:], 0, 0, "lstm h_T")
    print(f"max abs difference to Caffe over all recurrent checks: {worst:.3g}")


_CARRY_SCRIPT = r'''
import sys
import numpy as np
import caffe
caffe.set_mode_cpu()
proto, arrays, out_path = sys.argv[1:4] if len(sys.argv) > 3 else (PROTO, ARRAYS, OUT)
z = np.load(arrays)
net = caffe.Net(proto, caffe.TEST)
for key in z.files:
    if key.startswith("param|"):
        _, layer, j = key.split("|")
        net.params[layer][int(j)].data[...] = z[key]
calls = int(z["calls"])
out = {}
for k in range(calls):
    feeds = {key.split("|")[2]: z[key] for key in z.files if key.startswith("in|%d|" % k)}
    for name, a in feeds.items():
        net.blobs[name].reshape(*a.shape)
    net.reshape()
    for name, a in feeds.items():
        net.blobs[name].data[...] = a
    net.forward()
    for name in ("o", "h"):
        out["top|%d|%s" % (k, name)] = net.blobs[name].data.copy()
for name in ("o", "h"):
    net.blobs[name].diff[...] = z["diff|" + name]
net.backward()
for name in ("xr", "xl"):
    out["xdiff|" + name] = net.blobs[name].diff.copy()
for layer in ("rnn", "lstm"):
    for j, b in enumerate(net.params[layer]):
        out["pdiff|%s|%d" % (layer, j)] = b.diff.copy()
np.savez(out_path, **out)
'''


@pytest.mark.caffe
def test_state_carry_against_real_caffe(tmp_path):
    """Five calls in a row, the batch shrinking and growing (N = 3, 2, 3, 5, 2): the state each
    call starts from (h_T/c_T of the previous one, first streams kept, fresh zeros when the
    blob grows) and the last call's backward equal Caffe's."""
    import _oracle

    _oracle.require_oracle()
    T, D, H = 3, 4, 5
    Ns = [3, 2, 3, 5, 2]
    net = ('name: "carry"\nforce_backward: true\n'
           'layer { name: "in" type: "Input" top: "xr" top: "cr" top: "xl" top: "cl" '
           f'input_param {{ shape {{ dim: {T} dim: 3 dim: {D} }} shape {{ dim: {T} dim: 3 }} '
           f'shape {{ dim: {T} dim: 3 dim: {D} }} shape {{ dim: {T} dim: 3 }} }} }}\n'
           f'layer {{ name: "rnn" type: "RNN" bottom: "xr" bottom: "cr" top: "o" recurrent_param {{ num_output: {H} }} }}\n'
           f'layer {{ name: "lstm" type: "LSTM" bottom: "xl" bottom: "cl" top: "h" recurrent_param {{ num_output: {H} }} }}\n')
    body = f"recurrent_param {{ num_output: {H} }}"
    rnn = make_layer("RNN", body, [(T, 3, D), (T, 3)], name="rnn")
    lstm = make_layer("LSTM", body, [(T, 3, D), (T, 3)], name="lstm")
    arrays = {"calls": np.array(len(Ns))}
    for layer, seed in ((rnn, 1), (lstm, 2)):
        for j, p in enumerate(layer.blobs):
            v = randn(tuple(p.shape), seed * 10 + j, scale=0.7)
            p.data.copy_(torch.from_numpy(v))
            arrays[f"param|{layer.layer_name}|{j}"] = v
    ours = {}
    for k, n in enumerate(Ns):
        cont = np.ones((T, n), np.float32)
        cont[1, 0] = 0  # one mid-sequence reset; t=0 continues, so the carried state matters
        for layer, xn, cn, top in ((rnn, "xr", "cr", "o"), (lstm, "xl", "cl", "h")):
            x = randn((T, n, D), 100 + 3 * k + len(xn))
            arrays[f"in|{k}|{xn}"], arrays[f"in|{k}|{cn}"] = x, cont
            last = k == len(Ns) - 1
            xt = torch.from_numpy(x).requires_grad_(last)
            y = layer(xt, torch.from_numpy(cont))
            ours[f"top|{k}|{top}"] = y.detach().numpy()
            if last:
                d = randn(tuple(y.shape), 200 + len(xn))
                arrays[f"diff|{top}"] = d
                y.backward(torch.from_numpy(d))
                ours[f"xdiff|{xn}"] = xt.grad.numpy()
                for j, p in enumerate(layer.blobs):
                    ours[f"pdiff|{layer.layer_name}|{j}"] = p.grad.numpy()
    proto, req, out = tmp_path / "net.prototxt", tmp_path / "in.npz", tmp_path / "out.npz"
    proto.write_text(net)
    np.savez(req, **arrays)
    code = _CARRY_SCRIPT.replace("PROTO, ARRAYS, OUT", repr((str(proto), str(req), str(out))))
    _oracle.run_script(code)
    with np.load(out) as z:
        assert sorted(z.files) == sorted(ours)
        for key in z.files:
            assert_close(ours[key], z[key], rtol=1e-5, atol=1e-5, what=key)


# ---------------------------------------------------------------- export and nets


@pytest.mark.parametrize("name", ["rnn_static", "lstm_static", "lstm_static_expose_soft"])
def test_onnx_export_matches_onnxruntime(name):
    import io
    import warnings

    ort = pytest.importorskip("onnxruntime")
    _n, typ, static, expose, cont = next(c for c in CONFIGS if c[0] == name)
    layer, _, bottoms, _, _ = _build(name, typ, static, expose, cont, seed=5)
    xs = tuple(torch.from_numpy(b) for b in bottoms)
    with torch.no_grad():
        want = layer(*xs)
    want = want if isinstance(want, tuple) else (want,)
    layer.reset_state()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(layer, xs, f, dynamo=False, opset_version=17)
    sess = ort.InferenceSession(f.getvalue())
    feeds = {i.name: b for i, b in zip(sess.get_inputs(), bottoms)}
    got = sess.run(None, feeds)
    assert len(got) == len(want)
    for j, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, rtol=1e-5, atol=1e-6, what=f"{name} onnx top[{j}]")
    # the trace stores no state: a second run gives the same answer
    assert_close(sess.run(None, feeds)[0], got[0], 0, 0, "stateless graph")


def test_torch_export_keeps_the_carried_state():
    layer, _, bottoms, _, _ = _build("lstm", "LSTM", False, False, CONT, seed=6)
    ones = torch.ones(CONT.shape)
    x = torch.from_numpy(bottoms[0])
    with torch.no_grad():
        want = [layer(x, ones), layer(x, ones)]
    layer.reset_state()
    ep = torch.export.export(layer, (x, ones))
    mod = ep.module()
    with torch.no_grad():
        got = [mod(x, ones), mod(x, ones)]
    assert not torch.allclose(want[0], want[1], atol=1e-3)
    for g, w in zip(got, want):
        assert torch.equal(g, w)


@pytest.mark.caffe
def test_caffe_filled_caffemodel_loads_into_net(tmp_path):
    """Caffe fills RNN/LSTM blobs (gaussian/uniform), saves a caffemodel; load_net reads it into
    our Net in the same order and shapes and the tops agree (also through an InnerProduct)."""
    import _oracle
    from caffe_compat.net import load_net

    _oracle.require_oracle()
    T, N, D, H = 4, 3, 5, 6
    text = ('name: "seq"\n'
            'layer { name: "data" type: "Input" top: "x" top: "cont" top: "xs" '
            f'input_param {{ shape {{ dim: {T} dim: {N} dim: {D} }} shape {{ dim: {T} dim: {N} }} '
            f'shape {{ dim: {N} dim: 2 }} }} }}\n'
            'layer { name: "lstm1" type: "LSTM" bottom: "x" bottom: "cont" bottom: "xs" top: "h" '
            f'recurrent_param {{ num_output: {H} weight_filler {{ type: "gaussian" std: 0.4 }} '
            'bias_filler { type: "uniform" min: -0.5 max: 0.5 } } }\n'
            'layer { name: "rnn1" type: "RNN" bottom: "h" bottom: "cont" top: "o" '
            f'recurrent_param {{ num_output: {H - 1} weight_filler {{ type: "uniform" min: -0.6 max: 0.6 }} '
            'bias_filler { type: "gaussian" std: 0.3 } } }\n'
            'layer { name: "fc" type: "InnerProduct" bottom: "o" top: "y" '
            'inner_product_param { num_output: 2 axis: 2 weight_filler { type: "gaussian" std: 0.5 } } }\n')
    feeds = {"x": randn((T, N, D), 1), "cont": CONT[:T], "xs": randn((N, 2), 2)}
    model = tmp_path / "seq.caffemodel"
    proto = tmp_path / "seq.prototxt"
    proto.write_text(text)
    res = _oracle.caffe_run(text, inputs=feeds, seed=3, save_caffemodel=str(model))
    net = load_net(str(proto), weights=str(model))
    with torch.no_grad():
        blobs = net.forward_all(**{k: torch.from_numpy(v) for k, v in feeds.items()})
    for name in ("h", "o", "y"):
        assert_close(blobs[name], res["data"][name], rtol=1e-5, atol=1e-5, what=name)
    assert np.abs(res["data"]["y"]).max() > 0.05  # the fillers really filled something
