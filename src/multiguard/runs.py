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
                               seconds, device, identity, identity_sha256; a fixed-n run also nested_counts
                               (m, S, K, c), a sequential run samples (m,)
      counts.npz               written once every chunk exists: indices (N,), labels (N, c) bool,
                               counts (N, K, c) int64 with counts[i, k'-1, j] = number of the n samples
                               whose top-k' contains label j; identity, identity_sha256; and nested_counts
                               (N, S, K, c) or samples (N,) as the chunks have them

``identity`` is the JSON text of the run's :data:`IDENTITY_FIELDS` (sigma, n, seed, dataset, checkpoint, ...)
as they were when the counts were sampled, and ``identity_sha256`` its digest: a ``metadata.json`` edited by
hand (a larger sigma would inflate every radius) or mixed up with another run's is refused, naming the field.

Nested counts (fixed-n runs): ``nested_counts[i, s]`` are the counts of the first ``sample_sizes[s]`` samples
(metadata ``sample_sizes``: :func:`multiguard.certify.sample_size_schedule` ``(n)``, e.g. 100, 200, 500,
1000), the same samples a run with that n would draw: :meth:`Run.at_sample_size` reads a run at a smaller n.

Sequential runs (metadata ``stop_rule``: radius, k, k_prime, alpha, futility): each input was sampled look by look at
``sample_sizes`` and stopped by :func:`multiguard.certify.sequential_stopping_rule`; ``counts`` are its counts
at its stop (for every k' <= K) and ``samples`` how many samples it used. Their bounds are the anytime-valid
ones. Runs written before these fields existed have neither and load as before.

Every file is written to a temporary name in its folder and renamed (``os.replace``), so a run killed at
any moment (even ``kill -9``) leaves only whole files; ``resume`` redoes at most the chunk in flight. Files
that were damaged afterwards (truncated by a copy, a full disk, a hand edit) are found too: a resume reads
back every chunk it finds and samples again the ones that are not whole (saying which), and
:func:`load_run` names a damaged file and says to resume. A temporary file is removed by the process that
made it, or by a later process once it is older than :data:`STALE_TMP_SECONDS` (a younger one may be another
shard's write in flight). ``n`` is at most :data:`MAX_N`, checked before any file is made.

Chunk ``j`` belongs to worker ``j % num_workers``; a worker is one (shard, rank) pair of ``--shard I/N``
and torch.distributed, so shards, ranks and resumes can be combined freely. Because the noise of an input
depends only on ``(seed, dataset index)`` and a chunk's contents do not depend on who computes it, every way
of splitting the work gives bit-identical counts on the same device type.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .files import (
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_npz,
    create_exclusive_json,
    file_sha256,
)
from .modes import MODE_DEFAULTS, describe_mode
from .validation import (
    MAX_N,
    DamagedFileError,
    RunMismatchError,
    check_alpha,
    check_choice,
    check_float,
    check_int,
    invalid,
)

__all__ = [
    "IDENTITY_FIELDS",
    "MAX_N",
    "STALE_TMP_SECONDS",
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
    "sampling_mode",
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
    "denoiser_sha256",
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
    "sample_sizes",
    "seed",
    "max_k_prime",
    "num_inputs",
    "chunk_size",
    "precision",
    "channels_last",
    "compile",
    "stop_rule",
)

# A temporary file (``.<name>.<random>.tmp``) older than this is left over from a killed writer and may be
# removed; a younger one may belong to another process writing right now (a shard, a rank) and is left alone.
STALE_TMP_SECONDS = 24 * 3600.0
# What to do about a damaged file of a run: sampling it again repairs the run.
_REPAIR = "run the same multiguard certify command with --resume to redo it"
# Identity fields a run written before they existed lacks; such a run was sampled with these values.
IDENTITY_DEFAULTS: dict[str, Any] = dict(MODE_DEFAULTS)


class Sampler(Protocol):
    """What a run needs from the sampling engine (:class:`multiguard.smoothing.MultiGuard` fits)."""

    def sample_nested_counts(
        self, x: Any, sizes: Any, *, seed: int, index: Any, batch_size: int, max_k_prime: int
    ) -> Any:
        """Counts ``(m, S, max_k_prime, c)`` of label membership in the top-k' of the first ``sizes[s]`` noisy
        samples per row."""
        ...

    def sample_sequential_counts(
        self, x: Any, labels: Any, n: int, *, stop_at_radius: float, alpha: float, k: int, seed: int, index: Any,
        batch_size: int, max_k_prime: int,
    ) -> tuple[Any, Any]:
        """``(counts (m, max_k_prime, c), samples (m,))``: each row sampled until the stopping rule stops it
        (``futility`` is passed as a keyword too)."""
        ...


# ------------------------------------------------------------------------------------------- files


def _reason(exc: BaseException) -> str:
    """The first line of an exception's message (or its type), short enough for a one-line error."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."


class _DamagedRunFile(DamagedFileError):
    """A file of a RUN_DIR that cannot be used as it is: ``path`` names it, ``reason`` says why."""

    def __init__(self, path: Path, reason: str, advice: str) -> None:
        super().__init__(f"run: {path} is damaged ({reason}); {advice}")
        self.path, self.reason = path, reason


class _EditedMetadata(DamagedFileError):
    """``metadata.json`` disagrees with the identity stored with the counts (a hand edit or a mix-up)."""


def _damaged(path: Path, reason: str, advice: str = _REPAIR) -> _DamagedRunFile:
    return _DamagedRunFile(path, reason, advice)


def _read_npz(path: Path, advice: str = _REPAIR) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; :class:`DamagedFileError` naming the file if it cannot be read whole.

    Whatever the bytes (truncated, random, a ``.npy``, pickled objects), the only error is that one: a file of
    a run is data we wrote, so any failure to read it means it was damaged.
    """
    try:
        loaded = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise _damaged(path, "missing", advice) from None
    except (PermissionError, IsADirectoryError):  # not damaged: the user's to fix (the CLI names the file)
        raise
    except Exception as exc:  # noqa: BLE001 - BadZipFile, EOFError, ValueError, MemoryError...: all mean damaged
        raise _damaged(path, f"cannot be read: {_reason(exc)}", advice) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise _damaged(path, "not an .npz archive", advice)
    try:
        with loaded:
            return {key: loaded[key] for key in loaded.files}
    except Exception as exc:  # noqa: BLE001 - a member cut short or not an array
        raise _damaged(path, f"cannot be read: {_reason(exc)}", advice) from None


def _read_metadata(path: Path) -> dict[str, Any]:
    """``metadata.json`` as a dict; :class:`DamagedFileError` naming it if it is not a JSON object."""
    advice = "run the same multiguard certify command with --resume to rewrite it"
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise _damaged(path, "missing", advice) from None
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise _damaged(path, f"not valid JSON: {_reason(exc)}", advice) from None
    if not isinstance(meta, dict):
        raise _damaged(path, f"not a JSON object but {type(meta).__name__}", advice)
    return meta


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The identity fields (:data:`IDENTITY_FIELDS`) a run's metadata holds."""
    return {name: meta[name] for name in IDENTITY_FIELDS if name in meta}


def _identity_arrays(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """What every chunk and ``counts.npz`` store of the run that sampled them: the identity fields as JSON
    text and its SHA-256, so that a hand-edited ``metadata.json`` (or counts of another run) is detected."""
    text = json.dumps(_jsonable(_identity(meta)), sort_keys=True, separators=(",", ":"))
    return {"identity": np.str_(text), "identity_sha256": np.str_(hashlib.sha256(text.encode()).hexdigest())}


def _same_value(old: Any, new: Any) -> bool:
    if isinstance(old, float) or isinstance(new, float):
        try:
            return old is not None and new is not None and float(old) == float(new)
        except (TypeError, ValueError):
            return False
    return old == new


def _identity_disagreement(data: dict[str, np.ndarray], path: Path, meta: dict[str, Any]) -> str | None:
    """The first identity field on which the counts in ``path`` and ``meta`` disagree, as
    ``"<field>: ... has <value>, the counts were sampled with <value>"`` (None if they agree).

    Files written before identities were stored carry none and are not checked; an identity that does not
    match its digest is a damaged file.
    """
    if "identity" not in data:
        return None
    try:
        text = str(data["identity"])
        stored_digest = str(data["identity_sha256"])
        if hashlib.sha256(text.encode()).hexdigest() != stored_digest:
            raise ValueError("its identity does not match its digest")
        stored = json.loads(text)
        if not isinstance(stored, dict):
            raise ValueError("its identity is not a JSON object")
    except (KeyError, ValueError) as exc:
        raise _damaged(path, _reason(exc)) from None
    current = _identity(meta)
    for name in IDENTITY_FIELDS:
        if name not in stored and name not in current:
            continue
        old, new = stored.get(name, "(absent)"), current.get(name, "(absent)")
        if not _same_value(old, new):
            return f"{name}: {{source}} {new!r}, the counts were sampled with {old!r}"
    return None


def _check_identity(data: dict[str, np.ndarray], path: Path, meta: dict[str, Any], meta_path: Path) -> None:
    """Refuse counts whose stored identity disagrees with ``metadata.json``, naming the first field that does."""
    disagreement = _identity_disagreement(data, path, meta)
    if disagreement is not None:
        raise _EditedMetadata(
            f"run: {meta_path} disagrees with the counts in {path} on "
            + disagreement.format(source="metadata.json has")
            + "; restore metadata.json (a certificate must use the settings the counts were sampled with)"
        )


def _check_metadata(meta: dict[str, Any], path: Path) -> None:
    """The fields a report computes with have the right types and ranges (else DamagedFileError naming them)."""
    try:
        check_int(meta.get("n"), "n", 1, MAX_N)
        check_int(meta.get("max_k_prime"), "max_k_prime", 1)
        num_inputs = check_int(meta.get("num_inputs"), "num_inputs", 1)
        chunk_size = check_int(meta.get("chunk_size"), "chunk_size", 1)
        if meta.get("num_chunks") != _num_chunks(num_inputs, chunk_size):
            raise invalid("num_chunks", f"{_num_chunks(num_inputs, chunk_size)} (num_inputs / chunk_size)",
                          meta.get("num_chunks"))
        if "num_classes" in meta:
            check_int(meta["num_classes"], "num_classes", 1)
        sigma = meta.get("sigma")
        if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not (math.isfinite(sigma) and sigma > 0):
            raise invalid("sigma", "a number > 0", sigma)
    except ValueError as exc:
        raise _damaged(path, _reason(exc), "restore it, or certify the run again") from None


def _check_counts(
    data: dict[str, np.ndarray],
    path: Path,
    meta: dict[str, Any],
    meta_path: Path,
    indices: np.ndarray | None = None,
    num_classes: int | None = None,
) -> None:
    """A chunk or ``counts.npz`` holds what the run's metadata promise (else DamagedFileError naming it):
    ``indices`` (m,) equal to ``indices`` where given, ``labels`` (m, c) boolean, ``counts`` (m, K, c) integers
    in [0, n] with K = max_k_prime and c = the run's number of classes, and the run's identity."""
    _check_identity(data, path, meta, meta_path)  # first: an edited n must not pass for damaged counts
    for key in ("indices", "labels", "counts"):
        if key not in data:
            raise _damaged(path, f"it has no {key!r} array")
    stored, labels, counts = data["indices"], data["labels"], data["counts"]
    if stored.ndim != 1 or stored.dtype.kind not in "iu":
        raise _damaged(path, f"indices must be a 1-D integer array, got shape {stored.shape} of {stored.dtype}")
    if indices is not None and not np.array_equal(stored, indices):
        raise _damaged(path, "it holds other inputs than the run assigns to it")
    m = stored.shape[0]
    c = num_classes if num_classes is not None else meta.get("num_classes")
    c = int(c) if c is not None else (counts.shape[2] if counts.ndim == 3 else -1)
    expected = (m, int(meta["max_k_prime"]), c)
    if counts.shape != expected or counts.dtype.kind not in "iu":
        raise _damaged(path, f"counts must be integers of shape {expected}, got {counts.shape} of {counts.dtype}")
    zero_one = labels.dtype.kind == "b" or (labels.dtype.kind in "iu" and ((labels == 0) | (labels == 1)).all())
    if labels.shape != (m, c) or not zero_one:
        raise _damaged(path, f"labels must be a 0/1 mask of shape {(m, c)}, got {labels.shape} of {labels.dtype}")
    n = int(meta["n"])
    if counts.size and (counts.min() < 0 or counts.max() > n):
        raise _damaged(path, f"counts must lie in [0, n] = [0, {n}], found {int(counts.min())}..{int(counts.max())}")
    sizes = meta.get("sample_sizes")
    if "nested_counts" in data:
        nested = data["nested_counts"]
        shape = (m, len(sizes or ()), *expected[1:])
        if nested.shape != shape or nested.dtype.kind not in "iu" or not np.array_equal(nested[:, -1], counts):
            raise _damaged(path, f"nested_counts must be integers of shape {shape} ending with the counts")
        if nested.size and (nested.min() < 0 or (nested > np.asarray(sizes)[None, :, None, None]).any()):
            raise _damaged(path, "nested_counts must lie in [0, n] at each of the sample sizes")
    if "samples" in data:
        used = data["samples"]
        if used.shape != (m,) or not np.isin(used, sizes or ()).all() or (counts > used[:, None, None]).any():
            raise _damaged(path, f"samples must be ({m},) looks of {sizes}, each at least the input's counts")


def _remove_stale_temporaries(run_dir: Path, older_than: float = STALE_TMP_SECONDS) -> list[Path]:
    """Remove the temporary files in RUN_DIR and its chunks folder older than ``older_than`` seconds.

    A younger one may be another process's file in flight (a shard or rank writing its chunk); the atomic
    writer removes its own temporary file on any error, so only a killed process leaves one behind.
    """
    removed = []
    now = time.time()
    for folder in (run_dir, run_dir / CHUNKS):
        for path in folder.glob(f".*{TMP_SUFFIX}"):
            try:
                if now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
    return removed


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


def _identity_mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    for name in IDENTITY_FIELDS:
        if name not in wanted:
            continue
        old, new = existing.get(name, IDENTITY_DEFAULTS.get(name)), wanted[name]
        if not _same_value(old, new):
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


def _stored_identity(run_dir: Path) -> tuple[Path, dict[str, np.ndarray]] | None:
    """The first readable chunk (or counts.npz) of a run that carries an identity, with its arrays."""
    for path in [run_dir / COUNTS, *sorted((run_dir / CHUNKS).glob("chunk-*.npz"))]:
        try:
            data = _read_npz(path)
        except _DamagedRunFile:
            continue
        if "identity" in data:
            return path, data
    return None


def _prepare_run_dir(
    run_dir: Path, metadata: dict[str, Any], indices: np.ndarray, *, resume: bool, joining: bool
) -> tuple[dict[str, Any], list[str]]:
    """Create RUN_DIR with its metadata and inputs, or check an existing one against ``metadata``.

    Returns the run's metadata and what was repaired: a damaged ``metadata.json`` is rewritten from the
    arguments on resume when they agree with the identity stored with the counts, a damaged ``inputs.npz``
    from the arguments (the inputs follow from them).
    """
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
        return metadata, []
    repairs: list[str] = []
    if not resume and not joining:
        raise ValueError(f"out: {run_dir} already holds a run; pass --resume to continue it, or choose a new --out")
    try:
        existing = _read_metadata(meta_path)
    except _DamagedRunFile as exc:
        stored = _stored_identity(run_dir)
        disagreement = None if stored is None else _identity_disagreement(stored[1], stored[0], metadata)
        if disagreement is not None:  # the arguments must give the identity the counts were sampled with
            raise RunMismatchError(f"resume: {run_dir} was made with different settings ("
                                   + disagreement.format(source="the arguments give")
                                   + f" in {stored[0]}; its {METADATA} is damaged)") from exc
        atomic_write_json(meta_path, metadata)
        agree = " (they agree with the settings stored with the counts)" if stored else ""
        repairs.append(f"{meta_path} was damaged ({exc.reason}): rewritten from the arguments{agree}")
        existing = metadata
    mismatch = _identity_mismatch(existing, metadata)
    if mismatch is not None:
        raise RunMismatchError(f"resume: {run_dir} was made with different settings ({mismatch})")
    inputs_path = run_dir / INPUTS
    if not inputs_path.exists():  # killed between metadata and inputs: the indices follow from the metadata
        atomic_write_npz(inputs_path, indices=indices)
    else:
        try:
            stored_indices = _read_npz(inputs_path).get("indices")
        except _DamagedRunFile as exc:
            atomic_write_npz(inputs_path, indices=indices)
            repairs.append(f"{inputs_path} was damaged ({exc.reason}): rewritten from the arguments")
        else:
            if stored_indices is None or not np.array_equal(stored_indices, indices):
                raise RunMismatchError(f"resume: {run_dir} certifies other inputs than the arguments select")
    return existing, repairs


def _chunk_problem(path: Path, meta: dict[str, Any], indices: np.ndarray, num_classes: int | None) -> str | None:
    """Why the chunk at ``path`` cannot be used as it is (missing, damaged, other inputs), or None if it can.

    A chunk sampled with other settings than ``metadata.json`` states is not a damaged chunk but an edited
    metadata.json (or a chunk copied from another run): that raises, so that no sampling is thrown away.
    """
    if not path.exists():
        return "missing"
    try:
        _check_counts(_read_npz(path), path, meta, path.parent.parent / METADATA, indices, num_classes)
    except _DamagedRunFile as exc:
        return exc.reason
    return None


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
    stop_rule: dict[str, Any] | None = None,
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
        stop_rule: ``{"radius": R, "k": k, "k_prime": k', "alpha": alpha, "futility": one of
            :data:`multiguard.certify.FUTILITY_RULES`}`` makes the run sequential: n is then the most samples an
            input gets, and each stops when its certified intersection size at R (with that k, k' and alpha) is
            settled. The sampler's own ``k_prime`` must be the rule's. ``None``: fixed n, with nested counts at
            :func:`multiguard.certify.sample_size_schedule` ``(n)``.

    Returns:
        A :class:`RunResult`. When the last chunk of the run lands (in whichever process), ``counts.npz`` is
        written and ``metadata.json`` gains ``complete``, the total sampling ``wall_time_s`` and devices.
    """
    run_dir = Path(run_dir)
    context = context or SingleProcess()
    n = check_int(n, "n", 1, MAX_N)  # before any file is made
    max_k_prime = int(max_k_prime)
    chunk_size = int(chunk_size)
    if max_k_prime < 1:
        raise ValueError(f"max_k_prime must be >= 1, got {max_k_prime}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    shard_index, num_shards = shard
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise ValueError(f"shard must be (I, N) with 0 <= I < N, got {shard}")
    from .certify import FUTILITY_RULES, sample_size_schedule  # SciPy loads here, not at import

    if stop_rule is not None:
        stop_rule = _check_stop_rule(stop_rule, max_k_prime, getattr(sampler, "k_prime", None), FUTILITY_RULES)
    sizes = sample_size_schedule(n)
    indices = select_inputs(len(dataset), num_inputs, seed)
    total = len(indices)
    num_chunks = _num_chunks(total, chunk_size)
    num_classes = getattr(dataset, "num_classes", None)
    if num_classes is None and getattr(dataset, "class_names", None) is not None:
        num_classes = len(dataset.class_names)

    wanted: dict[str, Any] = dict(metadata or {})
    sampler_sigma = getattr(sampler, "sigma", None)  # MultiGuard's: the noise the counts are sampled with
    if isinstance(sampler_sigma, (int, float)) and not isinstance(sampler_sigma, bool):
        if "sigma" not in wanted:
            wanted["sigma"] = float(sampler_sigma)
        elif not _same_value(wanted["sigma"], float(sampler_sigma)):
            raise ValueError(f"metadata: sigma {wanted['sigma']!r} is not the sampler's sigma {sampler_sigma!r} "
                             "(the run must record the noise its counts are sampled with)")
    wanted.update(
        format_version=FORMAT_VERSION,
        n=n,
        seed=int(seed),
        max_k_prime=max_k_prime,
        num_inputs=total,
        chunk_size=chunk_size,
        num_chunks=num_chunks,
        sample_sizes=sizes.tolist(),
        stop_rule=stop_rule,
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
    repairs: list[str] = []
    if context.rank == 0:
        try:
            run_meta, repairs = _prepare_run_dir(run_dir, wanted, indices, resume=resume, joining=joining)
        except ValueError as exc:
            error = (isinstance(exc, RunMismatchError), str(exc))
    errors = context.all_gather(error)
    if errors[0] is not None:
        mismatch, message = errors[0]
        raise (RunMismatchError if mismatch else ValueError)(message)
    if context.rank != 0:
        run_meta, _ = _prepare_run_dir(run_dir, wanted, indices, resume=True, joining=True)
    _remove_stale_temporaries(run_dir)  # only files older than any write: a younger one may be in flight
    identity = _identity_arrays(run_meta)

    num_workers = num_shards * context.world_size
    worker = shard_index * context.world_size + context.rank
    mine = [chunk for chunk in range(num_chunks) if chunk % num_workers == worker]
    my_total = sum(len(indices[c * chunk_size : (c + 1) * chunk_size]) for c in mine)

    start_time = time.perf_counter()
    pending = []
    skipped_inputs = chunks_skipped = 0
    for chunk in mine:  # every chunk found is read back whole and checked; a damaged one is redone
        chunk_indices = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        path = _chunk_path(run_dir, chunk)
        problem = _chunk_problem(path, run_meta, chunk_indices, num_classes)
        if problem is None:
            chunks_skipped += 1
            skipped_inputs += len(chunk_indices)
        else:
            pending.append(chunk)
            if problem != "missing":
                repairs.append(f"{path} is damaged ({problem}): sampling it again")
    done_inputs, new_inputs, chunks_done, new_samples = skipped_inputs, 0, 0, 0
    if on_progress is not None:  # where this worker starts (after a resume: what is already on disk)
        on_progress(RunProgress(done_inputs, my_total, 0, 0.0, 0.0, skipped_inputs, tuple(repairs)))
    for chunk in pending:
        chunk_indices = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        path = _chunk_path(run_dir, chunk)
        chunk_start = time.perf_counter()
        images, labels = load_batch(dataset, chunk_indices)
        common = dict(seed=int(seed), index=chunk_indices, batch_size=int(batch_size), max_k_prime=max_k_prime)
        extra: dict[str, np.ndarray] = {}
        if stop_rule is None:
            nested = np.asarray(sampler.sample_nested_counts(images, sizes, **common), dtype=np.int64)
            expected = (len(chunk_indices), sizes.size, max_k_prime, labels.shape[1])
            if nested.shape != expected:
                raise ValueError(f"sampler returned nested counts of shape {nested.shape}, expected {expected}")
            counts, extra["nested_counts"] = nested[:, -1], nested
            new_samples += len(chunk_indices) * n
        else:
            counts, samples = sampler.sample_sequential_counts(
                images, labels, n, stop_at_radius=stop_rule["radius"], alpha=stop_rule["alpha"], k=stop_rule["k"],
                futility=stop_rule["futility"], **common,
            )
            counts = np.asarray(counts, dtype=np.int64)
            extra["samples"] = np.asarray(samples, dtype=np.int64)
            new_samples += int(extra["samples"].sum())
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
            **identity,
            **extra,
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
                    samples_per_second=new_samples / max(elapsed, 1e-9),
                    skipped_inputs=skipped_inputs,
                )
            )

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
    return RunResult(
        run_dir=run_dir,
        complete=bool(statuses[0][0]),
        chunks_done=chunks_done,
        chunks_skipped=chunks_skipped,
        seconds=time.perf_counter() - start_time,
        metadata=final_meta,
        repairs=repairs,
    )


def certify_run(run_dir: str | os.PathLike[str], *, progress: Callable[[RunProgress], None] | None = None,
                **kwargs: Any) -> RunResult:
    """The former name of :func:`sample_run` (it samples counts; the certificate comes later, from them)."""
    return sample_run(run_dir, on_progress=progress, **kwargs)


def _finalize(run_dir: Path, repairs: list[str]) -> tuple[bool, dict[str, Any]]:
    """Merge the chunks into ``counts.npz`` if all exist; returns (complete, metadata).

    A ``counts.npz`` that exists but does not read back whole is merged again (and said so in ``repairs``).
    """
    meta = _read_metadata(run_dir / METADATA)
    counts_path = run_dir / COUNTS
    if counts_path.exists() and meta.get("complete"):
        try:
            _read_counts(run_dir, meta)
            return True, meta
        except _DamagedRunFile as exc:
            repairs.append(f"{counts_path} is damaged ({exc.reason}): merging the chunks into it again")
    merged = _merge_chunks(run_dir, meta)
    if merged is None:
        return False, meta
    indices, labels, counts, seconds, devices, extra = merged
    atomic_write_npz(counts_path, indices=indices, labels=labels, counts=counts, **_identity_arrays(meta),
                     **extra)
    meta.update(
        complete=True,
        completed_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        wall_time_s=round(float(seconds), 3),
        devices=sorted(set(devices)),
    )
    atomic_write_json(run_dir / METADATA, meta)
    return True, meta


def _read_inputs(run_dir: Path, meta: dict[str, Any]) -> np.ndarray:
    """The run's ``(num_inputs,)`` dataset indices from ``inputs.npz`` (DamagedFileError naming it if damaged)."""
    path = run_dir / INPUTS
    indices = _read_npz(path).get("indices")
    if indices is None or indices.ndim != 1 or indices.dtype.kind not in "iu":
        raise _damaged(path, "it has no 1-D integer 'indices' array")
    if indices.shape[0] != int(meta["num_inputs"]):
        raise _damaged(path, f"it holds {indices.shape[0]} inputs, metadata.json says {meta['num_inputs']}")
    return indices


def _merge_chunks(
    run_dir: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, list[str], dict[str, np.ndarray]] | None:
    """The chunks of a run joined in run order, or None if one is missing; DamagedFileError naming the first
    chunk that exists but does not read back whole or disagrees with the run."""
    chunk_size = int(meta["chunk_size"])
    indices = _read_inputs(run_dir, meta)
    paths = [_chunk_path(run_dir, chunk) for chunk in range(int(meta["num_chunks"]))]
    if not paths or not all(path.exists() for path in paths):
        return None
    parts: list[dict[str, np.ndarray]] = []
    num_classes = meta.get("num_classes")
    for chunk, path in enumerate(paths):
        data = _read_npz(path)
        want = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        _check_counts(data, path, meta, run_dir / METADATA, want, num_classes)
        num_classes = data["counts"].shape[2]  # every chunk of the run has the first one's labels
        parts.append(data)
    labels = np.concatenate([p["labels"] for p in parts]).astype(bool)
    counts = np.concatenate([p["counts"] for p in parts]).astype(np.int64)
    seconds = float(sum(float(p.get("seconds", 0.0)) for p in parts))
    devices = [str(p.get("device", "unknown")) for p in parts]
    return indices, labels, counts, seconds, devices, _merge_extras(parts)


_EXTRAS = ("nested_counts", "samples")


def _merge_extras(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The optional per-input arrays that every part has (a run resumed across versions may lack them)."""
    return {
        name: np.concatenate([p[name] for p in parts]).astype(np.int64)
        for name in _EXTRAS
        if parts and all(name in p for p in parts)
    }


def _check_stop_rule(
    rule: dict[str, Any], max_k_prime: int, sampler_k_prime: int | None, futility_rules: Sequence[str]
) -> dict[str, Any]:
    """A sequential run's rule as a plain dict ``{radius, k, k_prime, alpha, futility}``, checked (``futility``
    defaults to ``"remaining"``)."""
    missing = {"radius", "k", "k_prime", "alpha"} - set(rule)
    if missing:
        raise ValueError(f"stop_rule must give radius, k, k_prime and alpha, missing {', '.join(sorted(missing))}")
    checked = {
        "radius": check_float(rule["radius"], "stop_at_radius", 0.0),
        "k": check_int(rule["k"], "k", 1),
        "k_prime": check_int(rule["k_prime"], "k_prime", 1, max_k_prime, high_label="max_k_prime"),
        "alpha": check_alpha(rule["alpha"]),
        "futility": check_choice(rule.get("futility", "remaining"), "futility", futility_rules),
    }
    if sampler_k_prime is not None and int(sampler_k_prime) != checked["k_prime"]:
        raise ValueError(f"k_prime must be the sampler's k_prime ({sampler_k_prime}) for a sequential run, "
                         f"got {checked['k_prime']}")
    return checked


def _read_counts(
    run_dir: Path, meta: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``counts.npz`` read back and checked against the run: ``(indices, labels, counts, extras)``, the extras
    being its nested counts or samples used where it has them."""
    path = run_dir / COUNTS
    data = _read_npz(path)
    indices = _read_inputs(run_dir, meta) if (run_dir / INPUTS).exists() else None
    _check_counts(data, path, meta, run_dir / METADATA, indices)
    if data["indices"].shape[0] != int(meta["num_inputs"]):
        raise _damaged(path, f"it holds {data['indices'].shape[0]} inputs, metadata.json says {meta['num_inputs']}")
    return (data["indices"], data["labels"].astype(bool), data["counts"].astype(np.int64),
            _merge_extras([data]))


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
    nested_counts: np.ndarray | None = None  # (N, S, K, c) at sample_sizes (fixed-n runs of this version)
    samples: np.ndarray | None = None  # (N,) samples each input used (sequential runs)

    @property
    def sample_sizes(self) -> np.ndarray | None:
        """The nested sample sizes (the looks of a sequential run), or ``None`` for a run without them."""
        sizes = self.metadata.get("sample_sizes")
        return None if sizes is None else np.asarray(sizes, dtype=np.int64)

    @property
    def stop_rule(self) -> dict[str, Any] | None:
        """``{radius, k, k_prime, alpha, futility}`` of a sequential run, ``None`` for a fixed-n run."""
        return self.metadata.get("stop_rule")

    def at_sample_size(self, n: int) -> Run:
        """This run as if it had been certified with ``n`` samples per input (one of :attr:`sample_sizes`):
        the counts of the first n samples, the very counts a run with that n draws (same seed and inputs)."""
        n = int(n)
        sizes = self.sample_sizes
        if self.nested_counts is None or sizes is None:
            reason = "it is sequential" if self.stop_rule else "it has no nested counts (certified before they existed)"
            raise ValueError(f"n: run {self.path} cannot be read at another n: {reason}")
        if n not in sizes:
            raise ValueError(f"n must be one of the stored sample sizes {sizes.tolist()} of run {self.path}, got {n}")
        j = int(np.flatnonzero(sizes == n)[0])
        metadata = {**self.metadata, "n": n, "sample_sizes": sizes[: j + 1].tolist()}
        return Run(self.path, metadata, self.indices, self.labels, self.nested_counts[:, j],
                   nested_counts=self.nested_counts[:, : j + 1])

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

    Every file is read back whole and checked against ``metadata.json``: shapes, indices, counts in [0, n],
    and the identity (sigma, n, dataset, ...) stored with the counts, so that a certificate is never computed
    with settings other than those the counts were sampled with. A file that fails raises
    :class:`multiguard.validation.DamagedFileError` naming it and what to do.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"run: {path} does not exist or is not a folder")
    meta_path = path / METADATA
    if not meta_path.is_file():
        raise ValueError(f"run: {path} is not a MultiGuard run (no {METADATA}; make one with multiguard certify)")
    meta = _read_metadata(meta_path)
    if "max_k_prime" not in meta and "format_version" not in meta:
        raise ValueError(f"run: {path} is not a MultiGuard run ({meta_path} is not ours; make one with "
                         "multiguard certify)")
    _check_metadata(meta, meta_path)
    if (path / COUNTS).exists():
        indices, labels, counts, extra = _read_counts(path, meta)
        return Run(path, meta, indices, labels, counts, **extra)
    merged = _merge_chunks(path, meta)
    if merged is not None:
        indices, labels, counts, _, _, extra = merged
        return Run(path, meta, indices, labels, counts, **extra)
    chunk_files = sorted((path / CHUNKS).glob("chunk-*.npz"))
    if not allow_partial or not chunk_files:
        raise ValueError(
            f"run: {path} is unfinished ({len(chunk_files)} of {meta['num_chunks']} chunks); "
            "finish it with multiguard certify --resume"
        )
    indices = _read_inputs(path, meta)
    chunk_size = int(meta["chunk_size"])
    parts = []
    for chunk_file in chunk_files:
        try:
            chunk = int(chunk_file.stem.split("-")[1])
        except (IndexError, ValueError):
            raise _damaged(chunk_file, "not a chunk name of ours") from None
        data = _read_npz(chunk_file)
        want = indices[chunk * chunk_size : (chunk + 1) * chunk_size]
        _check_counts(data, chunk_file, meta, meta_path, want, parts[0]["counts"].shape[2] if parts else None)
        parts.append(data)
    return Run(
        path,
        meta,
        np.concatenate([p["indices"] for p in parts]),
        np.concatenate([p["labels"] for p in parts]).astype(bool),
        np.concatenate([p["counts"] for p in parts]).astype(np.int64),
        **_merge_extras(parts),
    )


def run_status(path: str | os.PathLike[str]) -> dict[str, Any]:
    """How far a RUN_DIR is: ``{"chunks_done", "num_chunks", "complete"}`` (for printing)."""
    path = Path(path)
    meta = json.loads((path / METADATA).read_text())
    done = len(list((path / CHUNKS).glob("chunk-*.npz")))
    return {"chunks_done": done, "num_chunks": int(meta["num_chunks"]), "complete": (path / COUNTS).exists()}


def sampling_mode(metadata: dict[str, Any]) -> str:
    """The base classifier's sampling mode a run's metadata records, e.g. ``"bf16 + channels_last"``
    (``"fp32"`` for a run written before modes were recorded)."""
    return describe_mode(metadata)


def describe_run(run: Run, fields: Sequence[str] = ("dataset", "split", "arch", "sigma", "n", "seed")) -> str:
    """One line naming a run and its main settings."""
    parts = [f"{name}={run.metadata.get(name)}" for name in fields if name in run.metadata]
    parts.append(f"mode={sampling_mode(run.metadata)}")
    return f"{run.name} ({run.counts.shape[0]} inputs, k' <= {run.max_k_prime}; " + ", ".join(parts) + ")"
