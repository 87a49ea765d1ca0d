"""torchrun: joining the job, each rank's device, barriers and gathers (the torch side of :mod:`multiguard.runs.job`).

The process group is only used for barriers and to gather small objects: every rank writes its own chunk
files into the same RUN_DIR (a shared file system across nodes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

from multiguard.common.devices import resolve_device
from multiguard.common.processes import SingleProcess

__all__ = ["DistributedContext", "init_distributed"]


@dataclass(frozen=True)
class DistributedContext(SingleProcess):
    """This process's place in a torchrun job (rank 0 of 1, like :class:`SingleProcess`, when not launched
    by torchrun)."""

    def barrier(self) -> None:
        """Wait for every rank (no-op without torch.distributed)."""
        if self.initialized:
            torch.distributed.barrier()

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order (``[obj]`` without torch.distributed)."""
        if not self.initialized:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, obj)
        return gathered

    def close(self) -> None:
        """Tear down the process group this context created."""
        if self.initialized and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def init_distributed(device: str | None = None) -> DistributedContext:
    """Join the torch.distributed job torchrun started, if any, and pick this rank's device.

    Without torchrun (``WORLD_SIZE`` unset or 1) this returns rank 0 of 1 on ``device`` (resolved by
    :func:`multiguard.common.devices.resolve_device`). Under torchrun every rank uses one GPU, ``cuda:LOCAL_RANK``,
    and the NCCL backend; on CPU it uses gloo.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    resolved = resolve_device(device)
    if world_size <= 1:
        return DistributedContext(device=str(resolved))
    import torch.distributed as dist

    if resolved.type == "cuda":
        resolved = torch.device(f"cuda:{local_rank}")
        torch.cuda.set_device(local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    if not dist.is_initialized():
        kwargs: dict[str, Any] = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = resolved
        dist.init_process_group(**kwargs)
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=str(resolved), initialized=True
    )
