"""DistributedDataParallel set-up from the environment that ``torchrun`` provides.

``torchrun --nproc_per_node=K --no-python mmhvae train ...`` starts K processes with RANK, WORLD_SIZE,
LOCAL_RANK and MASTER_ADDR/PORT set; each runs the same trainer on its share of every global batch.
NCCL on GPUs, gloo on CPU. Without those variables everything runs in one process, unwrapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistributedContext:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: str = "auto") -> "DistributedContext":
        world = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if device == "auto":
            dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
        else:
            dev = torch.device(device)
            if dev.type == "cuda" and dev.index is None:
                dev = torch.device(f"cuda:{local}")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        return cls(rank, world, dev)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP-wrap a module; unused parameters are expected (absent modalities' encoders are not run)."""
        if not self.enabled:
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(module, device_ids=ids, find_unused_parameters=True)

    def no_sync(self, module: nn.Module, skip: bool):
        """Accumulate gradients locally (no all-reduce) when ``skip``; DDP needs one backward per forward."""
        import contextlib

        if skip and hasattr(module, "no_sync"):
            return module.no_sync()
        return contextlib.nullcontext()

    def sync_gradients(self, module: nn.Module) -> None:
        """Average gradients of a module that is not DDP-wrapped (the discriminators)."""
        if not self.enabled:
            return
        for p in module.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad /= self.world_size

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()
