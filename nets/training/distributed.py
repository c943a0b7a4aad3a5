"""Distributed setup: the process's rank / world size, joining and leaving the ``torchrun`` process group,
and the few collectives the loop needs (no-ops in a single process)."""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistributedContext:
    """Rank / world size of this process (``world_size == 1``: plain single-process training)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def distributed_context() -> DistributedContext:
    """The context of the initialised default process group, or the single-process one."""
    if dist.is_available() and dist.is_initialized():
        return DistributedContext(
            dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0))
        )
    return DistributedContext()


def init_distributed(device: str | torch.device = "cpu") -> tuple[DistributedContext, torch.device]:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1 in the environment).

    Backend: NCCL for CUDA, gloo for CPU; rendezvous from torchrun's environment (``env://``). On CUDA
    each process uses ``cuda:LOCAL_RANK``. Without torchrun this returns the single-process context.
    """
    device = torch.device(device)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank if world_size > 1 else 0)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://")
    return distributed_context(), device


def shutdown_distributed(*, synchronize: bool = True) -> None:
    """Leave the process group in order: wait for every process (``synchronize``; skip it when this process
    is failing, since the others may never arrive), release Python's references to the group's C++ objects
    (a DDP reducer dropped later, during interpreter exit, would tear gloo's threads down out of order), then
    ``destroy_process_group``. A no-op in a single process or when no group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    if synchronize:
        dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    gc.collect()


def unwrap_model(model: nn.Module) -> nn.Module:
    """The underlying module of a DistributedDataParallel (or DataParallel) wrapper; identity otherwise."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def _all_gather_objects(obj: Any, context: DistributedContext) -> list[Any]:
    if not context.enabled:
        return [obj]
    gathered: list[Any] = [None] * context.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def _all_reduce_sum(values: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    if context.enabled:
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def _barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()
