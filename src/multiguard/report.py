"""Certified precision / recall / F1 curves, tables and plots from saved runs (no model, no GPU).

A report reads the counts of one or more RUN_DIRs (:mod:`multiguard.runs`) and, for every combination of
``k``, ``k'`` and ``alpha`` asked for, computes the label probability bounds once, the per-e certified radii
once, and from them the certified intersection size at every radius of the grid. Methods:

- ``multiguard``: Theorem 1 of the paper (Eq. 8) with both terms on each side;
- ``multiguard-first-terms``: the ablation of section 4.2 without the u- and v-terms;
- ``jia``: Jia et al. (ICLR 2020) extended to multi-label, label by label (only where ``k' = 1``).

Outputs, in REPORT_DIR: ``curves.csv`` (columns :data:`CSV_COLUMNS`, metrics as fractions in [0, 1]),
``precision.png``, ``recall.png``, ``f1.png`` (one panel per run, in the style of the paper's Figure 1)
``summary.md`` (tables at a few radii, in percent) and ``results.json`` (the certified curves as data with the runs'
identities and sampling cost, :mod:`multiguard.results`, docs/results.md).

Curves of other origins (e.g. empirical robustness under an attack) are :class:`Curve` objects too and can be
passed to :func:`make_report` as ``extra_curves`` to be written and drawn alongside.

The default radius grid runs from 0 to 4 sigma (:func:`sigma_radius_grid`). Where k is close to the number of
classes c, part of every certificate holds by counting alone (any k labels keep at least ``|L| - (c - k)`` of
L, :func:`multiguard.certify.trivial_intersection_size`): ``summary.md`` gives that part in rows of its own and
the plots draw it as a grey dotted line. ``summary.md`` ends with what every method name and column means.
"""

from __future__ import annotations

import csv
import io
import math
import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import certify, sequential
from .deprecation import deprecated_names, warn_deprecated
from .empirical import PER_INPUT, attack_run_mismatch, load_empirical
from .files import atomic_write_bytes, remove_abandoned_staging, staging_folder
from .methods import METHODS as _METHODS
from .methods import default_methods
from .results import RESULTS_FILE, results_bytes, results_document, validate_results
from .runs import Run, load_run, sampling_mode
from .validation import check_alpha, check_choice, check_float

__all__ = [
    "CSV_COLUMNS",
    "METHODS",
    "SUMMARY_RADII",
    "Curve",
    "Report",
    "compute_curves",
    "make_report",
    "parse_radius_grid",
    "plot_figure",
    "plot_metric",
    "read_csv",
    "sigma_radius_grid",
    "summary_markdown",
    "write_csv",
]

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
METHODS: tuple[str, ...] = tuple(_METHODS)  # the built-in methods; the registry (multiguard.methods) is read at use
METRICS: tuple[str, ...] = ("precision", "recall", "f1")
SUMMARY_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
MAX_RADII = 10**5  # points of a radius grid: curves for every run x setting x method stay a few hundred MB at most
REPORT_FILES: tuple[str, ...] = ("curves.csv", "precision.png", "recall.png", "f1.png", "summary.md", "results.json")

ATTACK_LABEL = "empirical (attack)"
TRIVIAL_LABEL = "trivial: by counting alone"
RADIUS_GRID_STEPS_PER_SIGMA = 20  # the default grid: 0 to 4 sigma in steps of sigma / 20
# What summary.md and `report --help` say about each column and name.
COLUMN_HELP: dict[str, str] = {
    "R": "the l2 norm of the perturbation (pixels in [0, 1]); every column R = r holds for all perturbations "
         "of norm < r",
    "precision": "certified top-k precision@R: e / k, e the number of true labels certified to stay among the "
                 "k predicted under every perturbation of norm < R (mean over inputs)",
    "recall": "certified top-k recall@R: e / |L|, L the input's true labels",
    "f1": "certified top-k F1@R: 2e / (|L| + k)",
    "k": "labels the smoothed classifier predicts; k': labels the base classifier votes for in each noisy copy",
    "α": "probability that the bounds fail (per input); σ: the noise; n: noisy copies per input",
    "q": "per-label rows (thresholded): a label is predicted when its score passes its threshold in more than "
         "a share q of the noise; their precision, recall and F1 are those of the worst predicted set between "
         "the labels certified on and those not certified off at R (an empty prediction has precision 0 on an "
         "input with labels), where top-k rows count e of k predicted labels; k and k' do not apply (-)",
    "trivial": f"'{TRIVIAL_LABEL}': what any k of the c labels keep of L whatever the model "
               "(e <= |L| - (c - k)); it is part of every method's value at every R",
    "attack": "'empirical (attack)': |L ∩ top-k| measured at the inputs an l2 PGD attack found (an upper bound "
              "on the true robustness where a certificate is a lower bound)",
}
METRIC_LABELS = {
    "precision": "Certified top-k precision@R",
    "recall": "Certified top-k recall@R",
    "f1": "Certified top-k f1-score@R",
}


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


# ------------------------------------------------------------------------------------------- radii


def sigma_radius_grid(sigmas: Iterable[float]) -> np.ndarray:
    """The default radius grid for runs with these noise levels: 0 to 4 sigma in steps of sigma / 20 (sigma
    the largest), since no radius beyond about 2.4 sigma is certified with n = 1000 and alpha = 0.001."""
    sigma = max(float(s) for s in sigmas)
    step = sigma / RADIUS_GRID_STEPS_PER_SIGMA
    return np.unique(np.round(step * np.arange(4 * RADIUS_GRID_STEPS_PER_SIGMA + 1), 12))


def parse_radius_grid(text: str | float | Iterable[float]) -> np.ndarray:
    """Radii from ``"start:stop:step"`` (stop included), ``"0,0.25,0.5"``, a single number, or numbers: the one
    parser of radius lists (report grids, summary radii, attack radii), sorted, without repeats.

    Values are rounded to 12 decimals so that a grid such as ``0:3:0.05`` hits 0.25, 0.5 and 1.0 exactly.
    Raises ValueError naming ``radii`` for anything else, negative or non-finite radii.
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
            else:
                values = np.array([float(p) for p in spec.replace(" ", ",").split(",") if p], dtype=np.float64)
        except ValueError:
            raise ValueError(
                f"radii must be START:STOP:STEP (e.g. 0:3:0.05) or comma-separated numbers, got {text!r}"
            ) from None
    else:
        try:
            values = np.round(np.asarray(list(text), dtype=np.float64), 12)
        except (TypeError, ValueError):
            raise ValueError(f"radii must be numbers, got {text!r}") from None
    if not math.isfinite(points) or points > MAX_RADII + 1 or values.size > MAX_RADII:
        raise ValueError(f"radii must be a grid of at most {MAX_RADII} points (use a larger STEP), got {text!r}")
    if values.size == 0 or not np.all(np.isfinite(values)) or (values < 0).any():
        raise ValueError(f"radii must be finite and >= 0, got {text!r}")
    return np.unique(values)


# ------------------------------------------------------------------------------------------ curves


# Retired names: they warn (DeprecationWarning naming the new name) and still work for a release.
__getattr__ = deprecated_names(__name__, {
    "parse_radii": ("multiguard.report.parse_radius_grid", lambda: parse_radius_grid),
    "DEFAULT_RADIUS_GRID": ("multiguard.report.sigma_radius_grid (the default grid now follows sigma)",
                            lambda: "0:3:0.05"),
    "DEFAULT_RADII": ("multiguard.report.sigma_radius_grid (the default grid now follows sigma)", lambda: "0:3:0.05"),
})


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
        for value in k:
            if not 1 <= int(value) <= run.num_classes:
                raise ValueError(f"k must be between 1 and the number of classes ({run.num_classes}) of run "
                                 f"{run.path}, got {value}")
        for value in k_prime:
            if not 1 <= int(value) <= run.max_k_prime:
                raise ValueError(f"k_prime must be between 1 and {run.max_k_prime} for run {run.path} (certified "
                                 f"with --max-k-prime {run.max_k_prime}), got {value}")
    curves: list[Curve] = []
    for run, name in zip(runs, run_names, strict=True):
        labels = run.labels
        trivial: dict[int, dict[str, float]] = {}
        for kk in k:
            part = certify.certified_metrics(certify.trivial_intersection_size(labels, int(kk))[:, None], labels,
                                             int(kk))
            trivial[int(kk)] = {m: float(np.asarray(getattr(part, m))[0]) for m in METRICS}
        for kp in k_prime:
            for a in alpha:
                bounds: dict = {}  # per way of counting the bounds a method reads (None: c)
                for kk in k:
                    for method in methods:
                        if _METHODS[method].k_prime_one_only and int(kp) != 1:
                            continue
                        read = _METHODS[method].bounds_read
                        if read not in bounds:
                            bounds[read] = run_bounds(run, int(kp), float(a),
                                                      None if read is None else read(labels))
                        lower, upper = bounds[read]
                        sizes = _METHODS[method].sizes(lower, upper, labels, int(kk), int(kp), run.sigma, radius)
                        metrics = certify.certified_metrics(sizes, labels, int(kk))
                        curves.append(
                            Curve(
                                run=name,
                                method=method,
                                k=int(kk),
                                k_prime=int(kp),
                                alpha=float(a),
                                sigma=run.sigma,
                                n=run.n,
                                radius=radius.copy(),
                                precision=np.asarray(metrics.precision, dtype=np.float64),
                                recall=np.asarray(metrics.recall, dtype=np.float64),
                                f1=np.asarray(metrics.f1, dtype=np.float64),
                                num_inputs=metrics.num_inputs,
                                num_empty=metrics.num_empty,
                                trivial=dict(trivial[int(kk)]),
                            )
                        )
        curves += _per_label_curves(run, name, per_label, alpha, q, radius)
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
    curves = []
    for method in methods:
        for a in alpha:
            for cut in q:
                metrics = _METHODS[method].per_label(run.on_counts, samples, looks, run.labels, run.sigma, float(a),
                                                     float(cut), radius, spending=spending)
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
    :func:`multiguard.certify.label_probability_bounds`)."""
    counts = run.counts_for(k_prime)
    if run.samples is None:
        return certify.label_probability_bounds(counts, run.n, alpha, bounds_read)
    spending = (run.stop_rule or {}).get("spending")
    return sequential.anytime_label_probability_bounds(counts, run.samples, alpha, run.sample_sizes, spending,
                                                       bounds_read)


def _futility_text(rule: dict) -> str:
    futility = rule.get("futility", "remaining")
    return f"margin (gamma = {rule.get('margin', 0.2):g})" if futility == "margin" else futility


def _spending_text(spending: float | None) -> str:
    if spending is None:
        return "alpha spent in equal shares over the looks"
    return f"{spending:g} of alpha spent at the last look"


def _run_line(name: str, run: Run) -> str:
    """One line describing a run for ``summary.md``; a sequential run's rule and samples used."""
    line = (f"- run `{name}`: {run.path}, {run.counts.shape[0]} inputs, σ = {run.sigma:g}, n = {run.n}, "
            f"dataset {run.metadata.get('dataset')} ({run.metadata.get('split')}), "
            f"arch {_shown_arch(run.metadata.get('arch'))}, mode {sampling_mode(run.metadata)}"
            + _denoiser_note(run.metadata))
    if run.thresholds is not None:
        line += f", thresholds {run.thresholds.describe()}"
    rule = run.stop_rule
    if rule and run.samples is not None:
        used = run.samples
        shares = ", ".join(f"{(used == size).mean():.0%} at {size}" for size in run.sample_sizes)
        line += (f"; sequential: sampling stopped per input once its certified size at R = {rule['radius']:g} "
                 f"(k = {rule['k']}, k' = {rule['k_prime']}, α = {rule['alpha']:g}, futility rule "
                 f"{_futility_text(rule)}, looks {rule.get('schedule', '1-2-5')}, "
                 f"{_spending_text(rule.get('spending'))}) was settled; samples used: "
                 f"mean {used.mean():.0f}, median {np.median(used):.0f}, at most {run.n} ({shares}); the "
                 "bounds are anytime-valid, so the curves hold at every radius")
    return line


# --------------------------------------------------------------------------------------------- CSV


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
    """Read a ``curves.csv`` back into :class:`Curve` objects (rows grouped by run, method, k, k', alpha)."""
    groups: dict[tuple[str, str, int, int, float, str], list[dict[str, str]]] = {}
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) not in (CSV_COLUMNS, CSV_COLUMNS + ("q",)):
            raise ValueError(f"{path} does not have the columns {','.join(CSV_COLUMNS)}")
        for row in reader:
            key = (row["run"], row["method"], int(row["k"]), int(row["k_prime"]), float(row["alpha"]),
                   row.get("q") or "")
            groups.setdefault(key, []).append(row)
    curves = []
    for (run, method, k, k_prime, alpha, cut), rows in groups.items():
        curves.append(
            Curve(
                run=run, method=method, k=k, k_prime=k_prime, alpha=alpha,
                sigma=float(rows[0]["sigma"]), n=int(rows[0]["n"]),
                radius=np.array([float(r["radius"]) for r in rows]),
                precision=np.array([float(r["precision"]) for r in rows]),
                recall=np.array([float(r["recall"]) for r in rows]),
                f1=np.array([float(r["f1"]) for r in rows]),
                num_inputs=int(rows[0]["num_inputs"]),
                q=float(cut) if cut else None,
            )
        )
    return curves


# ------------------------------------------------------------------------------------------- plots


def _varying(curves: Sequence[Curve], fields: Sequence[str]) -> list[str]:
    return [f for f in fields if len({getattr(c, f) for c in curves}) > 1]


def _curve_label(curve: Curve, varying: Sequence[str]) -> str:
    parts = [_label(curve.method)]
    names = {"k": "k", "k_prime": "k'", "alpha": "α", "sigma": "σ", "n": "n"}
    per_label = curve.q is not None
    details = [f"{names[f]}={getattr(curve, f):g}" for f in varying
               if f in names and not (per_label and f in ("k", "k_prime"))]
    if per_label:
        details.append(f"q={curve.q:g}")
    if details:
        parts.append(", ".join(details))
    return ", ".join(parts)


def _draw_panel(ax: object, curves: Sequence[Curve], metric: str, title: str | None, legend: bool = True) -> None:
    certified = [c for c in curves if c.method in _METHODS]  # the settings of the certified curves set the colours
    varying = _varying(certified or curves, ("k", "k_prime", "alpha", "sigma", "n"))
    settings = sorted({tuple(getattr(c, f) for f in varying) for c in certified or curves})
    colors = [f"C{i % 10}" for i in range(len(settings))]
    trivial_drawn: set[tuple] = set()
    for c in curves:
        setting = tuple(getattr(c, f) for f in varying)
        color = (colors[settings.index(setting)] if varying and setting in settings
                 else (_METHODS[c.method].color if c.method in _METHODS else "C2"))
        empirical = c.method not in _METHODS
        ax.plot(  # type: ignore[attr-defined]
            c.radius,
            c.metric(metric),
            linestyle=_METHODS[c.method].linestyle if c.method in _METHODS else "-.",
            color=color,
            linewidth=1.8,
            marker="o" if empirical else None,
            markersize=5,
            label=_curve_label(c, varying),
        )
        level = c.trivial.get(metric, 0.0)
        key = (c.run, c.k, level)
        if level > 0 and key not in trivial_drawn:  # the part of every curve that holds by counting alone
            trivial_drawn.add(key)
            ax.axhline(level, color="0.55", linewidth=1.0, linestyle=(0, (1, 2)),  # type: ignore[attr-defined]
                       label=f"{TRIVIAL_LABEL} (k={c.k})")
    ax.set_xlabel("Perturbation size R (ℓ2)")  # type: ignore[attr-defined]
    mixed = any(c.method not in _METHODS for c in curves)
    ylabel = METRIC_LABELS[metric]
    if any(c.q is not None for c in curves):
        ylabel = ylabel.replace("top-k ", "")
    if mixed:
        ylabel = ylabel.replace("Certified t", "T") + "\n(certified; empirical under attack)"
    ax.set_ylabel(ylabel)  # type: ignore[attr-defined]
    ax.set_ylim(-0.02, 1.02)  # type: ignore[attr-defined]
    ax.set_xlim(left=0.0)  # type: ignore[attr-defined]
    ax.grid(True, alpha=0.3)  # type: ignore[attr-defined]
    if title:
        ax.set_title(title, fontsize=10)  # type: ignore[attr-defined]
    if legend and curves:
        if len(curves) > 5:  # many lines: keep the legend off the curves
            ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # type: ignore
        else:
            ax.legend(fontsize=8, frameon=False)  # type: ignore[attr-defined]


def _save_figure(fig: object, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")  # type: ignore[attr-defined]
    atomic_write_bytes(path, buffer.getvalue())


def _pyplot() -> object:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_metric(curves: Sequence[Curve], metric: str, path: str | os.PathLike[str]) -> None:
    """One PNG for one metric: a panel per run, a line per method and setting (the paper's Figure 1 style).

    Line style tells the method (solid MultiGuard, dashed first terms only, dotted Jia et al.); colour tells
    the setting (k, k', alpha) when several are drawn. Curves of other methods (an attack's) are drawn with
    markers, over the certified run's panel when there is one certified run.
    """
    plt = _pyplot()
    # Curves of other origins (an attack) are drawn over the certified ones when there is one certified run.
    certified_runs = list(dict.fromkeys(c.run for c in curves if c.method in _METHODS))
    panel = {c.run: c.run for c in curves}
    if len(certified_runs) == 1:
        panel.update({c.run: certified_runs[0] for c in curves if c.method not in _METHODS})
    runs = list(dict.fromkeys(panel[c.run] for c in curves))
    columns = min(len(runs), 3) or 1
    rows = -(-len(runs) // columns) or 1
    crowded = max(sum(1 for c in curves if panel[c.run] == run) for run in runs) > 5 if runs else False
    width = 7.4 if crowded else 4.6  # room for a legend beside the panel
    fig, axes = plt.subplots(rows, columns, figsize=(width * columns, 3.6 * rows), squeeze=False)  # type: ignore
    for i, run in enumerate(runs):
        run_curves = [c for c in curves if panel[c.run] == run]
        first = run_curves[0]
        fixed = [f for f in ("k", "k_prime", "alpha") if f not in _varying(run_curves, ("k", "k_prime", "alpha"))]
        names = {"k": "k", "k_prime": "k'", "alpha": "α"}
        setting = ", ".join(f"{names[f]}={getattr(first, f):g}" for f in fixed)
        shown = run.replace("$", r"\$")  # a run's name is text, never matplotlib math ("$x_{$" would not parse)
        title = f"{shown} (σ={first.sigma:g}, n={first.n}, {first.num_inputs} inputs" + (f"; {setting})" if setting
                                                                                         else ")")
        _draw_panel(axes[i // columns][i % columns], run_curves, metric, title)
    for j in range(len(runs), rows * columns):
        axes[j // columns][j % columns].axis("off")
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]


def plot_figure(rows: Sequence[tuple[str, Sequence[Curve]]], path: str | os.PathLike[str]) -> None:
    """A grid like the paper's Figure 1: one row per ``(title, curves)`` and one column per metric."""
    plt = _pyplot()
    if not rows:
        raise ValueError("rows must hold at least one (title, curves) pair")
    fig, axes = plt.subplots(len(rows), 3, figsize=(13.5, 3.4 * len(rows)), squeeze=False)  # type: ignore
    for i, (title, curves) in enumerate(rows):
        for j, metric in enumerate(METRICS):
            _draw_panel(axes[i][j], curves, metric, title if j == 0 else None)
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------- tables


def summary_markdown(
    curves: Sequence[Curve], radii: Sequence[float] = SUMMARY_RADII, *, title: str = "Certified robustness"
) -> str:
    """Markdown tables (one per metric, in percent) of ``curves`` at ``radii``; every radius must be on the
    curves' grid. Columns that are the same for every row are stated once above the tables."""
    if not curves:
        raise ValueError("curves must not be empty")
    candidates = ("run", "k", "k_prime", "q", "alpha", "sigma", "n", "num_inputs")
    headers = {"run": "run", "k": "k", "k_prime": "k'", "q": "q", "alpha": "α", "sigma": "σ", "n": "n",
               "num_inputs": "inputs"}
    varying = _varying(curves, candidates)
    fixed = [f for f in candidates if f not in varying]
    lines = [f"# {title}", ""]
    first = curves[0]
    fixed_text = ", ".join(f"{headers[f]} = {_cell(getattr(first, f))}" for f in fixed)
    if fixed_text:
        lines += [f"Same for every row: {fixed_text}.", ""]
    empty = {c.run: c.num_empty for c in curves if c.num_empty}
    for run, count in empty.items():
        lines += [f"Run {run}: {count} inputs have no ground-truth label (they count as recall 0).", ""]
    trivial_rows = {}  # one row per (run, k) whose labels make part of the certificate trivial
    for c in curves:
        if any(v > 0 for v in c.trivial.values()):
            trivial_rows.setdefault((c.run, c.k), c)
    if trivial_rows:
        lines += [f"Part of these certificates is trivial: with c classes and k predicted, any k labels keep at "
                  f"least |L| - (c - k) of an input's |L| labels, whatever the model; the rows '{TRIVIAL_LABEL}' "
                  "give that part, which every method's value includes at every R. Keep k well below c.", ""]
    per_label = any(c.q is not None for c in curves)
    for metric in METRICS:
        heading = METRIC_LABELS[metric].replace("top-k ", "") if per_label else METRIC_LABELS[metric]
        lines += [f"## {heading} (%)", ""]
        head = ["method", *[headers[f] for f in varying], *[f"R = {r:g}" for r in radii]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for c in curves:
            cells = [_label(c.method), *[_setting_cell(c, f) for f in varying]]
            cells += [f"{100 * c.at(metric, r):.1f}" for r in radii]
            lines.append("| " + " | ".join(cells) + " |")
        for c in trivial_rows.values():
            cells = [TRIVIAL_LABEL, *[_cell(getattr(c, f)) if f in ("run", "k", "sigma", "n", "num_inputs") else "any"
                                      for f in varying]]
            cells += [f"{100 * c.trivial[metric]:.1f}"] * len(radii)
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def attack_markdown(attack_curves: Sequence[Curve]) -> str:
    """Tables of empirical curves under attack (in percent) beside MultiGuard's certified values for the same
    inputs at the same radii, and the count of inputs whose attacked size fell below their certified size."""
    lines: list[str] = []
    for a in attack_curves:
        radii = [float(r) for r in a.radius]
        lines += [f"## Under attack: {a.run} (k = {a.k}, k' = {a.k_prime}, {a.num_inputs} inputs) (%)", ""]
        lines.append("| " + " | ".join(["", *[f"R = {r:g}" for r in radii]]) + " |")
        lines.append("|" + "|".join(["---"] + ["---:"] * len(radii)) + "|")
        for metric in METRICS:
            short = {"precision": "precision", "recall": "recall", "f1": "F1"}[metric]
            lines.append("| " + " | ".join([f"{short}, {ATTACK_LABEL}",
                                             *[f"{100 * v:.1f}" for v in a.metric(metric)]]) + " |")
            if a.certified is not None:
                lines.append("| " + " | ".join([f"{short}, certified ({_label('multiguard')}, α = {a.alpha:g})",
                                                 *[f"{100 * v:.1f}" for v in a.certified[metric]]]) + " |")
        if a.violations is not None:
            lines.append("| " + " | ".join(["inputs below their certificate (count)",
                                             *[str(int(v)) for v in a.violations]]) + " |")
        lines += ["", "The same inputs in every row. The attack's values bound robustness from above, the certified "
                  "ones from below; an input below its certificate is a failure of probability at most α (or Monte "
                  "Carlo error of the measurement)."
                  + (f" The certified column: the attack's {a.num_inputs} inputs at n = {a.n}, sampled by the attack "
                     "(not the inputs and n of the tables above)." if a.certified is not None else ""), ""]
    return "\n".join(lines)


def explanations_markdown(curves: Sequence[Curve]) -> str:
    """The section of summary.md that says what every method name and column means."""
    lines = ["## Reading this report", ""]
    for name in dict.fromkeys(c.method for c in curves):
        if name in _METHODS:
            lines.append(f"- **{_METHODS[name].label}**: {_METHODS[name].description}")
    keys = ["R", "precision", "recall", "f1", "k", "α"]
    if any(c.q is not None for c in curves):
        keys.append("q")
    if any(any(v > 0 for v in c.trivial.values()) for c in curves):
        keys.append("trivial")
    if any(c.method == "attack" for c in curves):
        keys.append("attack")
    lines += [f"- **{key}**: {COLUMN_HELP[key]}." for key in keys]
    lines += ["- Every certified value holds with probability at least 1 - α over the sampling, for each input.", ""]
    return "\n".join(lines)


def _setting_cell(curve: Curve, field_name: str) -> str:
    """A setting's table cell: ``-`` where the setting does not apply (k and k' of a per-label curve, q of a
    top-k one)."""
    if (curve.q is not None and field_name in ("k", "k_prime")) or (curve.q is None and field_name == "q"):
        return "-"
    return _cell(getattr(curve, field_name))


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ------------------------------------------------------------------------------------------ reports


@dataclass
class Report:
    """What :func:`make_report` wrote and computed."""

    out: Path
    curves: list[Curve]
    summary: str
    files: list[Path]


def _shown_arch(arch: object) -> object:
    """A factory's absolute file path relative to the current folder, where that is shorter."""
    if not isinstance(arch, str) or ".py:" not in arch:
        return arch
    path, _, factory = arch.rpartition(":")
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return arch
    return f"{relative}:{factory}" if os.path.isabs(path) and len(relative) < len(path) else arch


def empirical_curve(attack_dir: str | os.PathLike[str]) -> Curve:
    """The empirical curve of an ATTACK_DIR written by ``multiguard attack``, as a :class:`Curve` (method
    ``attack``) to overlay on the certified ones: an upper bound on robustness where the certificate is a
    lower one."""
    empirical = load_empirical(attack_dir)
    settings = empirical.settings
    certified = None
    per_input = Path(attack_dir) / PER_INPUT
    if per_input.is_file():
        with np.load(per_input) as arrays:
            if "certified" in arrays.files and "labels" in arrays.files and len(arrays["labels"]):
                part = certify.certified_metrics(arrays["certified"], arrays["labels"], int(settings.get("k", 1)))
                certified = {m: np.asarray(getattr(part, m), dtype=np.float64) for m in METRICS}
    try:
        return Curve(
            run=Path(attack_dir).name, method="attack", k=int(settings["k"]), k_prime=int(settings["k_prime"]),
            alpha=float(settings["alpha"]), sigma=float(settings["sigma"]), n=int(settings["n"]),
            radius=empirical.radius, precision=empirical.precision, recall=empirical.recall, f1=empirical.f1,
            num_inputs=empirical.num_inputs,
            violations=None if settings.get("violations") is None else np.asarray(settings["violations"], np.int64),
            certified=certified,
        )
    except KeyError as missing:
        raise ValueError(f"attack: {attack_dir} has no setting {missing} in attack.json") from None


def _is_report(folder: Path) -> bool:
    """Whether ``folder`` holds a report written by :func:`make_report` and nothing else."""
    names = {p.name for p in folder.iterdir()}
    return "curves.csv" in names and names <= set(REPORT_FILES)


def _place_report(staging: Path, out: Path, overwrite: bool) -> None:
    """Move the finished report in ``staging`` to ``out``: one rename where ``out`` does not exist yet; into an
    existing folder (empty, a previous report, or with ``overwrite`` one holding other files, which are left
    alone) file by file, each an atomic replace, so that the folder itself (perhaps the shell's working
    directory) stays the same."""
    if not out.exists():
        try:
            os.rename(staging, out)
            return
        except OSError:  # another process made out meanwhile
            if not out.is_dir():
                raise
    if any(out.iterdir()) and not _is_report(out) and not overwrite:  # another process may have written since
        raise ValueError(f"out: {out} is not empty and holds no report; choose a new --out, or pass --overwrite")
    for path in staging.iterdir():
        os.replace(path, out / path.name)
    staging.rmdir()


def _denoiser_note(metadata: dict[str, Any]) -> str:
    """``, denoiser PATH (arch, objective)`` for a run certified behind a denoiser, else nothing."""
    if not metadata.get("denoiser"):
        return ""
    settings = metadata.get("denoiser_settings") or {}
    details = ", ".join(str(settings[key]) for key in ("arch", "objective") if settings.get(key))
    if "timestep" in settings:  # a one-step diffusion denoiser: its step and the resolution policy, always stated
        details = (f"{settings.get('kind')}, {settings.get('source')}"
                   + (f"@{settings['revision']}" if settings.get("revision") else "")
                   + f", one step at timestep {settings['timestep']:g} (model noise level "
                   f"{settings.get('noise_level', float('nan')):.4g} for the effective noise std "
                   f"{settings.get('effective_noise_std', float('nan')):.4g}, mismatch "
                   f"{100 * settings.get('noise_mismatch', 0.0):+.2f} %), " + _resize_note(settings))
    return f", denoiser {metadata['denoiser']}" + (f" ({details})" if details else "")


def _resize_note(settings: dict[str, Any]) -> str:
    """The resolution policy of a diffusion denoiser, in words: noise added at the certified size, resize inside."""
    size, native, mode = settings.get("image_size"), settings.get("model_size"), settings.get("resize")
    if mode in (None, "none"):
        return f"model size {native} = certified image size"
    return (f"certified images {size}x{size}, model size {native}x{native}: the noisy image is resized ({mode}) "
            "inside the base classifier and the denoised one resized back, so the radii are l2 on the certified "
            f"{size}x{size} images")


def _checked_attack(attack_dir: str | os.PathLike[str], runs: Sequence[Run], k: Sequence[int],
                    k_prime: Sequence[int]) -> Curve:
    """The empirical curve of ``attack_dir``, refused (ValueError naming each field) when it attacked another
    model, data or noise than a run it is drawn over, or another k or k' than the report shows."""
    curve = empirical_curve(attack_dir)
    settings = load_empirical(attack_dir).settings
    for run in runs:
        mismatch = attack_run_mismatch(settings, run.metadata)
        if mismatch is not None:
            raise ValueError(f"attack: {attack_dir} did not attack what run {run.path} certified ({mismatch}); "
                             "attack the run's checkpoint on its data, or report the two apart")
    for name, value, shown in (("k", curve.k, k), ("k_prime", curve.k_prime, k_prime)):
        if int(value) not in [int(v) for v in shown]:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"attack: {attack_dir} attacked the top-k with {name} = {value}, but the report shows "
                             f"{name} = {', '.join(str(v) for v in shown)}; add {flag} {value}")
    return curve


def make_report(
    run_dirs: Sequence[str | os.PathLike[str]] | Sequence[Run],
    out: str | os.PathLike[str],
    *,
    k: Sequence[int] = (3,),
    k_prime: Sequence[int] = (1,),
    alpha: Sequence[float] = (0.001,),
    radius_grid: str | Sequence[float] | None = None,
    summary_radii: Sequence[float] = (),
    methods: Sequence[str] | None = None,
    names: Sequence[str] | None = None,
    extra_curves: Sequence[Curve] = (),
    title: str = "Certified robustness",
    radii: str | Sequence[float] | None = None,
    overwrite: bool = False,
    n: Sequence[int] = (),
    q: Sequence[float] = (0.5,),
    attacks: Sequence[str | os.PathLike[str]] = (),
) -> Report:
    """Write ``curves.csv``, ``precision.png``, ``recall.png``, ``f1.png``, ``summary.md`` and ``results.json``
    (:mod:`multiguard.results`) into ``out``.

    ``run_dirs`` are RUN_DIRs (or loaded :class:`~multiguard.runs.Run` objects); only their saved counts are
    read. The curves are evaluated on ``radius_grid`` (``radii``: its former name, deprecated; ``None``: 0 to 4 sigma
    of the runs, :func:`sigma_radius_grid`) together with the summary radii (0, 0.25, 0.5, 1 and
    ``summary_radii``) and the radii of the ``extra_curves``, so every number of ``summary.md`` is also a row
    of ``curves.csv``. ``extra_curves`` (e.g. empirical curves under attack) are written and drawn alongside;
    those of method ``attack`` get their own tables in ``summary.md`` beside the certified values of the same
    inputs, with the inputs that fell below their certificate. ``summary.md`` ends with what every name and
    column means, and marks the part of each value that holds by counting alone (``trivial``).

    All or nothing: everything is computed and checked first, the files are written into a temporary folder
    beside ``out`` and that folder is renamed to ``out`` (into an existing ``out``, the finished files are
    moved in, one atomic replace each); a failure (a bad argument, a full disk) leaves ``out`` as it was.
    ``out`` may be new, empty or a previous report (replaced); a folder holding other files is refused
    unless ``overwrite`` (then the report's files are put into it, the others left alone).

    ``n``: read every run at these sample sizes (each one of its stored nested sizes, e.g. 100, 200, 500, 1000
    of an n = 1000 run): each is the fixed-n experiment a run with that n would be, on the same samples.

    ``q``: the cuts of the per-label (thresholded) curves, drawn beside the top-k ones for runs certified with
    thresholds (``methods=None``: every method the runs support).
    ``attacks``: ATTACK_DIRs of ``multiguard attack`` to overlay (as ``extra_curves``), each checked first
    against every run (:func:`multiguard.empirical.attack_run_mismatch`: the same checkpoint, model file,
    denoiser, dataset, split and sigma) and against ``k`` and ``k_prime`` (its k and k' among them); a
    mismatch is a ValueError naming the attack, the run and each field.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out) and not overwrite:
        raise ValueError(f"out: {out} is not empty and holds no report; choose a new --out, or pass --overwrite")
    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    if not runs:
        raise ValueError("run_dirs must name at least one run")
    extra_curves = [*extra_curves, *(_checked_attack(path, runs, k, k_prime) for path in attacks)]
    if len(n):
        run_names = _run_names(runs, names)
        names = [name for name in run_names for _ in n]
        runs = [run.at_sample_size(size) for run in runs for size in n]
    explicit_methods = methods
    methods = default_methods() if methods is None else methods  # every method reports compute by default
    for method in methods:
        check_choice(method, "methods", tuple(_METHODS))
    if methods and all(_METHODS[m].k_prime_one_only for m in methods) and 1 not in [int(kp) for kp in k_prime]:
        only = ", ".join(f"{m} ({_METHODS[m].label})" for m in methods)
        raise ValueError(f"methods: {only} needs k' = 1 (a base classifier that predicts one label), got k' "
                         f"{', '.join(str(kp) for kp in k_prime)}; add --k-prime 1 or another method")
    if radii is not None:
        if radius_grid is not None:
            raise TypeError("make_report() got both radii= (deprecated) and radius_grid=; pass only radius_grid=")
        warn_deprecated("make_report(radii=...)", "make_report(radius_grid=...)")
        radius_grid = radii
    spec = radius_grid
    grid = sigma_radius_grid(run.sigma for run in runs) if spec is None else parse_radius_grid(spec)
    extra_radii = [np.asarray(c.radius, dtype=np.float64) for c in extra_curves]
    if extra_radii:
        grid = np.unique(np.round(np.concatenate([grid, *extra_radii]), 12))
    table_radii = np.unique(np.round(np.concatenate([np.array(SUMMARY_RADII), parse_radius_grid(summary_radii)
                                                     if len(summary_radii) else np.zeros(0)]), 12))
    radius = np.unique(np.concatenate([grid, table_radii]))
    if radius.size > MAX_RADII:
        raise ValueError(f"radii must be a grid of at most {MAX_RADII} points with the summary radii, got "
                         f"{radius.size}")
    curves = compute_curves(runs, k=k, k_prime=k_prime, alpha=alpha, radius=radius, methods=explicit_methods,
                            names=names, q=q)
    curves += list(extra_curves)
    if not curves:
        raise ValueError("methods: no curve to report for these methods and k'")
    table_curves = [c for c in curves if all(np.isclose(c.radius, r, atol=1e-9).any() for r in table_radii)]
    summary = summary_markdown(table_curves, [float(r) for r in table_radii], title=title)
    attacks = [c for c in curves if c.method == "attack"]
    if attacks:
        summary = summary.rstrip("\n") + "\n\n" + attack_markdown(attacks)
    summary = summary.rstrip("\n") + "\n\n" + explanations_markdown(curves)
    header = "\n".join(_run_line(name, run) for name, run in zip(_run_names(runs, names), runs, strict=True))
    text = summary.replace("\n\n", f"\n\n{header}\n\n", 1) + "\n"
    results = results_document(curves, runs, _run_names(runs, names), title=title)
    validate_results(results)

    place = Path(os.path.abspath(out))  # "." and "reports/.." have a name and a parent this way
    place.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned_staging(place)  # left by a killed report whose process is gone
    staging = staging_folder(place)
    try:
        write_csv(curves, staging / "curves.csv")
        for metric in METRICS:
            plot_metric(curves, metric, staging / f"{metric}.png")
        atomic_write_bytes(staging / "summary.md", text.encode())
        atomic_write_bytes(staging / RESULTS_FILE, results_bytes(results))
        _place_report(staging, place, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Report(out=out, curves=curves, summary=text, files=[out / name for name in REPORT_FILES])
