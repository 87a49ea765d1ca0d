"""The paper's findings (Section 4.2 and Figure 1 of the MultiGuard paper), checked on certified curves: which of
them a set of reports reproduces, with the numbers. NumPy only, no torch.

Each finding is the paper's statement about one row of its Figure 1 (the comparison with Jia et al., the second
terms of its Equation 8, the impact of k', k, sigma, n and alpha), written as a comparison of certified metrics
at a few radii (:data:`FINDING_RADII`); :func:`paper_findings` evaluates those that the given reports hold and
says, for each, whether it holds here and which values decide it. Nothing here is asserted: a finding that does
not hold on a model and dataset is a result (docs/demo.md explains the one the demo does not reproduce).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from multiguard.evaluation.curves import Curve

__all__ = ["FINDING_RADII", "Finding", "findings_markdown", "findings_summary", "paper_findings"]

FINDING_RADII: tuple[float, float] = (0.0, 1.0)
"""The radii of "without attacks" (R = 0) and "as R increases" (R = 1, where the demo's curves still differ)."""


@dataclass(frozen=True)
class Finding:
    """One of the paper's findings on one report: ``row`` (the Figure 1 row), ``claim`` (the paper's statement),
    ``holds`` (whether these numbers reproduce it) and ``evidence`` (the values that decide it, in %)."""

    row: str
    claim: str
    holds: bool
    evidence: str


def _pick(curves: Sequence[Curve], **fields: object) -> list[Curve]:
    return [c for c in curves if all(getattr(c, name) == value for name, value in fields.items())]


def _values(curves: Sequence[Curve], metric: str, radius: float) -> list[float]:
    return [c.at(metric, radius) for c in curves]


def _ordered(values: Sequence[float], direction: int, strict: bool) -> bool:
    """Whether ``values`` increase (``direction`` 1) or decrease (-1) along the list, strictly or not."""
    steps = [direction * (b - a) for a, b in zip(values[:-1], values[1:], strict=True)]
    return all(s > 1e-12 for s in steps) if strict else all(s >= -1e-12 for s in steps)


def _trend(row: str, claim: str, curves: Sequence[Curve], key: Callable[[Curve], float], label: str,
           checks: Sequence[tuple[str, float, int, bool]]) -> Finding | None:
    """A finding that a metric moves one way along ``key`` (sigma, k, ...): ``checks`` are ``(metric, radius,
    direction, strict)``; it holds when every check does. None with fewer than two curves."""
    if len(curves) < 2:
        return None
    ordered = sorted(curves, key=key)
    holds, parts = True, []
    for metric, radius, direction, strict in checks:
        values = _values(ordered, metric, radius)
        holds &= _ordered(values, direction, strict)
        shown = " / ".join(f"{100 * v:.1f}" for v in values)
        parts.append(f"{metric} at R = {radius:g}: {shown}")
    keys = " / ".join(f"{key(c):g}" for c in ordered)
    return Finding(row, claim, holds, f"{label} = {keys}; " + "; ".join(parts))


def _dominates(row: str, claim: str, better: list[Curve], worse: list[Curve], radii: Sequence[float],
               metrics: Sequence[str]) -> Finding | None:
    if len(better) != 1 or len(worse) != 1:
        return None
    pairs = [(m, r, better[0].at(m, r), worse[0].at(m, r)) for m in metrics for r in radii]
    holds = all(a >= b - 1e-12 for _, _, a, b in pairs)
    shown = "; ".join(f"{m} at R = {r:g}: {100 * a:.1f} vs {100 * b:.1f}" for m, r, a, b in pairs if m == "f1")
    return Finding(row, claim, holds, shown)


def paper_findings(reports: Mapping[str, Sequence[Curve]], radii: Sequence[float] = (0.0, 0.25, 0.5, 1.0)
                   ) -> list[Finding]:
    """The paper's findings that ``reports`` can check, in Figure 1's order. ``reports`` maps the demo's report
    names to their curves: ``report`` (MultiGuard, first terms only, Jia et al. at k' = 1, k = 3),
    ``report-k-prime``, ``report-k``, ``report-sigma`` (one MultiGuard curve per sigma), ``report-n``,
    ``report-alpha``; a report left out, or holding other curves, gives no finding. ``radii`` are where the
    comparisons with Jia et al. and with the first terms are made (every radius, every metric)."""
    low, high = FINDING_RADII
    found: list[Finding | None] = []
    if "report" in reports:
        main = reports["report"]
        mg = _pick(main, method="multiguard")
        found.append(_dominates("MultiGuard vs Jia et al.", "MultiGuard certifies at least Jia et al.'s "
                                "precision, recall and F1 at every radius", mg, _pick(main, method="jia"), radii,
                                ("precision", "recall", "f1")))
        found.append(_dominates("second terms", "the second terms of Equation 8 certify at least the first "
                                "terms alone", mg, _pick(main, method="multiguard-first-terms"), radii,
                                ("precision", "recall", "f1")))
    if "report-k-prime" in reports:
        curves = _pick(reports["report-k-prime"], method="multiguard")
        found.append(_trend("Impact of k'", "a larger k' certifies more without attacks (R = 0)", curves,
                            lambda c: c.k_prime, "k'", [("f1", low, 1, True)]))
        found.append(_trend("Impact of k'", "a larger k' certifies less as R grows (R = 1)", curves,
                            lambda c: c.k_prime, "k'", [("f1", high, -1, True)]))
    if "report-k" in reports:
        found.append(_trend("Impact of k", "a larger k certifies a smaller precision and a larger recall without "
                            "attacks", _pick(reports["report-k"], method="multiguard"), lambda c: c.k, "k",
                            [("precision", low, -1, True), ("recall", low, 1, True)]))
    if "report-sigma" in reports:
        curves = _pick(reports["report-sigma"], method="multiguard")
        found.append(_trend("Impact of sigma", "a larger sigma certifies less without attacks (R = 0)", curves,
                            lambda c: c.sigma, "sigma", [("f1", low, -1, True)]))
        found.append(_trend("Impact of sigma", "a larger sigma certifies more as R grows (R = 1)", curves,
                            lambda c: c.sigma, "sigma", [("f1", high, 1, True)]))
    for name, label, attribute in (("report-n", "n", "n"), ("report-alpha", "alpha", "alpha")):
        if name in reports:
            found.append(_trend(f"Impact of {label}", f"a larger {label} certifies at least as much (at R = 0.25 "
                                "and 0.5)", _pick(reports[name], method="multiguard"),
                                lambda c, a=attribute: getattr(c, a), label,
                                [("f1", 0.25, 1, False), ("f1", 0.5, 1, False)]))
    return [f for f in found if f is not None]


def findings_markdown(findings: Sequence[Finding]) -> str:
    """The findings as a markdown table: row, the paper's finding, the values here, whether it holds."""
    lines = ["| Figure 1 row | the paper's finding | here (%) | holds |", "|---|---|---|---|"]
    lines += [f"| {f.row} | {f.claim} | {f.evidence} | {'yes' if f.holds else '**no**'} |" for f in findings]
    return "\n".join(lines)


def findings_summary(findings: Sequence[Finding]) -> str:
    """How many of ``findings`` hold (``"8 of 9 hold on these numbers."``), then :func:`findings_markdown`."""
    held = sum(f.holds for f in findings)
    return f"{held} of {len(findings)} hold on these numbers.\n\n{findings_markdown(findings)}"
