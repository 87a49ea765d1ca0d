"""The place of a process that works alone (``SingleProcess``), with the attributes and methods of a torchrun
job's ``DistributedContext`` so that jobs need not tell the two apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SingleProcess"]


@dataclass(frozen=True)
class SingleProcess:
    """The place of a process that works alone: rank 0 of 1 (see
    :class:`multiguard.common.distributed.DistributedContext`
    for torchrun jobs, which has the same attributes and methods)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    initialized: bool = False

    def barrier(self) -> None:
        """Wait for every rank: nothing to wait for."""

    def all_gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order: ``[obj]``."""
        return [obj]

    def close(self) -> None:
        """Nothing to tear down."""
