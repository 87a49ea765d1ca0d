"""ATTACK_DIR: the empirical curves an attack writes, and reading them back (no torch, no model).

Layout (written by :func:`multiguard.attack_run.run_attack`, each file atomically)::

    ATTACK_DIR/
      empirical.csv    radius,precision,recall,f1,num_inputs: one row per attacked radius (fractions in [0, 1])
      per_input.npz    indices, labels, radii, sizes, delta_norms (and certified, when certified sizes were computed)
      attack.json      the attack's settings and, per radius, the inputs whose empirical size fell below the
                       certified one (``violations``)

``empirical.csv`` is written last: its presence means the folder is complete.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import atomic_write_bytes, atomic_write_json, atomic_write_npz

__all__ = ["EMPIRICAL_COLUMNS", "EMPIRICAL_CSV", "PER_INPUT", "SETTINGS", "EmpiricalCurves", "load_empirical",
           "write_attack_dir"]

EMPIRICAL_COLUMNS: tuple[str, ...] = ("radius", "precision", "recall", "f1", "num_inputs")
"""The columns of ``ATTACK_DIR/empirical.csv``, in order (metrics as fractions in [0, 1])."""

EMPIRICAL_CSV = "empirical.csv"
PER_INPUT = "per_input.npz"
SETTINGS = "attack.json"


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
