"""Matplotlib figures of certified curves: one metric against the radius (``plot_metric``) and the paper's grid
of panels (``plot_figure``). Matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence

from multiguard.certificates.methods import METHODS as _METHODS
from multiguard.common.files import atomic_write_bytes
from multiguard.evaluation.curves import METRICS, TRIVIAL_LABEL, Curve, _label

__all__ = ["plot_figure", "plot_metric"]


METRIC_LABELS = {
    "precision": "Certified top-k precision@R",
    "recall": "Certified top-k recall@R",
    "f1": "Certified top-k f1-score@R",
}


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
                 else (_METHODS[c.method].color if c.method in _METHODS else "C2" if c.q is None else "C4"))
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
        if empirical and c.certified is not None:
            _draw_gap(ax, c, metric, color)
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


def _draw_gap(ax: object, attack: Curve, metric: str, color: str) -> None:
    """The certified curve of an attack's own inputs (lower bound) and the gap up to its attacked curve (upper
    bound) shaded: the robustness neither the certificate nor the attack has settled."""
    lower, upper = attack.certified[metric], attack.metric(metric)
    kind = "" if attack.q is None else f" (per-label, q={attack.q:g})"  # a thresholded attack's curves
    ax.plot(attack.radius, lower, linestyle=":", color=color, linewidth=1.4, marker="x",  # type: ignore
            markersize=5, label=f"certified, {attack.run}'s inputs{kind}")
    ax.fill_between(attack.radius, lower, upper, color=color, alpha=0.18, linewidth=0,  # type: ignore
                    label=f"gap: certified to attacked{kind}")


FIGURE_DPI = 110  # the pixels per inch of every saved figure


def _save_figure(fig: object, path: str | os.PathLike[str]) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=FIGURE_DPI, bbox_inches="tight")  # type: ignore[attr-defined]
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


FIGURE_ROW_INCHES = 3.4  # the height of one row of :func:`plot_figure`
FIGURE_WIDTH_INCHES = 13.5  # and of its three columns


def plot_figure(rows: Sequence[tuple[str, Sequence[Curve]] | tuple[str, Sequence[Curve], Sequence[str]]],
                path: str | os.PathLike[str], caption: str | None = None) -> None:
    """A grid like the paper's Figure 1: one row per ``(title, curves)`` and one column per metric (precision,
    recall, F1), each panel a certified metric against the l2 radius; ``caption`` is a line of text under the
    grid (e.g. the setting: dataset, n, alpha, inputs, sampling mode, noise). A row ``(title, curves, metrics)``
    draws only those metrics, each in its own column (the others left blank; the title on its first panel)."""
    plt = _pyplot()
    if not rows:
        raise ValueError("rows must hold at least one (title, curves) pair")
    fig, axes = plt.subplots(len(rows), 3, figsize=(FIGURE_WIDTH_INCHES, FIGURE_ROW_INCHES * len(rows)),
                             squeeze=False)  # type: ignore[attr-defined]
    for i, row in enumerate(rows):
        title, curves = row[0], row[1]
        shown = [m for m in METRICS if m in (row[2] if len(row) > 2 else METRICS)]  # type: ignore[misc]
        if not shown:
            raise ValueError(f"rows: row {title!r} names no metric of {', '.join(METRICS)}")
        for j, metric in enumerate(METRICS):
            if metric in shown:
                _draw_panel(axes[i][j], curves, metric, title if metric == shown[0] else None)
            else:
                axes[i][j].axis("off")
    fig.tight_layout()
    if caption:
        fig.text(0.5, 0.0, caption.replace("$", r"\$"), ha="center", va="top", fontsize=9)  # type: ignore
    _save_figure(fig, path)
    plt.close(fig)  # type: ignore[attr-defined]
