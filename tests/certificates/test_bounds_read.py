"""How many bounds each certificate reads, and the Jia et al. baseline at its stated confidence.

MultiGuard's certificate reads c one-sided bounds (the lower bounds of L, the upper bounds outside L), so bounds
at alpha / c each hold together with probability 1 - alpha. Jia et al.'s per-label baseline also reads the upper
bounds of the labels of L (each is the competitor of another label of L): c + |L| bounds, so at alpha / c each
its certificates hold only at 1 - alpha (c + |L|) / c. The tests check both statements on the certificates
themselves and by simulation.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import jia as _jia
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import topk as _topk


def test_the_number_of_bounds_each_certificate_reads() -> None:
    labels = np.array([[0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 1]], dtype=bool)
    assert _bounds.multiguard_bounds_read(labels).tolist() == [5, 5, 5, 5]
    assert _bounds.jia_bounds_read(labels).tolist() == [5, 5, 7, 9]
    assert _bounds.jia_bounds_read(labels[3]).tolist() == [9]


def test_bounds_reading_b_are_clopper_pearson_at_alpha_over_b() -> None:
    counts = np.array([[0, 370, 630], [1000, 0, 0]])
    lower, upper = _bounds.label_probability_bounds(counts, 1000, 0.01, np.array([3, 5]))
    for row, b in enumerate((3, 5)):
        for label, count in enumerate(counts[row]):
            expect_low = 0.0 if count == 0 else stats.beta.ppf(0.01 / b, count, 1000 - count + 1)
            expect_up = 1.0 if count == 1000 else stats.beta.ppf(1 - 0.01 / b, count + 1, 1000 - count)
            assert lower[row, label] == pytest.approx(expect_low, rel=1e-12, abs=1e-300)
            assert upper[row, label] == pytest.approx(expect_up, rel=1e-12)
    same = _bounds.label_probability_bounds(counts, 1000, 0.01, 3)  # b = c: the usual bounds
    np.testing.assert_array_equal(same[0], _bounds.label_probability_bounds(counts, 1000, 0.01)[0])
    np.testing.assert_array_equal(same[1], _bounds.label_probability_bounds(counts, 1000, 0.01)[1])
    with pytest.raises(ValueError, match="bounds_read must be"):
        _bounds.label_probability_bounds(counts, 1000, 0.01, np.array([3, 0]))


def test_multiguard_reads_c_bounds_and_jia_reads_the_upper_bounds_of_l_too() -> None:
    rng = np.random.default_rng(4)
    num, c = 200, 6
    lower = rng.uniform(0.0, 0.6, size=(num, c))
    upper = np.minimum(lower + rng.uniform(0.0, 0.4, size=(num, c)), 1.0)
    labels = rng.uniform(size=(num, c)) < 0.5
    # Bounds MultiGuard does not read: the upper bounds of L and the lower bounds outside L.
    other_upper = np.where(labels, rng.uniform(size=(num, c)), upper)
    other_lower = np.where(labels, lower, rng.uniform(size=(num, c)) * lower)
    for second_terms in (True, False):
        options = dict(k=3, k_prime=1, sigma=0.5, second_terms=second_terms)
        np.testing.assert_array_equal(_topk.certified_radii(lower, upper, labels, **options),
                                      _topk.certified_radii(other_lower, other_upper, labels, **options))
    jia = _jia.jia_certified_radii(lower, upper, labels, k=3, sigma=0.5)
    jia_other = _jia.jia_certified_radii(lower, other_upper, labels, k=3, sigma=0.5)
    assert (jia != jia_other).any()  # Jia's radii move with the upper bounds of L: it reads them
    np.testing.assert_array_equal(jia, _jia.jia_certified_radii(other_lower, upper, labels, k=3, sigma=0.5))


def test_jia_at_alpha_over_c_plus_l_holds_at_1_minus_alpha_and_the_papers_accounting_does_not() -> None:
    """Known label probabilities (a multinomial, k' = 1), L = three of four labels: Jia's certificates read
    seven bounds. Over 20,000 simulated count vectors, the fraction in which some bound it reads is wrong stays
    within alpha with each bound at alpha / 7, and exceeds it with each at alpha / 4 (the paper's accounting)."""
    p = np.array([0.4, 0.3, 0.2, 0.1])
    labels = np.array([True, True, True, False])
    alpha, n, trials = 0.2, 1000, 20_000
    counts = np.random.default_rng(7).multinomial(n, p, size=trials)
    masks = np.broadcast_to(labels, counts.shape)
    read = _bounds.jia_bounds_read(masks)
    assert set(read.tolist()) == {7}

    def wrong(lower: np.ndarray, upper: np.ndarray) -> float:  # the bounds Jia reads: lower of L, every upper
        return float(((lower > p) & labels | (upper < p)).any(axis=1).mean())

    stated = wrong(*_bounds.label_probability_bounds(counts, n, alpha, read))
    paper = wrong(*_bounds.label_probability_bounds(counts, n, alpha))
    limit = stats.binom.ppf(1 - 1e-6, trials, alpha) / trials
    print(f"\n[jia] bounds read wrong: at alpha/(c+|L|) {stated:.4f}, at alpha/c (the paper) {paper:.4f}; "
          f"allowed {limit:.4f} (alpha = {alpha})")
    assert stated <= limit
    assert paper > limit
    # MultiGuard's c bounds at alpha / c: within alpha.
    lower, upper = _bounds.label_probability_bounds(counts, n, alpha)
    assert float(((lower > p) & labels | (upper < p) & ~labels).any(axis=1).mean()) <= limit


def test_a_report_computes_jia_at_c_plus_l_bounds_and_jia_paper_at_c(tmp_path) -> None:  # noqa: ANN001
    """Through the method registry: ``jia`` reads its bounds at alpha / (c + |L|), ``jia-paper`` at alpha / c;
    ``jia-paper`` is computed only when asked for."""
    from test_sequential import certify_vectors

    from multiguard.evaluation import report as _report
    from multiguard.runs import folder as _folder

    certify_vectors(tmp_path / "run")
    run = _folder.load_run(tmp_path / "run")
    assert set(run.labels.sum(axis=1).tolist()) == {2}  # |L| = 2 everywhere: B = c + 2 for Jia
    result = _report.make_report([run], tmp_path / "rep", k=[2], methods=["jia", "jia-paper"])
    grid = result.curves[0].radius
    counts = run.counts_for(1)
    expected = {}
    for method, read in (("jia", _bounds.jia_bounds_read(run.labels)), ("jia-paper", None)):
        lower, upper = _bounds.label_probability_bounds(counts, run.n, 0.001, read)
        sizes = _jia.jia_intersection_size_from_radii(_jia.jia_certified_radii(lower, upper, run.labels, k=2,
                                                                               sigma=0.25), grid)
        expected[method] = _metrics.certified_metrics(sizes, run.labels, 2).f1
    for curve in result.curves:
        np.testing.assert_allclose(curve.f1, expected[curve.method])
    assert {curve.method for curve in result.curves} == {"jia", "jia-paper"}
    assert (expected["jia"] <= expected["jia-paper"]).all()
    default = _report.make_report([run], tmp_path / "rep2", k=[2])
    assert "jia-paper" not in {curve.method for curve in default.curves} and "jia" in {c.method for c in default.curves}
