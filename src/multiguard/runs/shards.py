"""``--shard auto``: this job's shard from the variables a cluster's job array sets (torch-free).

A run's chunks are split among workers: one worker per (shard, rank) pair, shards from ``--shard I/N``
(separate jobs, e.g. the tasks of a SLURM job array) and ranks from torchrun (one process group, see
:mod:`multiguard.runs.job`). ``--shard auto`` reads the shard from the environment:

- a SLURM job array (``sbatch --array=0-15``): ``SLURM_ARRAY_TASK_ID``, with ``SLURM_ARRAY_TASK_MIN``,
  ``SLURM_ARRAY_TASK_MAX``, ``SLURM_ARRAY_TASK_STEP`` (1 if unset) and ``SLURM_ARRAY_TASK_COUNT``: shard
  ``(ID - MIN) / STEP`` of ``COUNT``, so ``--array=1-16`` or ``--array=0-30:2`` work as well as ``0-15``;
  ids that are not evenly spaced (``--array=1,4,9``) are refused, naming the variables;
- torchrun's ``RANK`` and ``WORLD_SIZE``: the ranks already split every shard's chunks (a worker is
  shard x WORLD_SIZE + RANK of N x WORLD_SIZE), so under torchrun alone the shard is 0 of 1 and each rank does
  the chunks ``--shard RANK/WORLD_SIZE`` would give it; inside a job array both apply.

With neither, ``--shard auto`` is refused (a job script run by hand would otherwise do every chunk, or none).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from multiguard.runs.job import parse_shard

__all__ = ["AutoShard", "auto_shard", "resolve_shard"]

SLURM_VARIABLES = ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_MAX", "SLURM_ARRAY_TASK_STEP",
                   "SLURM_ARRAY_TASK_COUNT")


@dataclass(frozen=True)
class AutoShard:
    """Where ``--shard auto`` put this process: shard ``index`` of ``count`` (for ``sample_run``'s ``shard``);
    ``worker`` of ``workers`` counts torchrun's rank in too; ``source`` says which variables gave it."""

    index: int
    count: int
    worker: int
    workers: int
    source: str


def _integer(environ: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = environ.get(name)
    if text is None or not text.strip():
        return default
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"shard: --shard auto: {name}={text!r} is not a whole number") from None


def auto_shard(environ: Mapping[str, str] | None = None) -> AutoShard:
    """This process's shard from a SLURM job array and torchrun's variables (see the module docstring).

    Raises ValueError (naming the variables) for an array whose ids are not evenly spaced, inconsistent
    values, or no job array and no torchrun at all.
    """
    environ = os.environ if environ is None else environ
    world = _integer(environ, "WORLD_SIZE", 1) or 1
    rank = _integer(environ, "RANK", 0) or 0
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"shard: --shard auto: RANK={rank} and WORLD_SIZE={world} must satisfy 0 <= RANK < WORLD_SIZE")
    task = _integer(environ, "SLURM_ARRAY_TASK_ID")
    if task is None:
        if world > 1:
            return AutoShard(0, 1, rank, world, f"torchrun: rank {rank} of {world} (its ranks split the chunks)")
        raise ValueError("shard: --shard auto found no SLURM job array (SLURM_ARRAY_TASK_ID, "
                         "SLURM_ARRAY_TASK_COUNT) and no torchrun (RANK, WORLD_SIZE); run it as a job array "
                         "(sbatch --array=0-N) or give --shard I/N")
    low = _integer(environ, "SLURM_ARRAY_TASK_MIN", 0)
    step = _integer(environ, "SLURM_ARRAY_TASK_STEP", 1)
    count = _integer(environ, "SLURM_ARRAY_TASK_COUNT")
    high = _integer(environ, "SLURM_ARRAY_TASK_MAX")
    if step is None or step < 1:
        raise ValueError(f"shard: --shard auto: SLURM_ARRAY_TASK_STEP={step} must be >= 1")
    if count is None:
        if high is None:
            raise ValueError("shard: --shard auto: SLURM_ARRAY_TASK_ID is set but neither SLURM_ARRAY_TASK_COUNT "
                             "nor SLURM_ARRAY_TASK_MAX is; give --shard I/N")
        count = (high - low) // step + 1
    values = ", ".join(f"{name}={environ[name]}" for name in SLURM_VARIABLES if name in environ)
    spaced = high is None or (high - low) % step == 0 and (high - low) // step + 1 == count
    if not spaced or (task - low) % step or not 0 <= (task - low) // step < count:
        raise ValueError(f"shard: --shard auto: the job array's task ids are not evenly spaced from "
                         f"SLURM_ARRAY_TASK_MIN ({values}); use --array=0-{count - 1} or give --shard I/N")
    index = (task - low) // step
    source = f"SLURM job array: task {task} is shard {index} of {count}"
    if world > 1:
        source += f", torchrun rank {rank} of {world}"
    return AutoShard(index, count, index * world + rank, count * world, source)


def resolve_shard(text: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(I, N)`` for the ``--shard`` option: ``"auto"`` from the environment (:func:`auto_shard`), otherwise
    ``"I/N"`` as :func:`multiguard.runs.job.parse_shard` reads it (``None``: ``(0, 1)``)."""
    if text is not None and str(text).strip().lower() == "auto":
        place = auto_shard(environ)
        return place.index, place.count
    return parse_shard(text)
