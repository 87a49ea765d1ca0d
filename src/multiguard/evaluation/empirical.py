"""ATTACK_DIR: the empirical curves an attack writes, and reading them back (no torch, no model).

Layout (written by :func:`multiguard.evaluation.attack_run.run_attack`, each file atomically)::

    ATTACK_DIR/
      empirical.csv    radius,precision,recall,f1,num_inputs: one row per attacked radius (fractions in [0, 1])
      empirical_thresholded.csv
                       with thresholds only (``multiguard attack --threshold``): per radius the empirical
                       precision, recall and F1 of the thresholded set under attack, the certified ones of the
                       same inputs, and the inputs whose attacked set broke their certificate
                       (:data:`THRESHOLDED_COLUMNS`)
      per_input.npz    indices, labels, radii, sizes, delta_norms (and certified, when certified sizes were computed)
      attack.json      the attack's settings, its ``identity`` (what decides its numbers: the checkpoint's and
                       model file's SHA-256, dataset, split, the inputs, k, k', sigma, n, seed, radii, ...) and,
                       per radius, the inputs whose empirical size fell below the certified one (``violations``)
      parts/           while it runs: identity.json and one file per finished block of inputs at a radius (and
                       the certified counts), so that ``--resume`` continues a killed attack; removed at the end

``empirical.csv`` is written last: its presence means the folder is complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from multiguard.common.files import atomic_write_bytes, atomic_write_json, atomic_write_npz

__all__ = ["ATTACK_RUN_FIELDS", "EMPIRICAL_COLUMNS", "EMPIRICAL_CSV", "PARTS", "PER_INPUT", "SETTINGS",
           "THRESHOLDED_COLUMNS", "THRESHOLDED_CSV", "AttackParts", "EmpiricalCurves", "attack_run_mismatch",
           "identity_mismatch", "load_empirical", "load_thresholded", "write_attack_dir", "write_thresholded_csv"]

EMPIRICAL_COLUMNS: tuple[str, ...] = ("radius", "precision", "recall", "f1", "num_inputs")
"""The columns of ``ATTACK_DIR/empirical.csv``, in order (metrics as fractions in [0, 1])."""

EMPIRICAL_CSV = "empirical.csv"
THRESHOLDED_CSV = "empirical_thresholded.csv"
THRESHOLDED_COLUMNS: tuple[str, ...] = ("radius", "precision", "recall", "f1", "certified_precision",
                                        "certified_recall", "certified_f1", "violations", "num_inputs")
"""The columns of ``ATTACK_DIR/empirical_thresholded.csv``: the empirical (attacked) and certified precision,
recall and F1 of the thresholded set (means over inputs, fractions in [0, 1]; the certified ones ``nan``
without a certificate), and ``violations``: inputs with a label the certificate says is on (off) at this
radius measured off (on) under attack (``-1`` without a certificate)."""
PER_INPUT = "per_input.npz"
SETTINGS = "attack.json"
PARTS = "parts"
# What an attack must share with a run to be drawn over its certificate (a field either lacks is not compared).
ATTACK_RUN_FIELDS = ("checkpoint_sha256", "model_file_sha256", "denoiser_sha256", "dataset", "split",
                     "dataset_options", "dataset_version", "sigma")


@dataclass(frozen=True, eq=False)
class EmpiricalCurves:
    """The contents of ``ATTACK_DIR``: empirical precision / recall / F1 under attack, one value per radius.

    ``radius``, ``precision``, ``recall``, ``f1`` are float ``(R,)`` arrays (fractions in [0, 1]);
    ``num_inputs`` the number of inputs averaged; ``settings`` the dict of ``attack.json`` (k, k_prime, sigma,
    n, alpha, steps, samples, seed, checkpoint, dataset, ... and, when certified sizes were computed, the
    per-radius count of inputs whose empirical size fell below their certified size).
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_inputs: int
    settings: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> np.ndarray:
        """The ``precision``, ``recall`` or ``f1`` array."""
        if name not in ("precision", "recall", "f1"):
            raise ValueError(f"name must be precision, recall or f1, got {name!r}")
        return getattr(self, name)


def write_attack_dir(out: str | os.PathLike[str], curves: EmpiricalCurves, arrays: dict[str, np.ndarray],
                     settings: dict[str, Any]) -> None:
    """Write an ATTACK_DIR: ``per_input.npz`` (``arrays``), ``attack.json`` (``settings``), then
    ``empirical.csv`` (``curves``) last, each atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(EMPIRICAL_COLUMNS)
    for j, radius in enumerate(curves.radius):
        writer.writerow([repr(float(radius)), repr(float(curves.precision[j])), repr(float(curves.recall[j])),
                         repr(float(curves.f1[j])), curves.num_inputs])
    atomic_write_npz(out / PER_INPUT, **arrays)
    atomic_write_json(out / SETTINGS, settings)
    atomic_write_bytes(out / EMPIRICAL_CSV, text.getvalue().encode())  # last: its presence means a complete dir


def write_thresholded_csv(out: str | os.PathLike[str], table: dict[str, np.ndarray], num_inputs: int) -> None:
    """Write ``out/empirical_thresholded.csv`` atomically: ``table`` maps each of :data:`THRESHOLDED_COLUMNS`
    but ``num_inputs`` to an ``(R,)`` array."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(THRESHOLDED_COLUMNS)
    for j in range(len(table["radius"])):
        row = [repr(float(table[name][j])) for name in THRESHOLDED_COLUMNS[:-2]]
        writer.writerow([*row, int(table["violations"][j]), int(num_inputs)])
    atomic_write_bytes(Path(out) / THRESHOLDED_CSV, text.getvalue().encode())


def load_thresholded(attack_dir: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Read ``ATTACK_DIR/empirical_thresholded.csv``: each of :data:`THRESHOLDED_COLUMNS` as a float ``(R,)``
    array. A ValueError names the file if it is missing or has other columns."""
    path = Path(attack_dir) / THRESHOLDED_CSV
    if not path.is_file():
        raise ValueError(f"attack_dir: no {THRESHOLDED_CSV} in {attack_dir} (run `multiguard attack --threshold`)")
    with path.open(newline="") as handle:
        rows = [row for row in csv.reader(handle) if row]
    if not rows or tuple(rows[0]) != THRESHOLDED_COLUMNS:
        raise ValueError(f"attack_dir: {path} has columns {rows[0] if rows else None}, expected "
                         f"{','.join(THRESHOLDED_COLUMNS)}")
    try:
        table = np.array([[float(v) for v in row] for row in rows[1:]], dtype=np.float64)
    except ValueError:
        raise ValueError(f"attack_dir: {path} holds a value that is not a number") from None
    table = table.reshape(-1, len(THRESHOLDED_COLUMNS))
    return {name: table[:, i] for i, name in enumerate(THRESHOLDED_COLUMNS)}


def load_empirical(attack_dir: str | os.PathLike[str]) -> EmpiricalCurves:
    """Read ``ATTACK_DIR/empirical.csv`` (and ``attack.json`` when present) written by :func:`run_attack`.

    Raises ValueError naming the file if it is missing or its columns are not :data:`EMPIRICAL_COLUMNS`.
    """
    folder = Path(attack_dir)
    path = folder / EMPIRICAL_CSV
    if not path.is_file():
        raise ValueError(f"attack_dir: no {EMPIRICAL_CSV} in {folder} (run `multiguard attack --out {folder}`)")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if row]
    if header is None or tuple(header) != EMPIRICAL_COLUMNS:
        raise ValueError(f"attack_dir: {path} has columns {header}, expected {','.join(EMPIRICAL_COLUMNS)}")
    try:
        table = np.array([[float(value) for value in row] for row in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise ValueError(f"attack_dir: {path} holds a value that is not a number") from None
    settings: dict[str, Any] = {}
    if (folder / SETTINGS).is_file():
        settings = json.loads((folder / SETTINGS).read_text())
    num_inputs = int(table[0, 4]) if len(table) else 0
    return EmpiricalCurves(radius=table[:, 0], precision=table[:, 1], recall=table[:, 2], f1=table[:, 3],
                           num_inputs=num_inputs, settings=settings)


def _shown(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"{len(value)} values starting {value[:3]}"
    return repr(value)


def identity_mismatch(stored: dict[str, Any], wanted: dict[str, Any], *, what: str = "the attack") -> str | None:
    """Every field on which two identities disagree, in one phrase (``None`` if they agree)."""
    found = [f"{name}: {what} has {_shown(stored.get(name))}, the arguments give {_shown(wanted.get(name))}"
             for name in dict.fromkeys([*stored, *wanted]) if stored.get(name) != wanted.get(name)]
    return "; ".join(found) or None


def attack_run_mismatch(settings: dict[str, Any], run_meta: dict[str, Any]) -> str | None:
    """How an attack (its ``attack.json`` settings) and a run differ on :data:`ATTACK_RUN_FIELDS`, in one phrase
    naming each field with both values; ``None`` if they agree (on the fields both record)."""
    found = []
    for name in ATTACK_RUN_FIELDS:
        if name not in settings or name not in run_meta:
            continue
        ours, theirs = settings[name], run_meta[name]
        same = (float(ours) == float(theirs)) if name == "sigma" and None not in (ours, theirs) else ours == theirs
        if not same:
            found.append(f"{name}: the attack has {ours!r}, the run {theirs!r}")
    return "; ".join(found) or None


def _digest(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AttackParts:
    """The finished pieces of an attack in ``ATTACK_DIR/parts``, each stamped with the attack's identity.

    ``resume``: continue the parts a killed attack left, refused (one line listing every differing field) if
    they belong to another attack; otherwise any old parts are removed first. :meth:`save` writes a part
    atomically, :meth:`load` reads one back (``None`` if missing, damaged or of another identity: done again),
    :meth:`remove` deletes the folder once the attack's files are written.
    """

    def __init__(self, out: str | os.PathLike[str], identity: dict[str, Any], *, resume: bool) -> None:
        self.dir = Path(out) / PARTS
        self.identity = identity
        self.digest = _digest(identity)
        stamp = self.dir / "identity.json"
        if resume and stamp.is_file():
            try:
                stored = json.loads(stamp.read_text())
            except (OSError, ValueError):
                stored = None
            if isinstance(stored, dict) and _digest(stored) != self.digest:
                mismatch = identity_mismatch(stored, identity)
                raise ValueError(f"resume: {out} holds an unfinished attack with other settings ({mismatch}); "
                                 "give its settings, or replace it with --overwrite")
        elif self.dir.exists():
            shutil.rmtree(self.dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        if not stamp.is_file():
            atomic_write_json(stamp, identity)

    def save(self, name: str, **arrays: np.ndarray) -> None:
        atomic_write_npz(self.dir / f"{name}.npz", identity_sha256=np.str_(self.digest), **arrays)

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.dir / f"{name}.npz") as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError, EOFError, KeyError):
            return None
        return arrays if str(arrays.pop("identity_sha256", "")) == self.digest else None

    def names(self, prefix: str) -> list[str]:
        return sorted(p.stem for p in self.dir.glob(f"{prefix}*.npz"))

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
