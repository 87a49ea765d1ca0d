"""The tuned bounds: the mixture of likelihood ratios tuned to the sample sizes up to the last look, its confidence
sequence's ends against a dense scan of the wealth, and its calibration under the real stopping rule of
``bounds="tuned"`` and ``"tuned-cp"`` with the harness of ``test_betting.py`` (the exact recursion over label 0's
count and 100,000 / 20,000 simulated runs; "the bound fails" read off the wealth computed with the alternatives
solved by plain bisection, :func:`multiguard.certificates.tuned.tuned_log_wealth`), and a mutant at twice the
level that the acceptance range catches.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from test_betting import (
    CAL_ALPHA,
    CAL_N,
    CP_TRIALS,
    MASKS,
    P0,
    exact_failure_probability,
    failure_fraction,
    setup,
    within,
)

from multiguard.certificates import betting, tuned
from multiguard.certificates import sequential as seq
from multiguard.certificates.stop_rule import StopRule


def test_tuning_sizes_and_weights() -> None:
    assert tuned.tuning_sizes(10_000).tolist() == [10_000, 5000, 2500, 1250, 625, 312.5, 156.25]
    assert tuned.tuning_sizes(1000).tolist() == [1000, 500, 250, 125]
    assert tuned.tuning_sizes(150).tolist() == [150] and tuned.tuning_sizes(60).tolist() == [60]
    weights = tuned.tuning_weights(4)
    assert weights[0] == tuned.HEAD_WEIGHT and weights.sum() == pytest.approx(1.0) and len(set(weights[1:])) == 1
    assert tuned.tuning_weights(1).tolist() == [1.0]
    with pytest.raises(ValueError, match="head"):
        tuned.tuning_weights(3, head=0.0)


@pytest.mark.parametrize(("n", "level", "last"), [(10_000, 1e-4, 10_000), (2500, 1e-4, 10_000), (100, 1e-4, 10_000),
                                                  (1000, 0.15, 2000), (37, 1e-3, 1000)])
def test_the_ends_are_never_above_a_kept_value_of_a_dense_scan_and_exact_at_the_edges(
    n: int, level: float, last: int
) -> None:
    counts = np.unique(np.array([0, 1, 2, n // 100, n // 10, n // 2, n - n // 10, n - 2, n - 1, n]).clip(0, n))
    lower, upper = tuned.tuned_confidence_sequence(counts, n, level, last)
    threshold = np.log(1 / level)
    assert lower[counts == 0].tolist() == [0.0] and upper[counts == n].tolist() == [1.0]  # exact edges
    np.testing.assert_array_equal(upper, 1 - tuned.tuned_confidence_sequence(n - counts, n, level, last)[0])
    for x, low in zip(counts, lower, strict=True):
        if x == 0:
            continue
        scan = np.linspace(0.0, x / n, 20_001)[1:]
        wealth = tuned.tuned_log_wealth(scan, x, n, level, last)
        kept = wealth < threshold
        # the wealth is non-increasing in m below x / n (the module's proof), and x / n itself is kept
        assert ((wealth[1:] <= wealth[:-1] + 1e-9) | np.isposinf(wealth[:-1])).all()
        assert kept[-1]
        first_kept = scan[np.argmax(kept)]
        assert low <= first_kept  # never above a value the sequence keeps
        assert low >= first_kept - (scan[1] - scan[0]) - 1e-12  # and not far below: within one scan step
        if low > 0:  # the end returned is itself refuted
            assert tuned.tuned_log_wealth(np.array([low]), x, n, level, last)[0] >= threshold - 1e-9


def test_tuned_ends_are_between_clopper_pearson_and_the_beta_binomial_mixture_at_the_last_look() -> None:
    n, level = 10_000, 1e-4
    counts = np.array([100, 1000, 5000, 9000, 9900, 9990])
    lower, _ = tuned.tuned_confidence_sequence(counts, n, level, n)
    kt, _ = betting.betting_confidence_sequence(counts, n, level)
    cp = stats.beta.ppf(level, counts, n - counts + 1)
    width, kt_width, cp_width = counts / n - lower, counts / n - kt, counts / n - cp
    assert (width > cp_width).all()  # no sequence beats the fixed-n bound at its n
    assert (width < kt_width).all() and (width / cp_width < 1.21).all()  # KT: 1.34-1.53x here
    assert (kt_width / cp_width > 1.33).all()


def test_tuned_label_bounds_split_alpha_over_the_bounds_read_and_read_the_last_look() -> None:
    counts = np.array([[60, 30, 10], [0, 100, 0]])
    alpha, looks = 0.01, np.array([100, 200, 1000])
    lower, upper = seq.anytime_label_probability_bounds(counts, 100, alpha, looks, bounds="tuned")
    expect = tuned.tuned_confidence_sequence(counts, 100, alpha / 3, 1000)
    np.testing.assert_array_equal(lower, expect[0])
    np.testing.assert_array_equal(upper, expect[1])
    read = seq.anytime_label_probability_bounds(counts, 100, alpha, looks, bounds_read=np.array([1, 2]),
                                                bounds="tuned")
    np.testing.assert_array_equal(read[0][1], tuned.tuned_confidence_sequence(counts[1], 100, alpha / 2, 1000)[0])
    # tuned-cp: the sequence at (1 - w) alpha / B before the last look; the better end with Clopper-Pearson at it
    share = 0.75
    early = seq.anytime_label_probability_bounds(counts, 100, alpha, looks, share, bounds="tuned-cp")
    np.testing.assert_array_equal(early[0], tuned.tuned_confidence_sequence(counts, 100, (1 - share) * alpha / 3,
                                                                            1000)[0])
    at_last = counts * 10
    last_lower, last_upper = seq.anytime_label_probability_bounds(at_last, 1000, alpha, looks, share,
                                                                  bounds="tuned-cp")
    cs_lower, cs_upper = tuned.tuned_confidence_sequence(at_last, 1000, (1 - share) * alpha / 3, 1000)
    cp_lower = np.where(at_last > 0, stats.beta.ppf(share * alpha / 3, np.maximum(at_last, 1), 1001 - at_last), 0.0)
    np.testing.assert_allclose(last_lower, np.maximum(cs_lower, cp_lower), rtol=1e-12)
    assert (last_upper <= cs_upper).all()
    with pytest.raises(ValueError, match="spending must be a share in"):
        seq.anytime_label_probability_bounds(counts, 100, alpha, looks, [0.5, 0.5, 0.0], bounds="tuned-cp")
    with pytest.raises(ValueError, match="n must be at most the last look"):
        tuned.tuned_cp_label_probability_bounds(counts, 2000, alpha, 1000, share)


def test_the_bounds_registry_is_what_the_stop_rule_the_command_line_and_the_report_read() -> None:
    from multiguard.evaluation.tables import _bounds_text

    assert seq.BOUNDS.names() == ("union", "betting", "betting-cp", "tuned", "tuned-cp")
    assert seq.bounds_family("union") == seq.BoundsRecord(spending="looks", anytime=False)
    assert seq.bounds_family("tuned-cp").spending == "share" and seq.bounds_family("tuned").last_look
    rule = {"radius": 0.25, "k": 3, "k_prime": 1, "alpha": 0.001}
    assert StopRule(**rule, bounds="tuned").procedure()["bounds"] == "tuned"
    with pytest.raises(ValueError, match="bounds"):
        StopRule(**rule, bounds="stitched")

    class Parsed:
        schedule = None
        bounds = "tuned-cp"

    assert StopRule.procedure_from(Parsed())["schedule"] == "every-block"  # valid at every n: every block
    assert _bounds_text({"bounds": "tuned-cp", "spending": 0.75}) == (
        "tuned-cp bounds: mixture confidence sequences tuned to the sizes up to the last look, and at the last "
        "look Clopper-Pearson at 0.75 of alpha")
    assert _bounds_text({"bounds": "union", "spending": None}) == "alpha spent in equal shares over the looks"
    # a family registered later is a choice of the rule at once (the door, not a special case)
    seq.BOUNDS.register("test-union-again", seq.BOUNDS.get("union"), help="union, again",
                        record=seq.BoundsRecord(spending="looks", anytime=False))
    try:
        assert StopRule(**rule, bounds="test-union-again").bounds == "test-union-again"
        counts = np.array([[60, 30, 10]])
        np.testing.assert_array_equal(
            seq.anytime_label_probability_bounds(counts, 100, 0.01, np.array([100, 200]), 0.75,
                                                 bounds="test-union-again")[0],
            seq.anytime_label_probability_bounds(counts, 100, 0.01, np.array([100, 200]), 0.75)[0])
    finally:
        seq.BOUNDS.unregister("test-union-again")


# ----------------------------------------------------------------------------------------- calibration


def tuned_refutes(x: np.ndarray, n: int, level: float) -> np.ndarray:
    """Whether the tuned mixture's wealth against p_0 (tuned to the calibration's last look) passed 1 / level."""
    return tuned.tuned_log_wealth(P0, x, n, level, CAL_N) >= np.log(1 / level)


@pytest.mark.parametrize(("bounds", "share"), [("tuned", None), ("tuned-cp", 0.5)])
def test_tuned_bounds_at_the_stop_fail_at_their_exact_rate_within_alpha_and_a_doubled_level_does_not(
    bounds: str, share: float | None
) -> None:
    looks, options, nested = setup(1 - 1e-9, "margin", bounds=bounds)
    nested, masks = nested[:CP_TRIALS], MASKS[:CP_TRIALS]
    extra = {} if share is None else {"spending": share}
    exact = exact_failure_probability(looks, CAL_ALPHA, options, share, refutes=tuned_refutes)
    result = seq.sequential_certification(nested, masks, alpha=CAL_ALPHA, **options, **extra)
    fails = failure_fraction(result.lower, result.upper)
    low, high = within(exact, CP_TRIALS)
    doubled = seq.sequential_certification(nested, masks, alpha=2 * CAL_ALPHA, **options, **extra)
    mutant = failure_fraction(doubled.lower, doubled.upper)
    print(f"\n[calibration] {bounds}, w = {share}: exact failure probability {exact:.4f} (alpha/2 = "
          f"{CAL_ALPHA / 2}), simulated {fails:.4f} (accepted {low:.4f}-{high:.4f}), mean samples "
          f"{result.samples.mean():.0f}, at the last look {(result.samples == looks[-1]).mean():.3f}; mutant at "
          f"2 alpha {mutant:.4f}")
    assert exact <= CAL_ALPHA / 2  # the guarantee, exactly
    assert low <= fails <= high  # the procedure is what the recursion says
    assert np.unique(result.samples).size > 5
    assert mutant > high  # twice the level: outside the acceptance range
