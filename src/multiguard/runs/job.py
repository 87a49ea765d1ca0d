"""The sampling driver: a :class:`~multiguard.runs.spec.RunSpec` and a sampler in, a RUN_DIR out, chunk by chunk,
resumable, shardable across processes and torchrun ranks.

Sampling is the expensive step of MultiGuard and is done once. A run draws ``n`` noisy copies of each of a
fixed random subset of inputs and stores, for every ``k' <= max_k_prime``, how often each label was in the base
classifier's top-k' (with a :class:`~multiguard.certificates.stop_rule.StopRule`, each input is sampled look by look
until its
certificate at the rule's radius is settled). Everything after that (bounds, radii, curves for any k, alpha,
baseline) reads the stored counts. The folder's layout, how it is read back and checked, is
:mod:`multiguard.runs.folder`.

:func:`sample_run` reads as its steps: check the arguments, plan the run (the inputs, the metadata), prepare
the folder (rank 0 creates or checks it, the others then check it), assign this worker its chunks (redoing
damaged ones), sample them, and finalise (merge the chunks into ``counts.npz`` once all exist).

Chunk ``j`` belongs to worker ``j % num_workers``; a worker is one (shard, rank) pair of ``--shard I/N``
and torch.distributed, so shards, ranks and resumes can be combined freely. Because the noise of an input
depends only on ``(seed, dataset index)`` and a chunk's contents do not depend on who computes it, every way
of splitting the work gives bit-identical counts on the same device type.
"""

from __future__ import annotations

import datetime as _dt
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from multiguard.common.files import (
    atomic_write_npz,
    exclusive_lock,
)
from multiguard.common.processes import SingleProcess
from multiguard.common.validation import DamagedFileError, RunMismatchError
from multiguard.runs.checks import _identity_arrays, _jsonable, _num_chunks
from multiguard.runs.folder import (
    _chunk_path,
    _chunk_problem,
    _finalize,
    _prepare_run_dir,
    _remove_stale_temporaries,
)
from multiguard.runs.spec import RunSpec

if TYPE_CHECKING:
    from multiguard.certificates.stop_rule import StopRule

__all__ = ["RunProgress", "RunResult", "check_grid", "load_batch", "parse_shard", "run_lock", "sample_run",
           "select_inputs"]




class Sampler(Protocol):
    """What a run needs from the sampling engine (:class:`multiguard.sampling.smoothed.MultiGuard` fits)."""

    def sample_nested_counts(
        self, x: Any, sizes: Any, *, seed: int, index: Any, batch_size: int, max_k_prime: int
    ) -> Any:
        """Counts ``(m, S, max_k_prime, c)`` of label membership in the top-k' of the first ``sizes[s]`` noisy
        samples per row (with ``with_on_counts=True``, for a run with thresholds, also the per-label on-counts
        ``(m, S, c)`` of the same samples, as a second array)."""
        ...

    def sample_sequential_counts(
        self, x: Any, labels: Any, n: int, *, stop_rule: StopRule, seed: int, index: Any, batch_size: int,
        max_k_prime: int,
    ) -> tuple[Any, Any]:
        """``(counts (m, max_k_prime, c), samples (m,))``: each row sampled until ``stop_rule`` (a complete
        :class:`~multiguard.certificates.stop_rule.StopRule`: radius, k, k', alpha and the procedure) stops it;
        with ``with_on_counts=True`` a third array, the per-label on-counts ``(m, c)`` at each row's stop."""
        ...


def select_inputs(dataset_size: int, num_inputs: int | None, seed: int) -> np.ndarray:
    """The dataset indices a run certifies: ``num_inputs`` distinct indices drawn from ``seed``, sorted.

    ``num_inputs`` of ``None`` or 0 means every input of the split. The draw uses its own generator seeded
    from ``seed``, never the global RNG, so the same arguments always give the same subset.
    """
    if int(dataset_size) < 1:
        raise ValueError(f"dataset_size must be >= 1, got {dataset_size}")
    if num_inputs is None or int(num_inputs) == 0:
        return np.arange(int(dataset_size), dtype=np.int64)
    num_inputs = int(num_inputs)
    if num_inputs < 0:
        raise ValueError(f"num_inputs must be >= 0 (0 = all), got {num_inputs}")
    if num_inputs > dataset_size:
        raise ValueError(f"num_inputs ({num_inputs}) exceeds the number of inputs in the split ({dataset_size})")
    rng = np.random.default_rng([int(seed), 0x5EED])
    return np.sort(rng.choice(int(dataset_size), size=num_inputs, replace=False)).astype(np.int64)


def parse_shard(text: str | None) -> tuple[int, int]:
    """Parse ``"I/N"`` (0 <= I < N) into ``(I, N)``; ``None`` is ``(0, 1)``."""
    if text is None:
        return 0, 1
    try:
        index_text, count_text = str(text).split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise ValueError(f"shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be I/N with 0 <= I < N, got {text!r}")
    return index, count


def _package_version() -> str:
    from multiguard import __version__

    return __version__


@dataclass
class RunProgress:
    """Progress of this process, passed to the ``on_progress`` callback after every chunk it finishes."""

    done_inputs: int  # inputs of this worker that are finished (including chunks found on disk)
    total_inputs: int  # inputs assigned to this worker
    new_inputs: int  # inputs this process sampled in this session
    seconds: float  # wall time of this session so far
    samples_per_second: float
    skipped_inputs: int  # inputs found finished on disk (resume)
    repairs: tuple[str, ...] = ()  # what a resume found damaged and redoes (one line each)


@dataclass
class RunResult:
    """What :func:`sample_run` did."""

    run_dir: Path
    complete: bool  # every chunk of the run exists (counts.npz was written)
    chunks_done: int  # chunks this process sampled in this session
    chunks_skipped: int  # chunks of this worker that were already on disk
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)
    repairs: list[str] = field(default_factory=list)  # damaged files this process redid or rewrote, one line each


def load_batch(dataset: Any, indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The inputs and label masks of ``dataset[i]`` for each i: ``(images (m, *shape), labels (m, c) bool)``.

    The one batch loader of runs, attacks and predictions: any indexable dataset whose items are
    ``(image, multi-hot labels)`` (tensors or arrays) works. Images are stacked as NumPy arrays (no torch
    needed here; the sampler turns them into tensors).
    """
    images, labels = [], []
    for index in indices:
        image, label = dataset[int(index)]
        images.append(np.asarray(image))
        labels.append(np.asarray(label) > 0.5)
    return np.stack(images), np.stack(labels)


@dataclass(frozen=True)
class _Plan:
    """What the run is, once the dataset and sampler are known: the planned spec, the inputs in run order,
    the looks, the metadata a new run starts with."""

    spec: RunSpec
    indices: np.ndarray
    sizes: np.ndarray
    metadata: dict[str, Any]

    def chunk_indices(self, chunk: int) -> np.ndarray:
        size = self.spec.chunk_size
        return self.indices[chunk * size : (chunk + 1) * size]


@dataclass
class _Work:
    """This worker's chunks: those still to sample, and what the folder already holds."""

    pending: list[int]
    total_inputs: int
    skipped_inputs: int
    chunks_skipped: int


def run_lock(run_dir: str | os.PathLike[str], *, shard: tuple[int, int] = (0, 1), rank: int = 0) -> Any:
    """The lock one worker (shard I of N, torchrun rank r) holds on a RUN_DIR while it samples: a second process
    doing the same worker's chunks is refused in one line naming the holder (shards and ranks of one job hold
    their own locks, so they share the folder). Released with its holder, also after ``kill -9``
    (:func:`multiguard.common.files.exclusive_lock`); the lock file is hidden in the RUN_DIR."""
    path = Path(run_dir) / f".lock-shard-{shard[0]}-of-{shard[1]}-rank-{rank}"
    return exclusive_lock(path, f"out: {run_dir}")


def sample_run(
    run_dir: str | os.PathLike[str],
    spec: RunSpec,
    *,
    sampler: Sampler,
    dataset: Any,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    context: SingleProcess | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunResult:
    """Sample counts for the inputs ``spec`` selects from ``dataset`` into ``run_dir``, chunk by chunk.

    Args:
        run_dir: the RUN_DIR (created if missing; must be empty or an existing run).
        spec: the run (:class:`~multiguard.runs.spec.RunSpec`): n, max_k_prime, seed, num_inputs, chunk_size,
            batch_size, the stop rule of a sequential run, and what the base classifier and data record. Its
            identity fields must match on resume.
        sampler: the smoothed classifier (:class:`Sampler`; :class:`multiguard.sampling.smoothed.MultiGuard` fits):
            its noise depends only on ``(seed, index)``; a sequential run needs its ``k_prime`` to be the stop
            rule's.
        dataset: indexable, ``dataset[i] -> (image, multi-hot labels)``.
        resume: continue a run that already exists in ``run_dir`` (its identity must agree).
        shard: ``(I, N)``: this job does only the chunks of shard I of N (``--shard I/N``). Shards of one run
            may share RUN_DIR at the same time; they need no ``resume`` to join it.
        context: where this process stands in a torchrun job (:func:`multiguard.common.distributed.init_distributed`;
            default: a single process); ranks split each shard's chunks.
        on_progress: called with a :class:`RunProgress` once before sampling (what is already on disk) and after
            every chunk this process finishes.

    Returns:
        A :class:`RunResult`. When the last chunk of the run lands (in whichever process), ``counts.npz`` is
        written and ``metadata.json`` gains ``complete``, the total sampling ``wall_time_s`` and devices.
    """
    if not isinstance(spec, RunSpec):
        raise ValueError(f"spec must be a RunSpec, got {type(spec).__name__}")
    context = context or SingleProcess()
    _check_arguments(spec, sampler, shard)
    plan = _plan_run(spec, sampler, dataset, context, shard)
    if plan.spec.noise == "sound" and len(plan.indices):  # a 16-bit dataset is refused before any folder is made
        check_grid(load_batch(dataset, plan.chunk_indices(0))[0], plan.chunk_indices(0), dataset)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"out: {run_dir} exists and is not a folder")
    run_dir.mkdir(parents=True, exist_ok=True)  # every setting checked: the folder may be made now
    with run_lock(run_dir, shard=shard, rank=context.rank):
        run_meta, repairs = _open_run_dir(run_dir, plan, context, resume=resume, joining=shard[1] > 1)
        work = _assign_work(run_dir, plan, run_meta, context, shard, repairs)
        start_time = time.perf_counter()
        chunks_done = _sample_chunks(run_dir, plan, work, sampler, dataset, context, run_meta, on_progress, repairs)
        complete, final_meta = _finish_run(run_dir, context, run_meta, repairs)
    return RunResult(run_dir=run_dir, complete=complete, chunks_done=chunks_done,
                     chunks_skipped=work.chunks_skipped, seconds=time.perf_counter() - start_time,
                     metadata=final_meta, repairs=repairs)




def _check_arguments(spec: RunSpec, sampler: Any, shard: tuple[int, int]) -> None:
    """What the spec cannot check alone: the shard, and a sequential rule's k' against the sampler's."""
    shard_index, num_shards = shard
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard must be (I, N) with 0 <= I < N, got {shard}")
    sampler_thresholds = getattr(sampler, "thresholds", None)
    have = None if sampler_thresholds is None else sampler_thresholds.identity()
    if spec.thresholds != have and not (spec.thresholds is None and sampler_thresholds is None):
        raise ValueError(f"thresholds: the run spec has {spec.thresholds!r}, the sampler {have!r} (they are part "
                         "of the base classifier: give the sampler the spec's)")
    sampler_k_prime = getattr(sampler, "k_prime", None)
    rule = spec.stop_rule
    if rule is not None and sampler_k_prime is not None and int(sampler_k_prime) != rule.k_prime:
        raise ValueError(f"k_prime must be the sampler's k_prime ({sampler_k_prime}) for a sequential run, "
                         f"got {rule.k_prime}")


def _plan_run(spec: RunSpec, sampler: Any, dataset: Any, context: Any, shard: tuple[int, int]) -> _Plan:
    """The inputs (drawn from the seed), the looks, and the metadata a new run starts with."""
    from multiguard.certificates.sequential import sample_size_schedule  # SciPy loads here, not at import

    # fixed n: the nested sizes of the 1-2-5 series; sequential: the looks of the rule's schedule
    sizes = sample_size_schedule(spec.n) if spec.stop_rule is None else spec.stop_rule.looks(spec.n)
    indices = select_inputs(len(dataset), spec.num_inputs, spec.seed)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None and getattr(dataset, "class_names", None) is not None:
        num_classes = len(dataset.class_names)
    sigma = getattr(sampler, "sigma", None)  # MultiGuard's: the noise the counts are sampled with
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)):
        sigma = None
    planned = spec.planned(len(dataset), len(indices), num_classes, sizes.tolist(), sigma)
    metadata = planned.metadata()
    metadata.update(
        num_chunks=_num_chunks(len(indices), planned.chunk_size),
        device=context.device,
        world_size=context.world_size,
        num_shards=shard[1],
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(),
        complete=False,
        version=_package_version(),
    )
    return _Plan(planned, indices, sizes, _jsonable(metadata))


def _open_run_dir(run_dir: Path, plan: _Plan, context: Any, *, resume: bool, joining: bool
                  ) -> tuple[dict[str, Any], list[str]]:
    """Rank 0 creates (or checks) the RUN_DIR first, so the others find it and only check. Every rank raises
    rank 0's error, if any. Stale temporary files are removed. Returns the run's metadata and the repairs."""
    joining = joining or context.world_size > 1
    error: tuple[bool, str] | None = None  # (a settings mismatch?, the message)
    repairs: list[str] = []
    if context.rank == 0:
        try:
            run_meta, repairs = _prepare_run_dir(run_dir, plan.metadata, plan.indices, resume=resume,
                                                 joining=joining)
        except ValueError as exc:
            error = (isinstance(exc, RunMismatchError), str(exc))
    errors = context.all_gather(error)
    if errors[0] is not None:
        mismatch, message = errors[0]
        raise (RunMismatchError if mismatch else ValueError)(message)
    if context.rank != 0:
        run_meta, _ = _prepare_run_dir(run_dir, plan.metadata, plan.indices, resume=True, joining=True)
    _remove_stale_temporaries(run_dir)  # only files older than any write: a younger one may be in flight
    return run_meta, repairs


def _assign_work(run_dir: Path, plan: _Plan, run_meta: dict[str, Any], context: Any, shard: tuple[int, int],
                 repairs: list[str]) -> _Work:
    """This worker's chunks (chunk j goes to worker j % workers); every one found on disk is read back whole
    and checked, and a damaged one is sampled again (said in ``repairs``)."""
    shard_index, num_shards = shard
    num_workers = num_shards * context.world_size
    worker = shard_index * context.world_size + context.rank
    num_chunks = _num_chunks(len(plan.indices), plan.spec.chunk_size)
    mine = [chunk for chunk in range(num_chunks) if chunk % num_workers == worker]
    work = _Work(pending=[], total_inputs=sum(len(plan.chunk_indices(c)) for c in mine), skipped_inputs=0,
                 chunks_skipped=0)
    for chunk in mine:
        chunk_indices = plan.chunk_indices(chunk)
        path = _chunk_path(run_dir, chunk)
        problem = _chunk_problem(path, run_meta, chunk_indices, plan.spec.num_classes)
        if problem is None:
            work.chunks_skipped += 1
            work.skipped_inputs += len(chunk_indices)
        else:
            work.pending.append(chunk)
            if problem != "missing":
                repairs.append(f"{path} is damaged ({problem}): sampling it again")
    return work


def _sample_chunk(plan: _Plan, sampler: Any, images: np.ndarray, labels: np.ndarray, chunk_indices: np.ndarray
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], int]:
    """One chunk's counts ``(m, K, c)``, its extra arrays (nested counts, or samples used) and the samples
    drawn."""
    spec = plan.spec
    common = dict(seed=spec.seed, index=chunk_indices, batch_size=spec.batch_size, max_k_prime=spec.max_k_prime)
    if spec.thresholds is not None:  # the per-label on-counts, from the same forward passes
        common["with_on_counts"] = True
    rule = spec.stop_rule
    if rule is None:
        result = sampler.sample_nested_counts(images, plan.sizes, **common)
        nested, nested_on = result if spec.thresholds is not None else (result, None)
        nested = np.asarray(nested, dtype=np.int64)
        expected = (len(chunk_indices), plan.sizes.size, spec.max_k_prime, labels.shape[1])
        if nested.shape != expected:
            raise ValueError(f"sampler returned nested counts of shape {nested.shape}, expected {expected}")
        counts, extra, drawn = nested[:, -1], {"nested_counts": nested}, len(chunk_indices) * spec.n
        if nested_on is not None:
            extra["nested_on_counts"] = np.asarray(nested_on, dtype=np.int64)
            extra["on_counts"] = extra["nested_on_counts"][:, -1]
    else:
        result = sampler.sample_sequential_counts(
            images, labels, spec.n, stop_rule=rule, **common,
        )
        counts, samples = result[0], result[1]
        counts = np.asarray(counts, dtype=np.int64)
        extra = {"samples": np.asarray(samples, dtype=np.int64)}
        if spec.thresholds is not None:
            extra["on_counts"] = np.asarray(result[2], dtype=np.int64)
        drawn = int(extra["samples"].sum())
    expected = (len(chunk_indices), spec.max_k_prime, labels.shape[1])
    if counts.shape != expected:
        raise ValueError(f"sampler returned counts of shape {counts.shape}, expected {expected}")
    return counts, extra, drawn


def check_grid(images: np.ndarray, indices: np.ndarray, dataset: Any) -> None:
    """Refuse, naming the dataset's file (or input index), the first image ``(m, ...)`` off the 1/255 grid: the
    sound noise is defined on 8-bit pixels only, and a 16-bit dataset fails every chunk the same way."""
    from multiguard.common.noise_kinds import off_grid_rows

    off = off_grid_rows(images)
    if off.any():
        index = int(indices[int(np.argmax(off))])
        paths = getattr(dataset, "paths", None)
        name = f"image {paths[index]}" if paths is not None and index < len(paths) else f"input {index}"
        raise ValueError(f"dataset: {name} is not 8-bit (off the 1/255 grid: a 16-bit or float image); sound noise "
                         "needs 8-bit pixels: save the dataset's images as 8-bit, or use --noise float")


def _sample_chunks(run_dir: Path, plan: _Plan, work: _Work, sampler: Any, dataset: Any, context: Any,
                   run_meta: dict[str, Any], on_progress: Callable[[RunProgress], None] | None,
                   repairs: list[str]) -> int:
    """Sample this worker's pending chunks, each written whole (to a temporary name, then renamed), reporting
    progress after each. Returns how many chunks were sampled."""
    identity = _identity_arrays(run_meta)
    done_inputs, new_inputs, new_samples = work.skipped_inputs, 0, 0
    if on_progress is not None:  # where this worker starts (after a resume: what is already on disk)
        on_progress(RunProgress(done_inputs, work.total_inputs, 0, 0.0, 0.0, work.skipped_inputs, tuple(repairs)))
    start_time = time.perf_counter()
    for chunk in work.pending:
        chunk_indices = plan.chunk_indices(chunk)
        chunk_start = time.perf_counter()
        images, labels = load_batch(dataset, chunk_indices)
        if plan.spec.noise == "sound":
            check_grid(images, chunk_indices, dataset)
        counts, extra, drawn = _sample_chunk(plan, sampler, images, labels, chunk_indices)
        atomic_write_npz(
            _chunk_path(run_dir, chunk), start=np.int64(chunk * plan.spec.chunk_size), indices=chunk_indices,
            labels=labels, counts=counts, seconds=np.float64(time.perf_counter() - chunk_start),
            device=np.str_(context.device), **identity, **extra,
        )
        new_samples += drawn
        new_inputs += len(chunk_indices)
        done_inputs += len(chunk_indices)
        if on_progress is not None:
            elapsed = time.perf_counter() - start_time
            on_progress(RunProgress(
                done_inputs=done_inputs, total_inputs=work.total_inputs, new_inputs=new_inputs, seconds=elapsed,
                samples_per_second=new_samples / max(elapsed, 1e-9), skipped_inputs=work.skipped_inputs,
            ))
    return len(work.pending)


def _finish_run(run_dir: Path, context: Any, run_meta: dict[str, Any], repairs: list[str]
                ) -> tuple[bool, dict[str, Any]]:
    """After every rank is done, rank 0 merges the chunks into ``counts.npz`` if all exist; every rank gets
    whether the run is complete (or rank 0's error about a damaged chunk of another worker)."""
    context.barrier()
    complete, error = False, None
    final_meta: dict[str, Any] = run_meta
    if context.rank == 0:
        try:
            complete, final_meta = _finalize(run_dir, repairs)
        except ValueError as exc:  # a damaged chunk of another worker: every rank stops with the same message
            error = str(exc)
    statuses = context.all_gather((complete, error))
    if statuses[0][1] is not None:
        raise DamagedFileError(statuses[0][1])
    return bool(statuses[0][0]), final_meta


