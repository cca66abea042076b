"""Several processes as Caffe's multi-GPU solver (parallel.cpp), and the seeds of each rank."""
from __future__ import annotations

import os
import zlib
from typing import Optional, Tuple

import numpy as np
import torch


def _dist():
    import torch.distributed as dist
    return dist if dist.is_available() and dist.is_initialized() else None


def _make_solver_class():
    from ..solver.solver import Solver

    class TrainSolver(Solver):
        """Solver + Caffe's NCCL gradient sum / solver_count before each update; rank 0 snapshots."""

        rank = 0
        world_size = 1

        def apply_update(self) -> None:
            dist = _dist()
            if dist is not None and self.world_size > 1:
                grads = [p.grad for p in self.params if p.grad is not None]
                if grads:
                    flat = torch.cat([g.reshape(-1) for g in grads])
                    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
                    flat.mul_(np.float32(1.0) / np.float32(self.world_size))
                    k = 0
                    for g in grads:
                        g.copy_(flat[k:k + g.numel()].view_as(g))
                        k += g.numel()
            super().apply_update()

        def snapshot(self):
            if self.rank != 0:
                return self.snapshot_paths()
            return super().snapshot()

    return TrainSolver


def _init_distributed(device: Optional[str] = None) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device) from torchrun's environment.

    ``device`` None: CUDA when present, else CPU.  With world_size > 1 the
    process group is NCCL on CUDA and gloo on CPU, and rank r takes GPU
    ``LOCAL_RANK`` (else r modulo the GPU count).
    """
    dev = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, dev
    import torch.distributed as dist
    if dev.type == "cuda" and dev.index is None:
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")))
        dev = torch.device("cuda", local % torch.cuda.device_count())
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), dev


@torch.no_grad()
def _broadcast_params(net) -> None:
    dist = _dist()
    if dist is None:
        return
    for p in net.learnable_params():
        dist.broadcast(p.data, src=0)


# ================================================================ seeds


def _seed_globals(random_seed: int, rank: int) -> None:
    if random_seed >= 0:
        torch.manual_seed(int(random_seed) + rank)
        np.random.seed((int(random_seed) + rank) % 2 ** 32)


def _reseed_layers(net, random_seed: int, rank: int) -> None:
    """Layers with their own mask stream (Dropout) follow ``random_seed + rank``, as Caffe's RNG does."""
    if random_seed < 0 and rank == 0:
        return   # keep the layers' default streams
    seed = max(int(random_seed), 0) + rank
    for name, m in zip(net.layer_names, net.layers):
        if hasattr(m, "reseed"):
            m.reseed(zlib.crc32(f"{name}/{seed}".encode("utf-8")))


def shutdown_distributed() -> None:
    dist = _dist()
    if dist is not None:
        dist.destroy_process_group()
