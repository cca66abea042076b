"""The Solver: Caffe's training loop on a ``caffe_compat.net.Net`` (src/caffe/solver.cpp).

``Step(iters)`` per iteration, as solver.cpp:
  zero diffs -> test if iter % test_interval == 0 (and iter > 0 or test_initialization)
  -> iter_size x ForwardBackward (diffs add up; loss averaged for display)
  -> ApplyUpdate (lr from iter before the increment; clip, /iter_size,
  regularize, update rule, w -= update; iter += 1)
  -> snapshot when the new iter % snapshot == 0.
``solve()`` runs ``Step(max_iter - iter)`` and snapshots at the end unless
that iteration was just snapshotted or ``snapshot_after_train`` is false.

Data layers are named inputs of ``Net.forward``, so the solver takes a
``feed``: a mapping (the same inputs every pass, like an Input blob set
once) or a callable returning one per forward pass.  A feeder with
``state_dict()/load_state_dict()`` (JSON-able) has its position saved in
the snapshot side file.
"""
from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch

from ..errors import UnsupportedParameter
from ..weights import copy_trained_layers, save_caffemodel
from . import snapshot as snap
from .lr_policy import check_lr_policy, learning_rate
from .settings import f32, from_proto
from .updates import apply_update, check_settings, history_size, init_history

log = logging.getLogger("caffekt.solver")

Feed = Union[None, Mapping[str, torch.Tensor], Callable[[], Mapping[str, torch.Tensor]]]
Callback = Callable[["Solver", float], None]


def _call_feed(feed: Feed) -> Mapping[str, torch.Tensor]:
    if feed is None:
        return {}
    if callable(feed):
        return feed()
    return feed


class Solver:
    """Caffe's SGD-family solver.

    ``param``: a ``SolverParameter`` (upgraded; ``snapshot_prefix`` resolved).
    ``net``: the TRAIN ``Net``.  ``test_nets``: list of
    ``(net, feed)`` in test_iter order.  ``callbacks``: called after every
    iteration with ``(solver, loss)``; ``solver.rate`` is the lr just used.
    """

    def __init__(self, param, net, feed: Feed = None, *,
                 test_nets: Sequence[tuple] = (), callbacks: Sequence[Callback] = (),
                 where: Optional[str] = None):
        self.param = param
        self.where = where
        self.s = from_proto(param, where)
        check_lr_policy(self.s, where)
        check_settings(self.s, where)
        if param.average_loss < 1:
            raise UnsupportedParameter(f"{where or 'solver'}: average_loss should be >= 1, got {param.average_loss}")
        if param.snapshot and not param.HasField("snapshot_prefix"):
            raise UnsupportedParameter(f"{where or 'solver'}: snapshot is specified but snapshot_prefix is not")
        if param.snapshot_format != param.BINARYPROTO:
            raise UnsupportedParameter(f"{where or 'solver'}: snapshot_format HDF5 is not supported; "
                                       "use BINARYPROTO (the default)")
        if len(test_nets) and param.test_interval <= 0:
            raise UnsupportedParameter(f"{where or 'solver'}: test nets given but test_interval is "
                                       f"{param.test_interval}; expected > 0")
        if len(test_nets) > len(param.test_iter):
            raise UnsupportedParameter(f"{where or 'solver'}: test_iter must be specified for each "
                                       f"test network ({len(test_nets)} nets, {len(param.test_iter)} test_iter)")
        if param.random_seed >= 0:
            torch.manual_seed(int(param.random_seed))
            np.random.seed(int(param.random_seed) % 2 ** 32)
        self.net = net
        self.feed = feed
        self.test_nets = list(test_nets)
        self.callbacks = list(callbacks)
        self.params: List[torch.Tensor] = list(net.learnable_params())
        info = getattr(net, "param_info", None) or [{"lr_mult": 1.0, "decay_mult": 1.0}] * len(self.params)
        self.lr_mults = [f32(i["lr_mult"]) for i in info]
        self.decay_mults = [f32(i["decay_mult"]) for i in info]
        with torch.no_grad():
            self.history = init_history([p.detach() for p in self.params], self.s.type)
        self._zero_grads: Dict[int, torch.Tensor] = {}
        self.iter = 0
        self.current_step = 0
        self.rate = 0.0
        self.losses: List[float] = []
        self.smoothed_loss = 0.0
        self.grad_norm: Optional[float] = None
        self.test_results: List[Dict[str, np.ndarray]] = []
        self.requested_early_exit = False

    # ------------------------------------------------------------------ pieces of Step
    def clear_param_diffs(self) -> None:
        """Net::ClearParamDiffs: every learnable diff to zero."""
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def forward_backward(self) -> float:
        """One Net::ForwardBackward: returns the loss; param grads accumulate."""
        out = self.net(**_call_feed(self.feed))
        loss = self.net.loss(out)
        loss.backward()
        return float(loss.detach())

    def _grads(self) -> List[torch.Tensor]:
        out = []
        for i, p in enumerate(self.params):
            if p.grad is None:  # lr_mult 0 params get no diff; Caffe's stays zero
                z = self._zero_grads.get(i)
                if z is None:
                    z = self._zero_grads[i] = torch.zeros_like(p.detach())
                z.zero_()
                out.append(z)
            else:
                out.append(p.grad)
        return out

    def apply_update(self) -> None:
        """SGDSolver::ApplyUpdate: lr at the current iter, the update, then iter += 1."""
        self.rate, self.current_step = learning_rate(self.s, self.iter, self.current_step)
        with torch.no_grad():
            self.grad_norm = apply_update([p.detach() for p in self.params], self._grads(), self.history,
                                          self.s, self.rate, self.lr_mults, self.decay_mults, self.iter)
        self.iter += 1

    def _update_smoothed_loss(self, loss: float, start_iter: int) -> None:
        """Solver::UpdateSmoothedLoss: running mean over the last average_loss losses."""
        avg = self.param.average_loss
        if len(self.losses) < avg:
            self.losses.append(loss)
            n = len(self.losses)
            self.smoothed_loss = f32((self.smoothed_loss * (n - 1) + loss) / n)
        else:
            idx = (self.iter - start_iter) % avg
            self.smoothed_loss = f32(self.smoothed_loss + (loss - self.losses[idx]) / avg)
            self.losses[idx] = loss

    # ------------------------------------------------------------------ loops
    def step(self, iters: int) -> None:
        """Solver::Step."""
        p = self.param
        start_iter, stop_iter = self.iter, self.iter + int(iters)
        self.losses, self.smoothed_loss = [], 0.0
        while self.iter < stop_iter:
            self.clear_param_diffs()
            if p.test_interval and self.iter % p.test_interval == 0 and (self.iter > 0 or p.test_initialization):
                self.test_all()
            loss = 0.0
            for _ in range(self.s.iter_size):
                loss = f32(loss + self.forward_backward())
            loss = f32(loss / self.s.iter_size)
            self._update_smoothed_loss(loss, start_iter)
            display = p.display and self.iter % p.display == 0
            if display:
                log.info("Iteration %d, loss = %g", self.iter, self.smoothed_loss)
            self.apply_update()
            if display:
                log.info("Iteration %d, lr = %g", self.iter - 1, self.rate)
            for cb in self.callbacks:
                cb(self, loss)
            if p.snapshot and self.iter % p.snapshot == 0:
                self.snapshot()
            if self.requested_early_exit:
                break

    def solve(self, resume_file: Optional[str] = None) -> None:
        """Solver::Solve: optional restore, Step(max_iter - iter), the final snapshot and test."""
        p = self.param
        self.requested_early_exit = False
        if resume_file:
            self.restore(resume_file)
        self.step(p.max_iter - self.iter)
        if p.snapshot_after_train and (not p.snapshot or self.iter % p.snapshot != 0):
            self.snapshot()
        if self.requested_early_exit:
            return
        if p.test_interval and self.iter % p.test_interval == 0:
            self.test_all()

    # ------------------------------------------------------------------ testing
    @torch.no_grad()
    def _share_trained_layers(self, dst) -> None:
        """Net::ShareTrainedLayersWith, as a copy: same-named layers get the train net's blobs."""
        src = self.net.blobs_by_layer
        for name, dst_blobs in dst.blobs_by_layer.items():
            src_blobs = src.get(name)
            if not src_blobs or not dst_blobs:
                continue
            if len(src_blobs) != len(dst_blobs):
                raise UnsupportedParameter(f"test net layer {name!r} has {len(dst_blobs)} blobs, "
                                           f"the train net's {len(src_blobs)}")
            for a, b in zip(src_blobs, dst_blobs):
                if a is not b:
                    if a.shape != b.shape:
                        raise UnsupportedParameter(f"test net layer {name!r}: blob shape {list(b.shape)} "
                                                   f"!= train net's {list(a.shape)}")
                    b.copy_(a)

    @torch.no_grad()
    def test(self, i: int) -> Dict[str, np.ndarray]:
        """Solver::Test: mean of every output (and of the loss if test_compute_loss) over test_iter."""
        net, feed = self.test_nets[i]
        self._share_trained_layers(net)
        n_iter = int(self.param.test_iter[i])
        sums: "OrderedDict[str, np.ndarray]" = OrderedDict()
        loss = 0.0
        was_training = net.training
        net.eval()
        try:
            for _ in range(n_iter):
                out = net(**_call_feed(feed))
                if self.param.test_compute_loss:
                    loss += float(net.loss(out))
                for k, v in out.items():
                    a = v.detach().cpu().numpy().astype(np.float32).reshape(-1)
                    sums[k] = a if k not in sums else sums[k] + a
        finally:
            net.train(was_training)
        res = OrderedDict((k, v / n_iter) for k, v in sums.items())
        if self.param.test_compute_loss:
            res["__loss__"] = np.array([loss / n_iter], np.float32)
        for k, v in res.items():
            log.info("Iteration %d, test net #%d output %s = %s", self.iter, i, k, v)
        return res

    def test_all(self) -> List[Dict[str, np.ndarray]]:
        self.test_results = [self.test(i) for i in range(len(self.test_nets))]
        return self.test_results

    # ------------------------------------------------------------------ snapshots
    def snapshot_paths(self) -> tuple:
        prefix = self.param.snapshot_prefix
        return (snap.snapshot_filename(prefix, self.iter, ".caffemodel"),
                snap.snapshot_filename(prefix, self.iter, ".solverstate"))

    def snapshot(self) -> tuple:
        """Solver::Snapshot: the caffemodel, then the solverstate (naming it), then side files."""
        model, state = self.snapshot_paths()
        log.info("Snapshotting to binary proto file %s", model)
        save_caffemodel(self.net, model)
        snap.write_state(state, self.iter, model, self.history, self.current_step)
        extra: Dict[str, Any] = {"iter": self.iter, "current_step": self.current_step,
                                 "losses": list(self.losses), "smoothed_loss": self.smoothed_loss}
        if hasattr(self.feed, "state_dict"):
            extra["feed"] = self.feed.state_dict()
        snap.write_side(state, extra, self.net)
        return model, state

    def restore(self, state_file: str) -> None:
        """SGDSolver::RestoreSolverStateFromBinaryProto, plus caffekt's side files when present.

        ``learned_net`` is opened as written (relative to the current directory,
        as Caffe does); if it is not there, the file of that name beside the
        solverstate is used.
        """
        st = snap.read_state(state_file, self.params, history_size(self.s.type, len(self.params)))
        self.iter = st.iter
        if st.learned_net:
            copy_trained_layers(self.net, _locate(st.learned_net, state_file))
        self.current_step = st.current_step
        with torch.no_grad():
            for h, a in zip(self.history, st.history):
                h.copy_(torch.from_numpy(np.array(a, dtype=np.float32)).reshape(h.shape))
        side = snap.read_side(state_file, net=self.net)
        if side is not None:
            self.losses = [float(x) for x in side.get("losses", [])]
            self.smoothed_loss = float(side.get("smoothed_loss", 0.0))
            if "feed" in side and hasattr(self.feed, "load_state_dict"):
                self.feed.load_state_dict(side["feed"])


def _locate(learned_net: str, state_file: str) -> str:
    if os.path.exists(learned_net) or os.path.isabs(learned_net):
        return learned_net
    beside = os.path.join(os.path.dirname(os.path.abspath(state_file)), os.path.basename(learned_net))
    return beside if os.path.exists(beside) else learned_net
