"""The paper's findings checked on certified curves (multiguard.evaluation.findings): each holds exactly when the
curves move the way the paper says, a reversed trend is caught, and the demo's findings.md reads its own reports."""

from __future__ import annotations

import numpy as np

from multiguard.evaluation.curves import Curve
from multiguard.evaluation.findings import findings_markdown, paper_findings

RADII = np.array([0.0, 0.25, 0.5, 1.0])


def _curve(f1: list[float], *, method: str = "multiguard", k: int = 3, k_prime: int = 1, sigma: float = 0.5,
           n: int = 1000, alpha: float = 0.001, precision: list[float] | None = None,
           recall: list[float] | None = None) -> Curve:
    values = np.array(f1)
    return Curve(run="r", method=method, k=k, k_prime=k_prime, alpha=alpha, sigma=sigma, n=n, radius=RADII,
                 precision=values if precision is None else np.array(precision),
                 recall=values if recall is None else np.array(recall), f1=values, num_inputs=10)


def _holds(findings, row: str) -> list[bool]:
    return [f.holds for f in findings if f.row == row]


def test_the_sigma_finding_holds_for_the_papers_trend_and_fails_for_the_reversed_one() -> None:
    papers = [_curve([0.8, 0.5, 0.2, 0.0], sigma=0.25), _curve([0.7, 0.55, 0.35, 0.1], sigma=0.5),
              _curve([0.6, 0.5, 0.4, 0.2], sigma=1.0)]
    assert _holds(paper_findings({"report-sigma": papers}), "Impact of sigma") == [True, True]
    swapped = [_curve(c.f1.tolist(), sigma=s) for c, s in zip(papers, (1.0, 0.5, 0.25), strict=True)]  # the control
    assert _holds(paper_findings({"report-sigma": swapped}), "Impact of sigma") == [False, False]
    # the order of the curves in the report does not matter: they are sorted by sigma
    assert _holds(paper_findings({"report-sigma": papers[::-1]}), "Impact of sigma") == [True, True]
    # a tie at R = 0 is not "less": the finding is strict there
    tied = [_curve([0.7, 0.5, 0.2, 0.0], sigma=0.25), _curve([0.7, 0.55, 0.35, 0.1], sigma=0.5)]
    assert _holds(paper_findings({"report-sigma": tied}), "Impact of sigma") == [False, True]


def test_the_comparison_needs_every_metric_at_every_radius() -> None:
    mg, jia = _curve([0.6, 0.5, 0.3, 0.1]), _curve([0.6, 0.4, 0.3, 0.05], method="jia")
    first = _curve([0.6, 0.5, 0.3, 0.1], method="multiguard-first-terms")
    found = paper_findings({"report": [mg, jia, first]})
    assert [f.row for f in found] == ["MultiGuard vs Jia et al.", "second terms"] and all(f.holds for f in found)
    assert "f1 at R = 0.25: 50.0 vs 40.0" in found[0].evidence
    worse_recall = _curve([0.6, 0.5, 0.3, 0.1], recall=[0.6, 0.5, 0.29, 0.1])  # one value below Jia's
    assert not paper_findings({"report": [worse_recall, jia]})[0].holds


def test_k_n_and_alpha_findings_and_what_is_left_out() -> None:
    k_curves = [_curve([0.5] * 4, k=k, precision=[p] * 4, recall=[r] * 4)
                for k, p, r in ((1, 0.9, 0.4), (2, 0.7, 0.6), (3, 0.6, 0.7))]
    n_curves = [_curve([0.5, 0.3, 0.2, 0.0], n=100), _curve([0.5, 0.3, 0.25, 0.0], n=1000)]
    alpha_curves = [_curve([0.5, 0.3, 0.2, 0.0], alpha=0.01), _curve([0.5, 0.31, 0.2, 0.0], alpha=0.0001)]
    found = paper_findings({"report-k": k_curves, "report-n": n_curves, "report-alpha": alpha_curves})
    assert [(f.row, f.holds) for f in found] == [("Impact of k", True), ("Impact of n", True),
                                                 ("Impact of alpha", False)]  # a smaller alpha certified more
    assert paper_findings({"report-sigma": [_curve([0.5] * 4)]}) == []  # one curve: nothing to compare
    table = findings_markdown(found)
    assert table.count("\n") == 4 and "| Impact of alpha |" in table and "**no**" in table
