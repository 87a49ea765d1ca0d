"""Certification runs on disk: the RUN_DIR layout, atomic chunk writes, resume, shards and torchrun.

Sampling is the expensive step of MultiGuard and is done once. A run draws ``n`` noisy copies of each of a
fixed random subset of inputs and stores, for every ``k' <= max_k_prime``, how often each label was in the base
classifier's top-k'. Everything after that (bounds, radii, curves for any k, alpha, baseline) reads the
stored counts.

RUN_DIR layout::

    RUN_DIR/
      metadata.json            what was run (checkpoint sha256, arch, dataset, split, sigma, n, seed,
                               max_k_prime, clamp, ...), the plan (num_inputs, chunk_size, num_chunks),
                               and when complete: wall time, devices
      inputs.npz               indices (N,) int64: the dataset indices, in run order (chosen from seed)
      chunks/chunk-000000.npz  one file per finished chunk of ``chunk_size`` consecutive inputs:
                               start, indices (m,), labels (m, c) bool, counts (m, K, c) int64,
                               seconds, device
      counts.npz               written once every chunk exists: indices (N,), labels (N, c) bool,
                               counts (N, K, c) int64 with counts[i, k'-1, j] = number of the n samples
                               whose top-k' contains label j

Every file is written to a temporary name in its folder and renamed (``os.replace``), so a run killed at
any moment (even ``kill -9``) leaves only whole files; ``resume`` redoes at most the chunk in flight.
Chunk ``j`` belongs to worker ``j % num_workers``; a worker is one (shard, rank) pair of ``--shard I/N``
and torch.distributed, so shards, ranks and resumes can be combined freely. Because the noise of an input
depends only on ``(seed, dataset index)`` and a chunk's contents do not depend on who computes it, every way
of splitting the work gives bit-identical counts on the same device type.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .files import atomic_write_bytes, atomic_write_json, atomic_write_npz, create_exclusive_json, file_sha256
from .validation import RunMismatchError

__all__ = [
    "IDENTITY_FIELDS",
    "Run",
    "SingleProcess",
    "RunProgress",
    "RunResult",
    "atomic_write_bytes",
    "atomic_write_json",
    "certify_run",
    "sample_run",
    "file_sha256",
    "is_run",
    "load_batch",
    "load_run",
    "parse_shard",
    "select_inputs",
]

METADATA = "metadata.json"
INPUTS = "inputs.npz"
CHUNKS = "chunks"
COUNTS = "counts.npz"
FORMAT_VERSION = 1

# The fields that define a run's counts: a resume, another shard or another rank must agree on all of them.
IDENTITY_FIELDS: tuple[str, ...] = (
    "format_version",
    "checkpoint_sha256",
    "arch",
    "dataset",
    "dataset_options",
    "split",
    "dataset_size",
    "image_size",
    "num_classes",
    "sigma",
    "clamp",
    "n",
    "seed",
    "max_k_prime",
    "num_inputs",
    "chunk_size",
)


class Sampler(Protocol):
    """What a run needs from the sampling engine (:class:`multiguard.smoothing.MultiGuard` fits)."""

    def sample_counts(self, x: Any, n: int, *, seed: int, index: Any, batch_size: int, max_k_prime: int) -> Any:
        """Counts ``(m, max_k_prime, c)`` of label membership in the top-k' of ``n`` noisy samples per row."""
        ...


# ------------------------------------------------------------------------------------------- files


# ---------------------------------------------------------------------------------------- planning


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
    from . import __version__

    return __version__


def _chunk_path(run_dir: Path, chunk: int) -> Path:
    return run_dir / CHUNKS / f"chunk-{chunk:06d}.npz"


def _num_chunks(num_inputs: int, chunk_size: int) -> int:
    return -(-num_inputs // chunk_size)


# ---------------------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class SingleProcess:
    """The place of a process that works alone: rank 0 of 1 (see :class:`multiguard.distributed.DistributedContext`
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


# --------------------------------------------------------------------------------------------- runs


@dataclass
class RunProgress:
    """Progress of this process, passed to the ``on_progress`` callback after every chunk it finishes."""

    done_inputs: int  # inputs of this worker that are finished (including chunks found on disk)
    total_inputs: int  # inputs assigned to this worker
    new_inputs: int  # inputs this process sampled in this session
    seconds: float  # wall time of this session so far
    samples_per_second: float
    skipped_inputs: int  # inputs found finished on disk (resume)


@dataclass
class RunResult:
    """What :func:`sample_run` did."""

    run_dir: Path
    complete: bool  # every chunk of the run exists (counts.npz was written)
    chunks_done: int  # chunks this process sampled in this session
    chunks_skipped: int  # chunks of this worker that were already on disk
    seconds: float
    metadata: dict[str, Any] = field(default_factory=dict)


def _identity_mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    for name in IDENTITY_FIELDS:
        if name not in wanted:
            continue
        old, new = existing.get(name), wanted[name]
        if isinstance(old, float) or isinstance(new, float):
            same = old is not None and new is not None and float(old) == float(new)
        else:
            same = old == new
        if not same:
            return f"{name}: the run has {old!r}, the arguments give {new!r}"
    return None


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return value


def _prepare_run_dir(
    run_dir: Path, metadata: dict[str, Any], indices: np.ndarray, *, resume: bool, joining: bool
) -> dict[str, Any]:
    """Create RUN_DIR with its metadata and inputs, or check an existing one against ``metadata``."""
    meta_path = run_dir / METADATA
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"out: {run_dir} exists and is not a folder")
    if run_dir.is_dir() and not meta_path.exists():
        # Another shard may be creating this very run right now (its chunks/ folder comes first): only files
        # that are not part of a RUN_DIR's layout make the folder someone else's.
        leftovers = [p for p in run_dir.iterdir() if not p.name.startswith(".") and p.name not in (CHUNKS, INPUTS)]
        if leftovers:
            raise ValueError(f"out: {run_dir} is not empty and holds no MultiGuard run ({METADATA} is missing)")
    run_dir.mkdir(parents=True, exist_ok=True)
    created = create_exclusive_json(meta_path, metadata)
    (run_dir / CHUNKS).mkdir(exist_ok=True)
    if created:
        atomic_write_npz(run_dir / INPUTS, indices=indices)
        return metadata
    existing = json.loads(meta_path.read_text())
    if not resume and not joining:
        raise ValueError(f"out: {run_dir} already holds a run; pass --resume to continue it, or choose a new --out")
    mismatch = _identity_mismatch(existing, metadata)
    if mismatch is not None:
        raise RunMismatchError(f"resume: {run_dir} was made with different settings ({mismatch})")
    inputs_path = run_dir / INPUTS
    if not inputs_path.exists():  # killed between metadata and inputs: the indices follow from the metadata
        atomic_write_npz(inputs_path, indices=indices)
    else:
        with np.load(inputs_path) as stored:
            if not np.array_equal(stored["indices"], indices):
                raise RunMismatchError(f"resume: {run_dir} certifies other inputs than the arguments select")
    return existing


def _read_chunk(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None


def _chunk_ok(path: Path, indices: np.ndarray, max_k_prime: int, num_classes: int | None) -> bool:
    data = _read_chunk(path) if path.exists() else None
    if data is None or not np.array_equal(data.get("indices"), indices):
        return False
    counts = data.get("counts")
    if counts is None or counts.ndim != 3 or counts.shape[:2] != (len(indices), max_k_prime):
        return False
    return num_classes is None or counts.shape[2] == num_classes


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


def sample_run(
    run_dir: str | os.PathLike[str],
    *,
    sampler: Sampler,
    dataset: Any,
    n: int,
    max_k_prime: int,
    seed: int = 0,
    num_inputs: int | None = 500,
    chunk_size: int = 10,
    batch_size: int = 1000,
    metadata: dict[str, Any] | None = None,
    resume: bool = False,
    shard: tuple[int, int] = (0, 1),
    context: SingleProcess | None = None,
    on_progress: Callable[[RunProgress], None] | None = None,
) -> RunResult:
    """Sample counts for a fixed random subset of ``dataset`` into ``run_dir``, chunk by chunk.

    Args:
        run_dir: the RUN_DIR (created if missing; must be empty or an existing run).
        sampler: the smoothed classifier; ``sampler.sample_counts(x, n, seed=, index=, batch_size=,
            max_k_prime=)`` must return ``(m, max_k_prime, c)`` counts whose noise depends only on
            ``(seed, index)``.
        dataset: indexable, ``dataset[i] -> (image, multi-hot labels)``.
        n: noisy samples per input.
        max_k_prime: counts are stored for every k' = 1..max_k_prime (one pass over the samples).
        seed: picks the subset of inputs and seeds the noise.
        num_inputs: how many inputs to certify (``None`` or 0: the whole split).
        chunk_size: inputs per chunk file (the most a kill can lose; part of the run's identity).
        batch_size: noisy samples per forward pass (memory only; not part of the run's identity).
        metadata: descriptive fields (checkpoint_sha256, arch, dataset, split, sigma, clamp, ...), stored in
            ``metadata.json``; those in :data:`IDENTITY_FIELDS` must match on resume.
        resume: continue a run that already exists in ``run_dir`` (its metadata must agree).
        shard: ``(I, N)``: this job does only the chunks of shard I of N (``--shard I/N``). Shards of one run
            may share RUN_DIR at the same time; they need no ``resume`` to join it.
        context: where this process stands in a torchrun job (:func:`multiguard.distributed.init_distributed`;
            default: a single process); ranks split each shard's chunks.
        on_progress: called with a :class:`RunProgress` once before sampling (what is already on disk) and after
            every chunk this process finishes.

    Returns:
        A :class:`RunResult`. When the last chunk of the run lands (in whichever process), ``counts.npz`` is
        written and ``metadata.json`` gains ``complete``, the total sampling ``wall_time_s`` and devices.
    """
    run_dir = Path(run_dir)
    context = context or SingleProcess()
    n = int(n)
    max_k_prime = int(max_k_prime)
    chunk_size = int(chunk_size)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if max_k_prime < 1:
        raise ValueError(f"max_k_prime must be >= 1, got {max_k_prime}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard_index, num_shards = shard
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard must be (I, N) with 0 <= I < N, got {shard}")
    indices = select_inputs(len(dataset), num_inputs, seed)
    total = len(indices)
    num_chunks = _num_chunks(total, chunk_size)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None and getattr(dataset, "class_names", None) is not None:
        num_classes = len(dataset.class_names)

    wanted: dict[str, Any] = dict(metadata or {})
    wanted.update(
        format_version=FORMAT_VERSION,
        n=n,
        seed=int(seed),
        max_k_prime=max_k_prime,
        num_inputs=total,
        chunk_size=chunk_size,
        num_chunks=num_chunks,
        dataset_size=len(dataset),
        batch_size=int(batch_size),
        device=context.device,
        world_size=context.world_size,
        num_shards=num_shards,
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        host=platform.node(),
        complete=False,
        version=_package_version(),
    )
    if num_classes is not None:
        wanted["num_classes"] = int(num_classes)
    wanted = _jsonable(wanted)
    joining = num_shards > 1 or context.world_size > 1

    # Rank 0 creates (or checks) the RUN_DIR first, so the others find it and only check.
    error: tuple[bool, str] | None = None  # (a settings mismatch?, the message)
    if context.rank == 0:
        try:
            _prepare_run_dir(run_dir, wanted, indices, resume=resume, joining=joining)
        except ValueError as exc:
            error = (isinstance(exc, RunMismatchError), str(exc))
    errors = context.all_gather(error)
    if errors[0] is not None:
        mismatch, message = errors[0]
        raise (RunMismatchError if mismatch else ValueError)(message)
    if context.rank != 0:
        _prepare_run_dir(run_dir, wanted, indices, resume=True, joining=True)
    if not joining:  # a single process owns the run: clean temporary files a killed session left behind
        for stale in [*run_dir.glob(".*.tmp"), *(run_dir / CHUNKS).glob(".*.tmp")]:
            stale.unlink(missing_ok=True)

    num_workers = num_shards * context.world_size
    worker = shard_index * context.world_size + context.rank
    mine = [chunk for chunk in range(num_chunks) if chunk % num_workers == worker]
    my_total = sum(len(indices[c * chunk_size : (c + 1) * chunk_size]) for c in mine)

    start_time = time.perf_counter()
    pending = []
    skipped_inputs = chunks_skipped = 0
    for chunk in mine:
        chunk_indices = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        if _chunk_ok(_chunk_path(run_dir, chunk), chunk_indices, max_k_prime, num_classes):
            chunks_skipped += 1
            skipped_inputs += len(chunk_indices)
        else:
            pending.append(chunk)
    done_inputs, new_inputs, chunks_done = skipped_inputs, 0, 0
    if on_progress is not None:  # where this worker starts (after a resume: what is already on disk)
        on_progress(RunProgress(done_inputs, my_total, 0, 0.0, 0.0, skipped_inputs))
    for chunk in pending:
        chunk_indices = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        path = _chunk_path(run_dir, chunk)
        chunk_start = time.perf_counter()
        images, labels = load_batch(dataset, chunk_indices)
        counts = sampler.sample_counts(
            images,
            n,
            seed=int(seed),
            index=chunk_indices,
            batch_size=int(batch_size),
            max_k_prime=max_k_prime,
        )
        counts = np.asarray(counts.detach().cpu() if hasattr(counts, "detach") else counts, dtype=np.int64)
        if counts.ndim == 2:  # a sampler that ignores max_k_prime = 1 may drop the k' axis
            counts = counts[:, None, :]
        expected = (len(chunk_indices), max_k_prime, labels.shape[1])
        if counts.shape != expected:
            raise ValueError(f"sampler returned counts of shape {counts.shape}, expected {expected}")
        seconds = time.perf_counter() - chunk_start
        atomic_write_npz(
            path,
            start=np.int64(chunk * chunk_size),
            indices=chunk_indices,
            labels=labels,
            counts=counts,
            seconds=np.float64(seconds),
            device=np.str_(context.device),
        )
        chunks_done += 1
        new_inputs += len(chunk_indices)
        done_inputs += len(chunk_indices)
        if on_progress is not None:
            elapsed = time.perf_counter() - start_time
            on_progress(
                RunProgress(
                    done_inputs=done_inputs,
                    total_inputs=my_total,
                    new_inputs=new_inputs,
                    seconds=elapsed,
                    samples_per_second=new_inputs * n / max(elapsed, 1e-9),
                    skipped_inputs=skipped_inputs,
                )
            )

    context.barrier()
    complete = False
    final_meta: dict[str, Any] = json.loads((run_dir / METADATA).read_text())
    if context.rank == 0:
        complete, final_meta = _finalize(run_dir)
    statuses = context.all_gather(complete)
    return RunResult(
        run_dir=run_dir,
        complete=bool(statuses[0]),
        chunks_done=chunks_done,
        chunks_skipped=chunks_skipped,
        seconds=time.perf_counter() - start_time,
        metadata=final_meta,
    )


def certify_run(run_dir: str | os.PathLike[str], *, progress: Callable[[RunProgress], None] | None = None,
                **kwargs: Any) -> RunResult:
    """The former name of :func:`sample_run` (it samples counts; the certificate comes later, from them)."""
    return sample_run(run_dir, on_progress=progress, **kwargs)


def _finalize(run_dir: Path) -> tuple[bool, dict[str, Any]]:
    """Merge the chunks into ``counts.npz`` if all exist; returns (complete, metadata)."""
    meta = json.loads((run_dir / METADATA).read_text())
    if (run_dir / COUNTS).exists() and meta.get("complete"):
        return True, meta
    merged = _merge_chunks(run_dir, meta)
    if merged is None:
        return False, meta
    indices, labels, counts, seconds, devices = merged
    atomic_write_npz(run_dir / COUNTS, indices=indices, labels=labels, counts=counts)
    meta.update(
        complete=True,
        completed_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        wall_time_s=round(float(seconds), 3),
        devices=sorted(set(devices)),
    )
    atomic_write_json(run_dir / METADATA, meta)
    return True, meta


def _merge_chunks(
    run_dir: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, list[str]] | None:
    chunk_size = int(meta["chunk_size"])
    with np.load(run_dir / INPUTS) as stored:
        indices = stored["indices"]
    parts: list[dict[str, np.ndarray]] = []
    for chunk in range(int(meta["num_chunks"])):
        path = _chunk_path(run_dir, chunk)
        data = _read_chunk(path) if path.exists() else None
        want = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        if data is None or not np.array_equal(data["indices"], want):
            return None
        parts.append(data)
    if not parts:
        return None
    labels = np.concatenate([p["labels"] for p in parts]).astype(bool)
    counts = np.concatenate([p["counts"] for p in parts]).astype(np.int64)
    seconds = float(sum(float(p["seconds"]) for p in parts))
    devices = [str(p["device"]) for p in parts]
    return indices, labels, counts, seconds, devices


# ------------------------------------------------------------------------------------------ loading


@dataclass
class Run:
    """A finished run, loaded from its RUN_DIR: everything a report needs, no model.

    ``counts[i, k'-1, j]`` is the number of the ``n`` noisy samples of input i whose top-k' contained label j;
    ``labels`` the ``(N, c)`` ground-truth masks; ``indices`` the dataset indices.
    """

    path: Path
    metadata: dict[str, Any]
    indices: np.ndarray
    labels: np.ndarray
    counts: np.ndarray

    @property
    def name(self) -> str:
        """The RUN_DIR's folder name."""
        return self.path.name

    @property
    def sigma(self) -> float:
        """Noise standard deviation the counts were sampled with."""
        return float(self.metadata["sigma"])

    @property
    def n(self) -> int:
        """Noisy samples per input."""
        return int(self.metadata["n"])

    @property
    def max_k_prime(self) -> int:
        """Largest k' with stored counts."""
        return int(self.counts.shape[1])

    @property
    def num_classes(self) -> int:
        """Number of labels c."""
        return int(self.counts.shape[2])

    @property
    def class_names(self) -> list[str] | None:
        """Label names, if the run recorded them."""
        names = self.metadata.get("class_names")
        return list(names) if names else None

    def counts_for(self, k_prime: int) -> np.ndarray:
        """``(N, c)`` counts of a base classifier that predicts its top ``k_prime`` labels."""
        k_prime = int(k_prime)
        if not 1 <= k_prime <= self.max_k_prime:
            raise ValueError(
                f"k_prime must be between 1 and {self.max_k_prime} for run {self.path} "
                f"(it was certified with --max-k-prime {self.max_k_prime}), got {k_prime}"
            )
        return self.counts[:, k_prime - 1, :]


def is_run(path: str | os.PathLike[str]) -> bool:
    """True if ``path`` is a RUN_DIR (it has a ``metadata.json`` of ours)."""
    meta = Path(path) / METADATA
    if not meta.is_file():
        return False
    try:
        return "max_k_prime" in json.loads(meta.read_text())
    except (OSError, ValueError):
        return False


def load_run(path: str | os.PathLike[str], *, allow_partial: bool = False) -> Run:
    """Load a RUN_DIR's counts, labels, indices and metadata (no model, no torch).

    A complete run reads ``counts.npz``; if every chunk exists but ``counts.npz`` does not (the last shard
    was killed while merging) the chunks are merged in memory. ``allow_partial=True`` loads the finished
    chunks of an unfinished run (the inputs certified so far), otherwise an unfinished run is an error.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run: {path} does not exist or is not a folder")
    if not is_run(path):
        raise ValueError(f"run: {path} is not a MultiGuard run (no valid {METADATA}; make one with multiguard certify)")
    meta = json.loads((path / METADATA).read_text())
    counts_path = path / COUNTS
    if counts_path.exists():
        with np.load(counts_path) as data:
            return Run(path, meta, data["indices"], data["labels"].astype(bool), data["counts"].astype(np.int64))
    merged = _merge_chunks(path, meta) if (path / INPUTS).exists() else None
    if merged is not None:
        indices, labels, counts, _, _ = merged
        return Run(path, meta, indices, labels, counts)
    chunk_files = sorted((path / CHUNKS).glob("chunk-*.npz"))
    if not allow_partial or not chunk_files:
        raise ValueError(
            f"run: {path} is unfinished ({len(chunk_files)} of {meta.get('num_chunks', '?')} chunks); "
            "finish it with multiguard certify --resume"
        )
    parts = [d for d in (_read_chunk(p) for p in chunk_files) if d is not None]
    return Run(
        path,
        meta,
        np.concatenate([p["indices"] for p in parts]),
        np.concatenate([p["labels"] for p in parts]).astype(bool),
        np.concatenate([p["counts"] for p in parts]).astype(np.int64),
    )


def run_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How far a RUN_DIR is: ``{"chunks_done", "num_chunks", "complete"}`` (for printing)."""
    path = Path(path)
    meta = json.loads((path / METADATA).read_text())
    done = len(list((path / CHUNKS).glob("chunk-*.npz")))
    return {"chunks_done": done, "num_chunks": int(meta["num_chunks"]), "complete": (path / COUNTS).exists()}


def describe_run(run: Run, fields: Sequence[str] = ("dataset", "split", "arch", "sigma", "n", "seed")) -> str:
    """One line naming a run and its main settings."""
    parts = [f"{name}={run.metadata.get(name)}" for name in fields if name in run.metadata]
    return f"{run.name} ({run.counts.shape[0]} inputs, k' <= {run.max_k_prime}; " + ", ".join(parts) + ")"
