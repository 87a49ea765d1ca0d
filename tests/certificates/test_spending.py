"""Spending alpha over the looks, the fine schedule, the margin futility rule, and their calibration.

The calibration tests are sharp: with two labels and k' = 1 the two bounds a certificate reads are one event
(``lower_0 = 1 - upper_1``), and with the target radius at the radius the true probabilities certify, the rule
stops an input by success exactly when that bound fails. The probability that the bounds read at the stop
fail is then computed exactly (a recursion over label 0's count, look by look, with the rule's decisions and
Clopper-Pearson thresholds from SciPy at the stated levels), and 10,000 simulated runs of the real procedure
must match it within a binomial test. So a procedure whose failure rate is 1.2x too large fails the test,
where a comparison against alpha alone would let 3x through; the mutants below show it.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.common.seeds import NOISE_BLOCK

# ---------------------------------------------------------------------------------------- schedule, weights


def test_the_fine_schedule_looks_about_20_percent_apart_in_whole_noise_blocks() -> None:
    assert seq.fine_sample_size_schedule(1000).tolist() == [100, 200, 300, 400, 500, 600, 800, 1000]
    assert seq.fine_sample_size_schedule(10_000).tolist() == [
        100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, 2500, 3000, 4000, 5000, 6000, 8000, 10_000
    ]
    assert seq.fine_sample_size_schedule(2300).tolist()[-3:] == [1500, 2000, 2300]  # cut at n
    assert seq.fine_sample_size_schedule(100).tolist() == [100]
    assert seq.fine_sample_size_schedule(60).tolist() == [60]
    for n in (1000, 7300, 50_000):
        looks = seq.fine_sample_size_schedule(n)
        assert (looks[:-1] % NOISE_BLOCK == 0).all() and looks[-1] == n
        assert (looks[1:] / looks[:-1]).max() <= 2.0  # never a gap larger than 100 -> 200
    assert seq.look_schedule(1000, "1-2-5").tolist() == [100, 200, 500, 1000]
    with pytest.raises(ValueError, match="schedule must be one of"):
        seq.look_schedule(1000, "dense")


def test_spending_weights_put_the_stated_share_last_and_never_spend_more_than_alpha() -> None:
    weights = seq.spending_weights(5, 0.75)
    np.testing.assert_allclose(weights, [0.0625, 0.0625, 0.0625, 0.0625, 0.75])
    assert weights.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(seq.spending_weights(4, None), [0.25] * 4)
    assert seq.spending_weights(1, 0.3).tolist() == [1.0]
    looks = np.array([100, 200, 300])
    with pytest.raises(ValueError, match="spending weights must sum to at most 1"):
        seq.anytime_label_probability_bounds([[10, 90]], 100, 0.01, looks, [0.5, 0.3, 0.3])
    with pytest.raises(ValueError, match="spending must be None, a share"):
        seq.anytime_label_probability_bounds([[10, 90]], 100, 0.01, looks, [0.5, 0.5])
    with pytest.raises(ValueError, match="spending must be"):
        seq.spending_weights(3, 0.0)
    with pytest.raises(ValueError, match="spending weights must sum to at most 1"):
        seq.sequential_certification(np.array([[[50, 50], [100, 100], [150, 150]]]),
                                                [[True, False]], looks=looks, alpha=0.01, k=1, k_prime=1,
                                                sigma=0.5, radius=0.1, spending=[0.4, 0.4, 0.4])


def test_spent_bounds_are_clopper_pearson_at_alpha_times_the_looks_share_over_c() -> None:
    looks = np.array([100, 200, 500])
    weights = np.array([0.1, 0.2, 0.7])
    counts = np.array([[0, 37, 63], [200, 0, 0], [130, 250, 120]])
    n = np.array([100, 200, 500])
    alpha = 0.01
    lower, upper = seq.anytime_label_probability_bounds(counts, n, alpha, looks, weights)
    for row in range(3):
        level = alpha * weights[row] / 3
        for label, count in enumerate(counts[row]):
            expect_low = 0.0 if count == 0 else stats.beta.ppf(level, count, n[row] - count + 1)
            expect_up = 1.0 if count == n[row] else stats.beta.ppf(1 - level, count + 1, n[row] - count)
            assert lower[row, label] == pytest.approx(expect_low, rel=1e-12, abs=1e-300)
            assert upper[row, label] == pytest.approx(expect_up, rel=1e-12)
    # No spending given: equal shares, alpha / (c J) at every look, as runs written before spending existed.
    equal = seq.anytime_label_probability_bounds(counts, n, alpha, looks)
    level = alpha / (3 * 3)
    assert equal[0][2, 1] == stats.beta.ppf(level, 250, 251) and equal[1][1, 1] == stats.beta.ppf(1 - level, 1, 200)


def simulate(rng: np.random.Generator, p: np.ndarray, looks: np.ndarray, trials: int | None = None) -> np.ndarray:
    """Cumulative multinomial (k' = 1) counts at every look: ``(J, c)``, or ``(trials, J, c)``."""
    increments = np.diff(np.concatenate([[0], looks]))
    draws = np.stack([rng.multinomial(m, p, size=trials) for m in increments], axis=-2)
    return np.cumsum(draws, axis=-2)


# ------------------------------------------------------------------------------------------------ futility


def test_the_margin_rule_credits_the_clopper_pearson_bound_at_level_gamma() -> None:
    counts = np.array([[30.0, 60.0, 10.0]])
    rule = seq.FUTILITY_RULES.get("margin")
    assert seq.FUTILITY_RULES.record("margin").parameters == ("margin",)
    gain_in, gain_out = rule(counts, np.array([[100]]), None, None, np.array([[400]]), margin=0.2)
    upper_0 = stats.beta.ppf(0.8, 31, 70)  # one-sided Clopper-Pearson upper bound at level 0.2
    lower_1, lower_2 = stats.beta.ppf(0.2, 60, 41), stats.beta.ppf(0.2, 10, 91)
    assert gain_in[0, 0] == np.ceil(400 * upper_0)
    np.testing.assert_array_equal(gain_out[0, 1:], [np.floor(400 * lower_1), np.floor(400 * lower_2)])
    assert 0.30 < upper_0 < 0.36 and 0.55 < lower_1 < 0.6


def test_a_larger_margin_stops_sooner_and_small_margins_approach_plausible() -> None:
    rng = np.random.default_rng(21)
    c, trials = 4, 1500
    looks = seq.fine_sample_size_schedule(10_000)
    weights = rng.dirichlet(np.full(c, 0.5), size=trials)
    nested = np.stack([simulate(rng, w, looks) for w in weights])
    labels = np.zeros((trials, c), dtype=bool)
    labels[np.arange(trials), np.argmax(weights, axis=1)] = True
    shares = seq.spending_weights(looks.size, 0.75)
    options = dict(looks=looks, alpha=0.001, k=1, k_prime=1, sigma=0.5, radius=0.25, spending=shares)
    means = [seq.sequential_certification(nested, labels, futility="margin", margin=gamma,
                                                     **options).samples.mean() for gamma in (0.01, 0.2, 0.5)]
    plausible = seq.sequential_certification(nested, labels, futility="plausible", **options)
    projected = seq.sequential_certification(nested, labels, futility="projected", **options)
    assert means[0] > means[1] > means[2]
    assert plausible.samples.mean() > means[0]  # plausible credits the bound at alpha w / c, below 0.01
    assert abs(means[2] - projected.samples.mean()) < 0.1 * projected.samples.mean()  # gamma = 1/2: about projected


# ----------------------------------------------------------------------------------------- calibration

P0 = 0.7  # label 0's probability (two labels, k' = 1, L = {0}, k = 1)
TRIALS = 10_000
CAL_ALPHA = 0.3  # large, so that failures are frequent enough to measure in 10,000 runs
CAL_N = 2000


def true_radius() -> float:
    p = np.array([P0, 1 - P0])
    return float(_topk.certified_radii(p, p, [True, False], k=1, k_prime=1, sigma=0.5)[0])


def levels_of(looks: np.ndarray, weights: np.ndarray | None, alpha: float) -> np.ndarray:
    shares = np.full(looks.size, 1.0 / looks.size) if weights is None else weights
    return alpha * shares / 2  # c = 2


def exact_failure_probability(looks: np.ndarray, weights: np.ndarray | None, decide) -> float:  # noqa: ANN001
    """P(a bound read at the stop fails) for two labels, k' = 1, L = {0}: label 0's count after each look is
    a Markov chain with Binomial(m, P0) increments; ``decide(counts, n)`` is the stopping rule's verdict for
    every count at look n. Thresholds: Clopper-Pearson from SciPy at the stated level of each look."""
    levels = levels_of(looks, weights, CAL_ALPHA)
    alive = np.ones(1)  # probability of each count of label 0 among the runs still sampling
    done, failure = 0, 0.0
    for j, n in enumerate(looks.tolist()):
        alive = np.convolve(alive, stats.binom.pmf(np.arange(n - done + 1), n - done, P0))
        done = n
        x = np.arange(n + 1)
        stop = decide(np.stack([x, n - x], axis=1), n)
        lower_0 = np.where(x > 0, stats.beta.ppf(levels[j], np.maximum(x, 1), n - x + 1), 0.0)
        upper_1 = np.where(x > 0, stats.beta.ppf(1 - levels[j], n - x + 1, np.maximum(x, 1)), 1.0)
        fails = (lower_0 > P0) | (upper_1 < 1 - P0)
        failure += alive[stop & fails].sum()
        alive = np.where(stop, 0.0, alive)
    return float(failure)


def failure_fraction(lower: np.ndarray, upper: np.ndarray) -> float:
    return float(((lower[:, 0] > P0) | (upper[:, 1] < 1 - P0)).mean())


def within(probability: float) -> tuple[float, float]:
    """The two-sided binomial acceptance range of a failure fraction over TRIALS runs (1e-6 each side)."""
    return tuple(stats.binom.ppf([1e-6, 1 - 1e-6], TRIALS, probability) / TRIALS)


# The rules as they are now (fine schedule, 3/4 of alpha at the last look) and as old runs used them.
RULES = {
    "margin (default)": ("fine", 0.75, "margin"),
    "remaining": ("fine", 0.75, "remaining"),
    "plausible": ("fine", 0.75, "plausible"),
    "projected": ("fine", 0.75, "projected"),
    "remaining, 1-2-5, equal shares": ("1-2-5", None, "remaining"),
    "plausible, 1-2-5, equal shares": ("1-2-5", None, "plausible"),
    "projected, 1-2-5, equal shares": ("1-2-5", None, "projected"),
}


def calibration_setup(rule: str, radius_factor: float) -> tuple[np.ndarray, np.ndarray | None, dict, np.ndarray]:
    schedule, share, futility = RULES[rule]
    looks = seq.look_schedule(CAL_N, schedule)
    weights = None if share is None else seq.spending_weights(looks.size, share)
    options = dict(looks=looks, k=1, k_prime=1, sigma=0.5, radius=true_radius() * radius_factor, futility=futility)
    rng = np.random.default_rng(2026)
    increments = np.diff(np.concatenate([[0], looks]))
    first = np.cumsum(rng.binomial(increments[None, :], P0, size=(TRIALS, looks.size)), axis=1)
    nested = np.stack([first, looks[None, :] - first], axis=2)
    return looks, weights, options, nested


MASKS = np.broadcast_to(np.array([True, False]), (TRIALS, 2))


@pytest.mark.parametrize(("rule", "radius_factor"), [(rule, 1 - 1e-9) for rule in RULES] + [("margin (default)", 0.5)])
def test_the_failure_rate_at_the_stop_is_its_exact_value_and_within_alpha(rule: str, radius_factor: float) -> None:
    looks, weights, options, nested = calibration_setup(rule, radius_factor)

    def decide(counts: np.ndarray, n: int) -> np.ndarray:
        return seq.sequential_stopping_rule(counts, n, np.broadcast_to([True, False], counts.shape), alpha=CAL_ALPHA,
                                            spending=weights, **options).stop

    exact = exact_failure_probability(looks, weights, decide)
    result = seq.sequential_certification(nested, MASKS, alpha=CAL_ALPHA, spending=weights, **options)
    fails = failure_fraction(result.lower, result.upper)
    low, high = within(exact)
    print(f"\n[calibration] {rule}, R = {radius_factor:g} x the true radius: exact failure probability {exact:.4f} "
          f"(union bound alpha/2 = {CAL_ALPHA / 2}), simulated {fails:.4f} (accepted {low:.4f}-{high:.4f}), "
          f"mean samples {result.samples.mean():.0f}")
    assert exact <= CAL_ALPHA / 2  # each look's one bound at alpha w_j / 2, summed: the guarantee, exactly
    assert low <= fails <= high  # the procedure is what the recursion says; 1.2x more would fail here
    assert np.unique(result.samples).size > 3  # the stopping is real


def test_mutants_fail_calibration() -> None:
    """Three plausible bugs, each caught: fixed-n bounds at the stop, half the look penalty, weights above 1."""
    rule = "margin (default)"
    caught = {}
    for radius_factor in (1 - 1e-9, 0.5):
        looks, weights, options, nested = calibration_setup(rule, radius_factor)

        def decide(counts: np.ndarray, n: int, options: dict = options, weights: np.ndarray = weights) -> np.ndarray:
            return seq.sequential_stopping_rule(counts, n, np.broadcast_to([True, False], counts.shape),
                                                alpha=CAL_ALPHA, spending=weights, **options).stop

        exact = exact_failure_probability(looks, weights, decide)
        limit = within(exact)[1]
        valid = seq.sequential_certification(nested, MASKS, alpha=CAL_ALPHA, spending=weights, **options)
        # (1) stop by the real rule, but certify with the fixed-n bounds of the look it stopped at
        fixed_lower, fixed_upper = np.zeros((TRIALS, 2)), np.zeros((TRIALS, 2))
        for size in np.unique(valid.samples):
            rows = valid.samples == size
            fixed_lower[rows], fixed_upper[rows] = _bounds.label_probability_bounds(valid.counts[rows], int(size),
                                                                                 CAL_ALPHA)
        # (2) half the look penalty: every look's level doubled (as if the weights were counted once too few)
        half = seq.sequential_certification(nested, MASKS, alpha=2 * CAL_ALPHA, spending=weights,
                                                       **options)
        # (3) weights summing above 1 (3/4 last, and 1/4 at *each* earlier look): refused by validation, and here
        # run anyway through the equivalent valid weights with alpha scaled by their sum
        over = seq.spending_weights(looks.size, 0.75)
        over[:-1] = 0.25
        with pytest.raises(ValueError, match="sum to at most 1"):
            seq.sequential_certification(nested, MASKS, alpha=CAL_ALPHA, spending=over, **options)
        inflated = seq.sequential_certification(nested, MASKS, alpha=CAL_ALPHA * over.sum(),
                                                           spending=over / over.sum(), **options)
        rates = {"fixed-n bounds at the stop": failure_fraction(fixed_lower, fixed_upper),
                 "half the look penalty": failure_fraction(half.lower, half.upper),
                 "weights above 1": failure_fraction(inflated.lower, inflated.upper)}
        print(f"\n[calibration] mutants at R = {radius_factor:g} x the true radius: exact {exact:.4f}, accepted up "
              f"to {limit:.4f}; " + ", ".join(f"{name} {rate:.4f}" for name, rate in rates.items()))
        caught.update({(name, radius_factor == 0.5): rate > limit for name, rate in rates.items()})
    # At the true radius the rule stops when the bound fails, so a doubled level doubles the failures; at half of
    # it, inputs stop early by success, where fixed-n bounds are much tighter than the spent ones.
    assert caught[("half the look penalty", False)] and caught[("weights above 1", False)], caught
    assert caught[("fixed-n bounds at the stop", True)] and caught[("weights above 1", True)], caught
