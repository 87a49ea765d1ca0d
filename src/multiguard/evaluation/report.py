"""Certified precision / recall / F1 curves, tables and plots from saved runs (no model, no GPU).

A report reads the counts of one or more RUN_DIRs (:mod:`multiguard.runs.job`) and, for every combination of
``k``, ``k'`` and ``alpha`` asked for, computes the label probability bounds once, the per-e certified radii
once, and from them the certified intersection size at every radius of the grid. Methods:

- ``multiguard``: Theorem 1 of the paper (Eq. 8) with both terms on each side;
- ``multiguard-first-terms``: the ablation of section 4.2 without the u- and v-terms;
- ``jia``: Jia et al. (ICLR 2020) extended to multi-label, label by label (only where ``k' = 1``).

Outputs, in REPORT_DIR: ``curves.csv`` (columns :data:`CSV_COLUMNS`, metrics as fractions in [0, 1]),
``precision.png``, ``recall.png``, ``f1.png`` (one panel per run, in the style of the paper's Figure 1)
``summary.md`` (tables at a few radii, in percent) and ``results.json`` (the certified curves as data with the runs'
identities and sampling cost, :mod:`multiguard.evaluation.results`, docs/results.md).

Curves of other origins (e.g. empirical robustness under an attack) are :class:`Curve` objects too and can be
passed to :func:`make_report` as ``extra_curves`` to be written and drawn alongside.

The default radius grid runs from 0 to 4 sigma (:func:`sigma_radius_grid`). Where k is close to the number of
classes c, part of every certificate holds by counting alone (any k labels keep at least ``|L| - (c - k)`` of
L, :func:`multiguard.certificates.metrics.trivial_intersection_size`): ``summary.md`` gives that part in rows of its
own and
the plots draw it as a grey dotted line. ``summary.md`` ends with what every method name and column means.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from multiguard.certificates import metrics as _metrics
from multiguard.certificates.methods import METHODS as _METHODS
from multiguard.certificates.methods import default_methods
from multiguard.common.files import atomic_write_bytes, remove_abandoned_staging, staging_folder
from multiguard.common.registry import Registry
from multiguard.common.validation import check_choice
from multiguard.evaluation.curves import (
    MAX_RADII,
    METRICS,
    Curve,
    _run_names,
    compute_curves,
    parse_radius_grid,
    sigma_radius_grid,
    write_csv,
)
from multiguard.evaluation.empirical import (
    PER_INPUT,
    THRESHOLDED_CSV,
    attack_run_mismatch,
    load_empirical,
    load_thresholded,
)
from multiguard.evaluation.plots import plot_metric
from multiguard.evaluation.results import RESULTS_FILE, results_bytes, results_document, validate_results
from multiguard.evaluation.tables import (
    SUMMARY_RADII,
    _run_line,
    attack_markdown,
    explanations_markdown,
    summary_markdown,
    thresholded_attack_markdown,
)
from multiguard.runs.folder import Run, load_run

__all__ = ["REPORT_SECTIONS", "Report", "empirical_curve", "make_report", "thresholded_empirical_curve"]


REPORT_FILES: tuple[str, ...] = ("curves.csv", "precision.png", "recall.png", "f1.png", "summary.md", "results.json")


@dataclass
class Report:
    """What :func:`make_report` wrote and computed."""

    out: Path
    curves: list[Curve]
    summary: str
    files: list[Path]




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
                part = _metrics.certified_metrics(arrays["certified"], arrays["labels"], int(settings.get("k", 1)))
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


def thresholded_empirical_curve(attack_dir: str | os.PathLike[str]) -> Curve | None:
    """The thresholded attack of an ATTACK_DIR (``multiguard attack --threshold``) as a per-label :class:`Curve`
    (method ``attack``, its ``q``, k and k' 0): the attacked set's precision, recall and F1 of
    ``empirical_thresholded.csv`` (upper bounds on the worst case) with the thresholded certificate's values
    for the same inputs as ``certified`` (lower bounds; ``None`` where the attack certified nothing) and the
    inputs that broke their certificate as ``violations``; ``None`` where the folder has no such file."""
    if not (Path(attack_dir) / THRESHOLDED_CSV).is_file():
        return None
    table = load_thresholded(attack_dir)
    settings = load_empirical(attack_dir).settings
    certified = {m: table[f"certified_{m}"] for m in METRICS}
    if any(np.isnan(values).any() for values in certified.values()):
        certified = None
    violations = table["violations"].astype(np.int64)
    try:
        return Curve(
            run=Path(attack_dir).name, method="attack", k=0, k_prime=0, alpha=float(settings["alpha"]),
            sigma=float(settings["sigma"]), n=int(settings["n"]), radius=table["radius"],
            precision=table["precision"], recall=table["recall"], f1=table["f1"],
            num_inputs=int(table["num_inputs"][0]) if len(table["num_inputs"]) else 0,
            violations=None if (violations < 0).any() else violations, certified=certified,
            q=float(settings["q"]),
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






def _checked_attack(attack_dir: str | os.PathLike[str], runs: Sequence[Run], k: Sequence[int],
                    k_prime: Sequence[int], q: Sequence[float]) -> list[Curve]:
    """The empirical curves of ``attack_dir`` (the top-k one; and the thresholded one where the folder has
    ``empirical_thresholded.csv`` and a run has thresholded certificates), refused (ValueError naming each
    field) when it attacked another model, data or noise than a run it is drawn over, or another k or k' than
    the report shows (or, for the thresholded one, other thresholds than those runs or a q the report does not
    show)."""
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
    thresholded = [run for run in runs if run.on_counts is not None]
    per_label = thresholded_empirical_curve(attack_dir) if thresholded else None
    if per_label is None:
        return [curve]
    for run in thresholded:
        if run.metadata.get("thresholds") != settings.get("thresholds"):
            raise ValueError(f"attack: {attack_dir} attacked the thresholds {settings.get('thresholds')}, run "
                             f"{run.path} certified {run.metadata.get('thresholds')}; attack with the run's "
                             "--threshold, or report the two apart")
    if not any(np.isclose(per_label.q, float(cut), rtol=0.0, atol=1e-12) for cut in q):
        raise ValueError(f"attack: {attack_dir} attacked the thresholded classifier with q = {per_label.q:g}, but the "
                         f"report shows q = {', '.join(f'{float(v):g}' for v in q)}; add --q {per_label.q:g}")
    return [curve, per_label]


def _checked_out(out: str | os.PathLike[str], overwrite: bool) -> Path:
    """``out`` as a Path, refused (ValueError naming it) when it is a file, or a folder of other files
    without ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_report(out) and not overwrite:
        raise ValueError(f"out: {out} is not empty and holds no report; choose a new --out, or pass --overwrite")
    return out


def _check_methods(methods: Sequence[str], k_prime: Sequence[int]) -> None:
    """Every method is a registered one, and a set of k'-one-only methods comes with k' = 1."""
    for method in methods:
        check_choice(method, "methods", tuple(_METHODS))
    if methods and all(_METHODS[m].k_prime_one_only for m in methods) and 1 not in [int(kp) for kp in k_prime]:
        only = ", ".join(f"{m} ({_METHODS[m].label})" for m in methods)
        raise ValueError(f"methods: {only} needs k' = 1 (a base classifier that predicts one label), got k' "
                         f"{', '.join(str(kp) for kp in k_prime)}; add --k-prime 1 or another method")


def _report_radii(runs: Sequence[Run], radius_grid: str | Sequence[float] | None, summary_radii: Sequence[float],
                  extra_curves: Sequence[Curve]) -> tuple[np.ndarray, np.ndarray]:
    """``(radius, table_radii)``: the radii every curve is evaluated at (the grid, the extra curves' radii and
    the summary's) and those of the summary tables (:data:`SUMMARY_RADII` and ``summary_radii``)."""
    grid = sigma_radius_grid(run.sigma for run in runs) if radius_grid is None else parse_radius_grid(radius_grid)
    extra_radii = [np.asarray(c.radius, dtype=np.float64) for c in extra_curves]
    if extra_radii:
        grid = np.unique(np.round(np.concatenate([grid, *extra_radii]), 12))
    table_radii = np.unique(np.round(np.concatenate([np.array(SUMMARY_RADII), parse_radius_grid(summary_radii)
                                                     if len(summary_radii) else np.zeros(0)]), 12))
    radius = np.unique(np.concatenate([grid, table_radii]))
    if radius.size > MAX_RADII:
        raise ValueError(f"radii must be a grid of at most {MAX_RADII} points with the summary radii, got "
                         f"{radius.size}")
    return radius, table_radii


#: The parts of ``summary.md``, in order: each a function ``section(curves, table_radii, title) -> str | None``
#: (markdown, or ``None`` where the report holds nothing for it). A new kind of result (a new curve method with
#: tables of its own) registers its section here instead of being spliced into the report by hand.
REPORT_SECTIONS: Registry[Callable[[list[Curve], np.ndarray, str], str | None], None] = Registry("report section")


@REPORT_SECTIONS.register("tables", help="the certified tables of every curve at the summary radii")
def _tables_section(curves: list[Curve], table_radii: np.ndarray, title: str) -> str | None:
    table_curves = [c for c in curves if all(np.isclose(c.radius, r, atol=1e-9).any() for r in table_radii)]
    return summary_markdown(table_curves, [float(r) for r in table_radii], title=title)


@REPORT_SECTIONS.register("attack", help="attacked against certified values of an attack's inputs, and violations")
def _attack_section(curves: list[Curve], table_radii: np.ndarray, title: str) -> str | None:
    attacks = [c for c in curves if c.method == "attack" and c.q is None]
    return attack_markdown(attacks) if attacks else None


@REPORT_SECTIONS.register("attack-thresholded",
                          help="the thresholded attack: the attacked set against the thresholded certificate")
def _thresholded_attack_section(curves: list[Curve], table_radii: np.ndarray, title: str) -> str | None:
    attacks = [c for c in curves if c.method == "attack" and c.q is not None]
    return thresholded_attack_markdown(attacks) if attacks else None


@REPORT_SECTIONS.register("explanations", help="what every name and column of the report means")
def _explanations_section(curves: list[Curve], table_radii: np.ndarray, title: str) -> str | None:
    return explanations_markdown(curves)


def _summary_text(curves: list[Curve], table_radii: np.ndarray, runs: Sequence[Run], names: Sequence[str] | None,
                  title: str) -> str:
    """``summary.md``: the :data:`REPORT_SECTIONS` that hold something, in order, with the run lines after the
    title."""
    summary = ""
    for section in REPORT_SECTIONS.entries():
        part = section.load()(curves, table_radii, title)
        if part:
            summary = part if not summary else summary.rstrip("\n") + "\n\n" + part
    header = "\n".join(_run_line(name, run) for name, run in zip(_run_names(runs, names), runs, strict=True))
    return summary.replace("\n\n", f"\n\n{header}\n\n", 1) + "\n"


def _write_report(out: Path, curves: list[Curve], text: str, results: dict, overwrite: bool) -> None:
    """All or nothing: the report's files into a staging folder beside ``out``, then into place."""
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
    overwrite: bool = False,
    n: Sequence[int] = (),
    q: Sequence[float] = (0.5,),
    attacks: Sequence[str | os.PathLike[str]] = (),
) -> Report:
    """Write ``curves.csv``, ``precision.png``, ``recall.png``, ``f1.png``, ``summary.md`` and ``results.json``
    (:mod:`multiguard.evaluation.results`) into ``out``.

    ``run_dirs`` are RUN_DIRs (or loaded :class:`~multiguard.runs.folder.Run` objects); only their saved counts are
    read. The curves are evaluated on ``radius_grid`` (``None``: 0 to 4 sigma
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
    against every run (:func:`multiguard.evaluation.empirical.attack_run_mismatch`: the same checkpoint, model file,
    denoiser, dataset, split and sigma) and against ``k`` and ``k_prime`` (its k and k' among them); a
    mismatch is a ValueError naming the attack, the run and each field. An ATTACK_DIR with
    ``empirical_thresholded.csv`` over runs with thresholded certificates brings its thresholded curve too
    (:func:`thresholded_empirical_curve`: drawn with the gap to its certified curve in each metric's figure,
    in ``results.json``'s ``attacked`` list with its ``q``, and a table of its own in ``summary.md``), checked
    against those runs' thresholds and against ``q`` (its q among them); over runs without thresholds only
    its top-k curve is drawn.
    """
    out = _checked_out(out, overwrite)
    runs = [r if isinstance(r, Run) else load_run(r) for r in run_dirs]
    if not runs:
        raise ValueError("run_dirs must name at least one run")
    extra_curves = [*extra_curves, *(c for path in attacks for c in _checked_attack(path, runs, k, k_prime, q))]
    if len(n):
        run_names = _run_names(runs, names)
        names = [name for name in run_names for _ in n]
        runs = [run.at_sample_size(size) for run in runs for size in n]
    _check_methods(default_methods() if methods is None else methods, k_prime)  # None: every method reports compute
    radius, table_radii = _report_radii(runs, radius_grid, summary_radii, extra_curves)
    curves = compute_curves(runs, k=k, k_prime=k_prime, alpha=alpha, radius=radius, methods=methods,
                            names=names, q=q)
    curves += list(extra_curves)
    if not curves:
        raise ValueError("methods: no curve to report for these methods and k'")
    text = _summary_text(curves, table_radii, runs, names, title)
    results = results_document(curves, runs, _run_names(runs, names), title=title)
    validate_results(results)
    _write_report(out, curves, text, results, overwrite)
    return Report(out=out, curves=curves, summary=text, files=[out / name for name in REPORT_FILES])
