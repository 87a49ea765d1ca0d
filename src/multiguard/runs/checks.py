"""Reading a RUN_DIR's files back and checking them: damaged or edited files are refused in one line that
names the file and how to repair it; identities compare a run's metadata with the command that resumes it."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from multiguard.certificates.stop_rule import StopRule
from multiguard.common.validation import MAX_N, DamagedFileError, check_int, invalid
from multiguard.runs.spec import IDENTITY_FIELDS, identity_of


def _num_chunks(num_inputs: int, chunk_size: int) -> int:
    return -(-num_inputs // chunk_size)


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



# What to do about a damaged file of a run: sampling it again repairs the run.
_REPAIR = "run the same multiguard certify command with --resume to redo it"


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
    """The identity fields (:data:`multiguard.runs.spec.IDENTITY_FIELDS`) a run's metadata holds."""
    return identity_of(meta)


def _identity_arrays(meta: dict[str, Any]) -> dict[str, np.ndarray]:
    """What every chunk and ``counts.npz`` store of the run that sampled them: the identity fields as JSON
    text and its SHA-256, so that a hand-edited ``metadata.json`` (or counts of another run) is detected."""
    text = json.dumps(_jsonable(_identity(meta)), sort_keys=True, separators=(",", ":"))
    return {"identity": np.str_(text), "identity_sha256": np.str_(hashlib.sha256(text.encode()).hexdigest())}


def _comparable(name: str, value: Any) -> Any:
    """An identity value as comparisons read it: a stop rule with the fields it lacks at their legacy values
    (a run written before the schedule, spending and margin existed ran with 1-2-5 looks and equal shares)."""
    if name == "stop_rule" and isinstance(value, dict):
        try:
            return StopRule.coerce(value).to_dict()
        except ValueError:
            return value
    return value


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
        if not _same_value(_comparable(name, old), _comparable(name, new)):
            def shown(value: Any) -> str:  # braces of a dict value survive the caller's .format(source=...)
                return repr(value).replace("{", "{{").replace("}", "}}")

            return f"{name}: {{source}} {shown(new)}, the counts were sampled with {shown(old)}"
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


# What repairs a damaged metadata.json: a resume rewrites it from the arguments when they agree with the identity
# stored with the counts (README, "When things go wrong").
_REWRITE_METADATA = ("rewrite it with multiguard certify --resume and the run's arguments (checked against the "
                     "settings stored with the counts)")


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
        raise _damaged(path, _reason(exc), _REWRITE_METADATA) from None


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
    _check_on_counts(data, path, meta, m, c)


def _check_on_counts(data: dict[str, np.ndarray], path: Path, meta: dict[str, Any], m: int, c: int) -> None:
    """A run with thresholds stores per-label on-counts ``(m, c)`` in [0, samples used] (and, fixed n, nested
    ones ``(m, S, c)`` ending with them); a run without has none."""
    if not meta.get("thresholds"):
        if "on_counts" in data:
            raise _damaged(path, "it has on-counts but the run has no thresholds")
        return
    if "on_counts" not in data:
        raise _damaged(path, "it has no 'on_counts' array (the run has thresholds)")
    on = data["on_counts"]
    limit = data["samples"][:, None] if "samples" in data else int(meta["n"])
    if on.shape != (m, c) or on.dtype.kind not in "iu" or (on.size and (on.min() < 0 or (on > limit).any())):
        raise _damaged(path, f"on_counts must be integers of shape {(m, c)} in [0, samples used], got {on.shape} "
                             f"of {on.dtype}")
    if "nested_counts" in data:
        nested = data.get("nested_on_counts")
        sizes = np.asarray(meta.get("sample_sizes") or ())
        shape = (m, sizes.size, c)
        if nested is None or nested.shape != shape or nested.dtype.kind not in "iu" or \
                not np.array_equal(nested[:, -1], on) or (nested < 0).any() or \
                (nested > sizes[None, :, None]).any():
            raise _damaged(path, f"nested_on_counts must be integers of shape {shape} ending with the on_counts")
