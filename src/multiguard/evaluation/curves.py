"""Certified curves from stored runs: a ``Curve`` per (run, k, k', alpha, method), the radius grid, and the
``curves.csv`` file they are written to and read back from. Torch-free."""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import sequential
from multiguard.certificates.methods import METHODS as _METHODS
from multiguard.certificates.methods import default_methods
from multiguard.common.files import atomic_write_bytes
from multiguard.common.validation import check_alpha, check_choice, check_float
from multiguard.runs.folder import Run

__all__ = ["CSV_COLUMNS", "METHODS", "Curve", "compute_curves", "parse_radius_grid", "read_csv", "sigma_radius_grid",
           "write_csv"]


CSV_COLUMNS: tuple[str, ...] = (
    "run",
    "method",
    "k",
    "k_prime",
    "alpha",
    "sigma",
    "n",
    "radius",
    "precision",
    "recall",
    "f1",
    "num_inputs",
)


# the built-in methods; the registry (multiguard.certificates.methods) is read at use
METHODS: tuple[str, ...] = tuple(_METHODS)


METRICS: tuple[str, ...] = ("precision", "recall", "f1")


MAX_RADII = 10**5  # points of a radius grid: curves for every run x setting x method stay a few hundred MB at most


ATTACK_LABEL = "empirical (attack)"


TRIVIAL_LABEL = "trivial: by counting alone"


RADIUS_GRID_STEPS_PER_SIGMA = 20  # the default grid: 0 to 4 sigma in steps of sigma / 20


def _label(method: str) -> str:
    """The name of a method (or of the attack's empirical curves) in plots and tables."""
    return ATTACK_LABEL if method == "attack" else (_METHODS[method].label if method in _METHODS else method)


@dataclass
class Curve:
    """Certified metrics of one method and setting on one run, as functions of the radius R."""

    run: str
    method: str
    k: int
    k_prime: int
    alpha: float
    sigma: float
    n: int
    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_inputs: int
    num_empty: int = 0
    extra: dict[str, str] = field(default_factory=dict)
    trivial: dict[str, float] = field(default_factory=dict)  # metric -> its part that holds by counting alone
    violations: np.ndarray | None = None  # attack curves: inputs below their certificate, per radius
    certified: dict[str, np.ndarray] | None = None  # attack curves: certified metrics of the same inputs
    q: float | None = None  # per-label (thresholded) curves: the cut q; their k and k_prime are 0 (not used)

    def metric(self, name: str) -> np.ndarray:
        """The ``precision``, ``recall`` or ``f1`` array."""
        if name not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {name!r}")
        return getattr(self, name)

    def at(self, name: str, radius: float) -> float:
        """The metric at a radius of the curve's grid (ValueError if the grid lacks it)."""
        hits = np.flatnonzero(np.isclose(self.radius, float(radius), rtol=0.0, atol=1e-9))
        if hits.size == 0:
            raise ValueError(f"radius {radius} is not on the curve's grid")
        return float(self.metric(name)[hits[0]])

    @property
    def setting(self) -> tuple[str, str, int, int, float]:
        """(run, method, k, k_prime, alpha): what tells two curves of a report apart (and q for per-label
        curves, appended)."""
        base = (self.run, self.method, self.k, self.k_prime, self.alpha)
        return base if self.q is None else (*base, self.q)  # type: ignore[return-value]


def sigma_radius_grid(sigmas: Iterable[float]) -> np.ndarray:
    """The default radius grid for runs with these noise levels: 0 to 4 sigma in steps of sigma / 20 (sigma
    the largest), since no radius beyond about 2.4 sigma is certified with n = 1000 and alpha = 0.001."""
    sigma = max(float(s) for s in sigmas)
    step = sigma / RADIUS_GRID_STEPS_PER_SIGMA
    return np.unique(np.round(step * np.arange(4 * RADIUS_GRID_STEPS_PER_SIGMA + 1), 12))


def parse_radius_grid(text: str | float | Iterable[float], name: str = "radii") -> np.ndarray:
    """Radii from ``"start:stop:step"`` (stop included), ``"0,0.25,0.5"``, a single number, or numbers: the one
    parser of radius lists (report grids, summary radii, attack radii), sorted, without repeats.

    Values are rounded to 12 decimals so that a grid such as ``0:3:0.05`` hits 0.25, 0.5 and 1.0 exactly.
    Raises ValueError naming ``name`` (the argument: ``radii``, ``--summary-radii``, ...) for anything else: an
    empty list or entry (``"0.5,,1"``), negative or non-finite radii.
    """
    points = 0.0  # of a START:STOP:STEP grid, counted before any array is made
    if isinstance(text, (int, float, np.number)) and not isinstance(text, bool):
        text = [float(text)]
    if isinstance(text, str):
        spec = text.strip()
        try:
            if ":" in spec:
                parts = [float(p) for p in spec.split(":")]
                if len(parts) != 3:
                    raise ValueError
                start, stop, step = parts
                if step <= 0 or stop < start or not all(math.isfinite(v) for v in parts):
                    raise ValueError
                points = (stop - start) / step + 1  # inf for a step too small to count
                if math.isfinite(points) and points <= MAX_RADII + 1:
                    values = np.round(start + step * np.arange(int(math.floor(points - 1 + 1e-9)) + 1), 12)
            elif spec:
                items = re.split(r"\s*,\s*|\s+", spec)
                if "" in items:
                    raise ValueError(f"{name} must be numbers separated by commas, got {text!r} (an empty entry)")
                values = np.array([float(p) for p in items], dtype=np.float64)
            else:
                raise ValueError(f"{name} must be at least one radius, got {text!r}")
        except ValueError as exc:
            if str(exc).startswith(f"{name} must"):
                raise
            raise ValueError(
                f"{name} must be START:STOP:STEP (e.g. 0:3:0.05) or comma-separated numbers, got {text!r}"
            ) from None
    else:
        try:
            values = np.round(np.asarray(list(text), dtype=np.float64), 12)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be numbers, got {text!r}") from None
    if not math.isfinite(points) or points > MAX_RADII + 1 or values.size > MAX_RADII:
        raise ValueError(f"{name} must be a grid of at most {MAX_RADII} points (use a larger STEP), got {text!r}")
    if values.size == 0:
        raise ValueError(f"{name} must be at least one radius, got {text!r}")
    if not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(f"{name} must be finite and >= 0, got {text!r}")
    return np.unique(values)


def _run_names(runs: Sequence[Run], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(runs):
            raise ValueError(f"names must give one name per run ({len(runs)}), got {len(names)}")
        return [str(n) for n in names]
    plain = [run.name for run in runs]
    if len(set(plain)) == len(plain):
        return plain
    return [str(run.path) for run in runs]


def compute_curves(
    runs: Sequence[Run],
    *,
    k: Sequence[int] = (3,),
    k_prime: Sequence[int] = (1,),
    alpha: Sequence[float] = (0.001,),
    radius: Sequence[float] | np.ndarray = (0.0,),
    methods: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    q: Sequence[float] = (0.5,),
) -> list[Curve]:
    """Certified curves for every run x k' x alpha x k x method (``jia`` only where k' = 1), and for every
    per-label method (``threshold``) every run x alpha x q, from the run's on-counts.

    Bounds are computed once per (run, k', alpha) and radii once per (k, method); the metrics at all radii
    follow from the radii. Raises ValueError naming the argument for a k beyond a run's number of classes, a
    k' beyond a run's ``max_k_prime``, an unknown method or an alpha outside (0, 1), a q outside (0, 1), and a
    per-label method asked for by name on a run without on-counts. ``methods=None`` means every registered
    method the runs support (per-label methods only for runs certified with thresholds).
    """
    radius = np.asarray(radius, dtype=np.float64)
    explicit = methods is not None
    methods = default_methods() if methods is None else methods  # every method reports compute by default
    for method in methods:
        check_choice(method, "methods", tuple(_METHODS))
    q = [check_float(value, "q", 0.0, 1.0, low_open=True, high_open=True) for value in q]
    per_label = [m for m in methods if _METHODS[m].per_label is not None]
    methods = [m for m in methods if _METHODS[m].sizes is not None]
    if explicit:
        for run in runs:
            if per_label and run.on_counts is None:
                raise ValueError(f"methods: {per_label[0]} needs per-label on-counts, and run {run.path} has none "
                                 "(certify it with --threshold or --threshold-rule)")
    if not len(k) or not len(k_prime) or not len(alpha):
        raise ValueError("k, k_prime and alpha need at least one value each")
    alpha = [check_alpha(a) for a in alpha]
    run_names = _run_names(runs, names)
    for run in runs:
        _check_k_and_k_prime(run, k, k_prime)
    curves: list[Curve] = []
    for run, name in zip(runs, run_names, strict=True):
        curves += _top_k_curves(run, name, methods, k, k_prime, alpha, radius)
        curves += _per_label_curves(run, name, per_label, alpha, q, radius)
    return curves


def _check_k_and_k_prime(run: Run, k: Sequence[int], k_prime: Sequence[int]) -> None:
    """Every k within the run's classes and every k' within its ``max_k_prime``, else a ValueError naming it."""
    for value in k:
        if not 1 <= int(value) <= run.num_classes:
            raise ValueError(f"k must be between 1 and the number of classes ({run.num_classes}) of run "
                             f"{run.path}, got {value}")
    for value in k_prime:
        if not 1 <= int(value) <= run.max_k_prime:
            raise ValueError(f"k_prime must be between 1 and {run.max_k_prime} for run {run.path} (certified "
                             f"with --max-k-prime {run.max_k_prime}), got {value}")


def _top_k_curves(run: Run, name: str, methods: Sequence[str], k: Sequence[int], k_prime: Sequence[int],
                  alpha: Sequence[float], radius: np.ndarray) -> list[Curve]:
    """The curves of the top-k methods on one run, per k' x alpha x k x method; bounds computed once per
    (k', alpha, way of counting the bounds a method reads)."""
    labels = run.labels
    trivial: dict[int, dict[str, float]] = {}
    for kk in k:
        part = _metrics.certified_metrics(_metrics.trivial_intersection_size(labels, int(kk))[:, None], labels,
                                         int(kk))
        trivial[int(kk)] = {m: float(np.asarray(getattr(part, m))[0]) for m in METRICS}
    curves = []
    for kp in k_prime:
        for a in alpha:
            bounds: dict = {}  # per way of counting the bounds a method reads (None: c)
            for kk in k:
                for method in methods:
                    if _METHODS[method].k_prime_one_only and int(kp) != 1:
                        continue
                    read = _METHODS[method].bounds_read
                    if read not in bounds:
                        bounds[read] = run_bounds(run, int(kp), float(a), None if read is None else read(labels))
                    lower, upper = bounds[read]
                    sizes = _METHODS[method].sizes(lower, upper, labels, int(kk), int(kp), run.sigma, radius)
                    metrics = _metrics.certified_metrics(sizes, labels, int(kk))
                    curves.append(Curve(
                        run=name, method=method, k=int(kk), k_prime=int(kp), alpha=float(a), sigma=run.sigma,
                        n=run.n, radius=radius.copy(), precision=np.asarray(metrics.precision, dtype=np.float64),
                        recall=np.asarray(metrics.recall, dtype=np.float64),
                        f1=np.asarray(metrics.f1, dtype=np.float64), num_inputs=metrics.num_inputs,
                        num_empty=metrics.num_empty, trivial=dict(trivial[int(kk)])))
    return curves


def _per_label_curves(run: Run, name: str, methods: Sequence[str], alpha: Sequence[float], q: Sequence[float],
                      radius: np.ndarray) -> list[Curve]:
    """The curves of the per-label methods on one run (none for a run without on-counts): per alpha and q,
    from the on-counts of each input's samples (for a sequential run, anytime-valid bounds at the run's looks
    with alpha spent as its stopping rule spent it)."""
    if run.on_counts is None or not methods:
        return []
    samples = run.samples if run.samples is not None else np.full(run.on_counts.shape[0], run.n, dtype=np.int64)
    looks = run.sample_sizes if run.samples is not None else None
    # A sequential run's anytime bounds spend alpha over its looks as its stopping rule did (equal shares for a
    # run written before spending could be chosen), as run_bounds does for the top-k methods.
    spending = (run.stop_rule or {}).get("spending") if looks is not None else None
    bounds = (run.stop_rule or {}).get("bounds", "union") if looks is not None else "union"
    curves = []
    for method in methods:
        for a in alpha:
            for cut in q:
                metrics = _METHODS[method].per_label(run.on_counts, samples, looks, run.labels, run.sigma, float(a),
                                                     float(cut), radius, spending=spending,
                                                     bounds=bounds)
                curves.append(Curve(
                    run=name, method=method, k=0, k_prime=0, alpha=float(a), sigma=run.sigma, n=run.n,
                    radius=radius.copy(), precision=np.asarray(metrics.precision, dtype=np.float64),
                    recall=np.asarray(metrics.recall, dtype=np.float64), f1=np.asarray(metrics.f1, dtype=np.float64),
                    num_inputs=int(metrics.num_inputs), num_empty=int(metrics.num_empty), q=float(cut),
                ))
    return curves


def run_bounds(run: Run, k_prime: int, alpha: float, bounds_read: np.ndarray | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """A run's label probability bounds ``(N, c)`` for ``k_prime`` at ``alpha``: Clopper-Pearson at the run's n,
    or for a sequential run the anytime-valid bounds at each input's stop, at the run's looks
    (``sample_sizes``) with alpha spent as its rule says (valid whatever k, k', alpha and radius the report
    asks for, since they hold at every look; a run written before spending could be chosen spent equal
    shares). ``bounds_read``: ``(N,)`` one-sided bounds the certificate reads (default c; see
    :func:`multiguard.certificates.bounds.label_probability_bounds`)."""
    counts = run.counts_for(k_prime)
    if run.samples is None:
        return _bounds.label_probability_bounds(counts, run.n, alpha, bounds_read)
    spending = (run.stop_rule or {}).get("spending")
    # a run written before --bounds existed read the union bounds
    return sequential.anytime_label_probability_bounds(counts, run.samples, alpha, run.sample_sizes, spending,
                                                       bounds_read, bounds=(run.stop_rule or {}).get("bounds", "union"))


def _fmt(value: float) -> str:
    return f"{float(value):.10g}"


def write_csv(curves: Sequence[Curve], path: str | os.PathLike[str]) -> None:
    """Write ``curves`` to ``path`` (atomically), one row per curve and radius, columns :data:`CSV_COLUMNS`
    (and a last column ``q`` where per-label curves are among them: their cut, empty for the others; their k
    and k' are 0)."""
    with_q = any(c.q is not None for c in curves)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS + (("q",) if with_q else ()))
    for c in curves:
        for i, r in enumerate(c.radius):
            writer.writerow(
                [c.run, c.method, c.k, c.k_prime, _fmt(c.alpha), _fmt(c.sigma), c.n, _fmt(r),
                 _fmt(c.precision[i]), _fmt(c.recall[i]), _fmt(c.f1[i]), c.num_inputs]
                + ([] if not with_q else ["" if c.q is None else _fmt(c.q)])
            )
    atomic_write_bytes(path, buffer.getvalue().encode())


def read_csv(path: str | os.PathLike[str]) -> list[Curve]:
    """Read a ``curves.csv`` back into :class:`Curve` objects (rows grouped by run, method, k, k', alpha, n and
    q: an impact-of-n report's curves differ in n alone)."""
    groups: dict[tuple[str, str, int, int, float, int, str], list[dict[str, str]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) not in (CSV_COLUMNS, CSV_COLUMNS + ("q",)):
            raise ValueError(f"{path} does not have the columns {','.join(CSV_COLUMNS)}")
        for row in reader:
            key = (row["run"], row["method"], int(row["k"]), int(row["k_prime"]), float(row["alpha"]), int(row["n"]),
                   row.get("q") or "")
            groups.setdefault(key, []).append(row)
    curves = []
    for (run, method, k, k_prime, alpha, n, cut), rows in groups.items():
        curves.append(
            Curve(
                run=run, method=method, k=k, k_prime=k_prime, alpha=alpha,
                sigma=float(rows[0]["sigma"]), n=n,
                radius=np.array([float(r["radius"]) for r in rows]),
                precision=np.array([float(r["precision"]) for r in rows]),
                recall=np.array([float(r["recall"]) for r in rows]),
                f1=np.array([float(r["f1"]) for r in rows]),
                num_inputs=int(rows[0]["num_inputs"]),
                q=float(cut) if cut else None,
            )
        )
    return curves
