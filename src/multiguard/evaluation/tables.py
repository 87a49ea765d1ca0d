"""The markdown of a report: ``summary.md``'s tables at the summary radii, the attack's gap table, and the
explanations of every method name and column."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from multiguard.certificates.methods import METHODS as _METHODS
from multiguard.evaluation.curves import ATTACK_LABEL, METRICS, TRIVIAL_LABEL, Curve, _label
from multiguard.evaluation.plots import METRIC_LABELS, _varying
from multiguard.runs.folder import Run, run_noise, sampling_mode

__all__ = ["SUMMARY_RADII", "summary_markdown"]


def _resize_note(settings: dict[str, Any]) -> str:
    """The resolution policy of a diffusion denoiser, in words: noise added at the certified size, resize inside."""
    size, native, mode = settings.get("image_size"), settings.get("model_size"), settings.get("resize")
    if mode in (None, "none"):
        return f"model size {native} = certified image size"
    return (f"certified images {size}x{size}, model size {native}x{native}: the noisy image is resized ({mode}) "
            "inside the base classifier and the denoised one resized back, so the radii are l2 on the certified "
            f"{size}x{size} images")



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



SUMMARY_RADII: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)


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
    "per-label precision": "certified precision@R of the per-label prediction: that of the worst predicted set "
                           "between the labels certified on and those not certified off at R (an empty prediction "
                           "has precision 0 on an input with labels; mean over inputs)",
    "per-label recall": "the same set's share of L, the input's true labels",
    "per-label f1": "the same set's F1 with L",
    "per-label q": "a label is predicted when its score passes its threshold in more than a share q of the noise",
    "trivial": f"'{TRIVIAL_LABEL}': what any k of the c labels keep of L whatever the model "
               "(e <= |L| - (c - k)); it is part of every method's value at every R",
    "attack": "'empirical (attack)': |L ∩ top-k| measured at the inputs an l2 PGD attack found (an upper bound "
              "on the true robustness where a certificate is a lower bound)",
}


def _futility_text(rule: dict) -> str:
    futility = rule.get("futility", "remaining")
    return f"margin (gamma = {rule.get('margin', 0.2):g})" if futility == "margin" else futility


def _bounds_text(rule: dict) -> str:
    """The sentence of the rule's anytime bounds (their :class:`BoundsRecord`'s ``report``), or its spending's."""
    from multiguard.certificates.betting import check_cp_share
    from multiguard.certificates.sequential import bounds_family

    record = bounds_family(rule.get("bounds", "union"))
    if record.report:  # a share family's sentence names its share (None: the default, as the bounds read it)
        share = check_cp_share(rule.get("spending")) if record.spending == "share" else None
        return record.report.format(share=share)
    return _spending_text(rule.get("spending"))


def _spending_text(spending: float | None) -> str:
    if spending is None:
        return "alpha spent in equal shares over the looks"
    return f"{spending:g} of alpha spent at the last look"


def _run_line(name: str, run: Run) -> str:
    """One line describing a run for ``summary.md``; a sequential run's rule and samples used."""
    line = (f"- run `{name}`: {run.path}, {run.counts.shape[0]} inputs, σ = {run.sigma:g}, n = {run.n}, "
            f"dataset {run.metadata.get('dataset')} ({run.metadata.get('split')}), "
            f"arch {_shown_arch(run.metadata.get('arch'))}, mode {sampling_mode(run.metadata)}, "
            f"noise: {run_noise(run.metadata)}" + _denoiser_note(run.metadata))
    if run.thresholds is not None:
        line += f", thresholds {run.thresholds.describe()}"
    rule = run.stop_rule
    if rule and run.samples is not None:
        used = run.samples
        shares = ", ".join(f"{(used == size).mean():.0%} at {size}" for size in run.sample_sizes)
        line += (f"; sequential: sampling stopped per input once its certified size at R = {rule['radius']:g} "
                 f"(k = {rule['k']}, k' = {rule['k_prime']}, α = {rule['alpha']:g}, futility rule "
                 f"{_futility_text(rule)}, looks {rule.get('schedule', '1-2-5')}, "
                 f"{_bounds_text(rule)}) was settled; samples used: "
                 f"mean {used.mean():.0f}, median {np.median(used):.0f}, at most {run.n} ({shares}); the "
                 "bounds are anytime-valid, so the curves hold at every radius")
    return line


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
    fixed = [f for f in candidates if f not in varying and _setting_cell(curves[0], f) != "-"]  # none that never apply
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


def _attack_rows(a: Curve, heading: str, certified_label: str, violations_label: str) -> list[str]:
    """One attack curve's table: its heading, the attacked values of each metric (in percent) and the certified
    ones of the same inputs under ``certified_label``, and its count of violations under ``violations_label``."""
    radii = [float(r) for r in a.radius]
    lines = [heading, "", "| " + " | ".join(["", *[f"R = {r:g}" for r in radii]]) + " |",
             "|" + "|".join(["---"] + ["---:"] * len(radii)) + "|"]
    for metric in METRICS:
        short = {"precision": "precision", "recall": "recall", "f1": "F1"}[metric]
        lines.append("| " + " | ".join([f"{short}, {ATTACK_LABEL}", *[f"{100 * v:.1f}" for v in a.metric(metric)]])
                     + " |")
        if a.certified is not None:
            lines.append("| " + " | ".join([f"{short}, certified ({certified_label}, α = {a.alpha:g})",
                                             *[f"{100 * v:.1f}" for v in a.certified[metric]]]) + " |")
    if a.violations is not None:
        lines.append("| " + " | ".join([violations_label, *[str(int(v)) for v in a.violations]]) + " |")
    return lines


def attack_markdown(attack_curves: Sequence[Curve]) -> str:
    """Tables of empirical curves under attack (in percent) beside MultiGuard's certified values for the same
    inputs at the same radii, and the count of inputs whose attacked size fell below their certified size."""
    lines: list[str] = []
    for a in attack_curves:
        lines += _attack_rows(a, f"## Under attack: {a.run} (k = {a.k}, k' = {a.k_prime}, {a.num_inputs} inputs) (%)",
                              _label("multiguard"), "inputs below their certificate (count)")
        lines += ["", "The same inputs in every row. The attack's values bound robustness from above, the certified "
                  "ones from below; an input below its certificate is a failure of probability at most α (or Monte "
                  "Carlo error of the measurement)."
                  + (f" The certified column: the attack's {a.num_inputs} inputs at n = {a.n}, sampled by the attack "
                     "(not the inputs and n of the tables above)." if a.certified is not None else ""), ""]
    return "\n".join(lines)


def thresholded_attack_markdown(attack_curves: Sequence[Curve]) -> str:
    """Tables of thresholded attacks (per-label curves of method ``attack``, in percent): the attacked set's
    precision, recall and F1 beside the thresholded certificate's values for the same inputs at the same radii,
    and the inputs with a decision the attack turned against their certificate."""
    lines: list[str] = []
    for a in attack_curves:
        lines += _attack_rows(a, f"## Under attack, per-label: {a.run} (q = {a.q:g}, {a.num_inputs} inputs) (%)",
                              "thresholded", "inputs with a decision against their certificate (count)")
        lines += ["", "The same inputs in every row. The attacked rows are the set of labels on in more than a share "
                  "q of fresh noise at the point the thresholded attack found (true labels turned off, others on): "
                  "an upper bound on the worst case; the certified rows are the thresholded certificate's worst "
                  "set of the same inputs, a lower bound. An input with a label certified on (off) at R and "
                  "measured off (on) under attack is a failure of probability at most α (or Monte Carlo error on "
                  "a near tie)."
                  + (f" The certified rows: the attack's {a.num_inputs} inputs at n = {a.n}, sampled by the attack "
                     "(not the inputs and n of the tables above)." if a.certified is not None else ""), ""]
    return "\n".join(lines)


def explanations_markdown(curves: Sequence[Curve]) -> str:
    """The section of summary.md that says what every method name and column means."""
    lines = ["## Reading this report", ""]
    for name in dict.fromkeys(c.method for c in curves):
        if name in _METHODS:
            lines.append(f"- **{_METHODS[name].label}**: {_METHODS[name].description}")
    top_k, per_label = any(c.q is None for c in curves), any(c.q is not None for c in curves)
    if top_k:  # k and k' and the top-k metrics, only where the report holds top-k rows
        keys = ["R", "precision", "recall", "f1", "k", "α", *(["q"] if per_label else [])]
    else:  # per-label rows only: their own metrics and q, no k
        keys = ["R", "per-label precision", "per-label recall", "per-label f1", "per-label q", "α"]
    if any(any(v > 0 for v in c.trivial.values()) for c in curves):
        keys.append("trivial")
    if any(c.method == "attack" for c in curves):
        keys.append("attack")
    lines += [f"- **{key.removeprefix('per-label ')}**: {COLUMN_HELP[key]}." for key in keys]
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
