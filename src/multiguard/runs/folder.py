"""The run folder (RUN_DIR): its layout, reading it back whole, and the checks that keep a certificate on the
settings its counts were sampled with. No torch. The sampling driver that writes it is :mod:`multiguard.runs.job`.

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
                               (N, S, K, c) or samples (N,) as the chunks have them; a run with thresholds
                               (metadata ``thresholds``) also on_counts (N, c): how many of the samples had
                               label j's score above its threshold, and (fixed n) nested_on_counts (N, S, c)

``identity`` is the JSON text of the run's identity fields (:data:`multiguard.runs.spec.IDENTITY_FIELDS`: sigma,
n, seed, dataset, checkpoint, ...) as they were when the counts were sampled, and ``identity_sha256`` its
digest: a ``metadata.json`` edited by hand (a larger sigma would inflate every radius) or mixed up with another
run's is refused, naming the field.

Nested counts (fixed-n runs): ``nested_counts[i, s]`` are the counts of the first ``sample_sizes[s]`` samples
(metadata ``sample_sizes``: :func:`multiguard.certificates.sequential.sample_size_schedule` ``(n)``, e.g. 100, 200, 500,
1000), the same samples a run with that n would draw: :meth:`Run.at_sample_size` reads a run at a smaller n.

Sequential runs (metadata ``stop_rule``: radius, k, k_prime, alpha, futility): each input was sampled look by look at
``sample_sizes`` and stopped by :func:`multiguard.certificates.sequential.sequential_stopping_rule`; ``counts`` are
its counts
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
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from multiguard.common.files import TMP_SUFFIX, atomic_write_json, atomic_write_npz, create_exclusive_json
from multiguard.common.noise_kinds import describe_noise
from multiguard.common.validation import RunMismatchError
from multiguard.runs.checks import (
    _check_counts,
    _check_metadata,
    _comparable,
    _damaged,
    _DamagedRunFile,
    _identity_arrays,
    _identity_disagreement,
    _read_metadata,
    _read_npz,
    _same_value,
)
from multiguard.runs.spec import IDENTITY_DEFAULTS, IDENTITY_FIELDS
from multiguard.sampling.modes import describe_mode

__all__ = ["CHUNKS", "COUNTS", "INPUTS", "METADATA", "STALE_TMP_SECONDS", "Run", "describe_run", "is_run", "load_run",
           "recorded_settings",
           "run_status", "sampling_mode"]


METADATA = "metadata.json"


INPUTS = "inputs.npz"


CHUNKS = "chunks"


COUNTS = "counts.npz"


# A temporary file (``.<name>.<random>.tmp``) older than this is left over from a killed writer and may be
# removed; a younger one may belong to another process writing right now (a shard, a rank) and is left alone.
STALE_TMP_SECONDS = 24 * 3600.0


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


def _chunk_path(run_dir: Path, chunk: int) -> Path:
    return run_dir / CHUNKS / f"chunk-{chunk:06d}.npz"






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


def _identity_mismatch(existing: dict[str, Any], wanted: dict[str, Any]) -> str | None:
    """Every identity field on which the run and the arguments disagree, in one phrase (``None`` if none).

    A file's SHA-256 (``checkpoint_sha256``, ``model_file_sha256``, ``denoiser_sha256``) names the file."""
    found = []
    for name in IDENTITY_FIELDS:
        if name not in wanted:
            continue
        old, new = existing.get(name, IDENTITY_DEFAULTS.get(name)), wanted[name]
        if not _same_value(_comparable(name, old), _comparable(name, new)):
            path = wanted.get(name.removesuffix("_sha256")) if name.endswith("_sha256") else None
            about = f" ({path} changed since the run was made)" if old is not None and new is not None and path else ""
            if name == "stop_rule" and isinstance(old, dict) and isinstance(new, dict):  # only the fields that differ
                found.append(_settings_difference(old, new, f"{name}'s ")[2:])
                continue
            found.append(f"{name}: the run has {old!r}, the arguments give {new!r}{about}" + _settings_difference(
                existing.get(f"{name.removesuffix('_sha256')}_settings"),
                wanted.get(f"{name.removesuffix('_sha256')}_settings")))
    return "; ".join(found) or None


def _settings_difference(old: Any, new: Any, prefix: str = "") -> str:
    """``' (timestep: the run has 258, the arguments give 144)'``: the recorded settings behind a digest that
    differs (a denoiser's), when both sides have them; else nothing."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return ""
    keys = [key for key in dict.fromkeys([*old, *new]) if not _same_value(old.get(key), new.get(key))]
    return "".join(f"; {prefix}{key}: the run has {old.get(key)!r}, the arguments give {new.get(key)!r}"
                   for key in keys)


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
        _check_metadata(existing, meta_path)  # a field missing or out of range: damaged, repaired like the rest
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
        hint = ("; the dataset's pixels changed since the run was made (multiguard.data.DatasetInfo.version): "
                "its counts still report, but new samples go into a new --out"
                if "dataset_version:" in mismatch else "")
        raise RunMismatchError(f"resume: {run_dir} was made with different settings ({mismatch}){hint}")
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


_EXTRAS = ("nested_counts", "samples", "on_counts", "nested_on_counts")


def _merge_extras(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The optional per-input arrays that every part has (a run resumed across versions may lack them)."""
    return {
        name: np.concatenate([p[name] for p in parts]).astype(np.int64)
        for name in _EXTRAS
        if parts and all(name in p for p in parts)
    }


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
    on_counts: np.ndarray | None = None  # (N, c) per-label on-counts (runs with thresholds)
    nested_on_counts: np.ndarray | None = None  # (N, S, c) at sample_sizes (fixed-n runs with thresholds)

    @property
    def thresholds(self) -> Any:
        """The per-label thresholds of the run's base classifier
        (:class:`multiguard.certificates.thresholds.LabelThresholds`), or ``None`` for a run without them."""
        from multiguard.certificates.thresholds import LabelThresholds

        return LabelThresholds.from_identity(self.metadata.get("thresholds"),
                                             str(self.metadata.get("thresholds_source") or ""))

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
        nested_on = None if self.nested_on_counts is None else self.nested_on_counts[:, : j + 1]
        return Run(self.path, metadata, self.indices, self.labels, self.nested_counts[:, j],
                   nested_counts=self.nested_counts[:, : j + 1],
                   on_counts=None if nested_on is None else nested_on[:, -1], nested_on_counts=nested_on)

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


def recorded_settings(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The settings a RUN_DIR recorded (its ``metadata.json``), read leniently for a resume that takes a run's
    own settings: ``None`` when there is none or it cannot be read (opening the run then names the damage)."""
    try:
        meta = json.loads((Path(path) / METADATA).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


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
    :class:`multiguard.common.validation.DamagedFileError` naming it and what to do.
    """
    path = Path(path)
    if path.is_file():
        hint = " (a report's results.json is compared with --compare)" if path.suffix == ".json" else ""
        raise FileNotFoundError(f"run: {path} is a file, not a RUN_DIR (the folder multiguard certify --out "
                                f"writes){hint}")
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


def run_noise(metadata: dict[str, Any]) -> str:
    """The noise a run's metadata records, in words: ``"sound, rounded Gaussian on the 1/255 grid"`` (float
    noise for a run written before the noise was recorded)."""
    return describe_noise(str(metadata.get("noise", "float")), bool(metadata.get("shared_noise", False)))


def describe_run(run: Run, fields: Sequence[str] = ("dataset", "split", "arch", "sigma", "n", "seed")) -> str:
    """One line naming a run and its main settings."""
    parts = [f"{name}={run.metadata.get(name)}" for name in fields if name in run.metadata]
    parts.append(f"mode={sampling_mode(run.metadata)}")
    parts.append(f"noise={run.metadata.get('noise', 'float')}")
    return f"{run.name} ({run.counts.shape[0]} inputs, k' <= {run.max_k_prime}; " + ", ".join(parts) + ")"
