"""The betting bounds: the beta-binomial mixture confidence sequence, and its calibration under the real stopping
rule of ``bounds="betting"`` (looks after every noise block), with mutants the calibration catches.

The calibration design is that of ``test_spending.py``: two labels, k' = 1, L = {0}, p = (0.7, 0.3), so the two
bounds a certificate reads are one event (the Beta(1/2, 1/2) mixture is symmetric: lower_0 at count x is
1 - upper_1 at count n - x), and with R at the radius the true probabilities certify, the rule stops by success
exactly when that bound fails. The probability that the bounds read at the stop fail is computed exactly (a
recursion over label 0's count, look by look, with the rule's decisions; "the bound fails" is read off the
closed-form wealth written here with SciPy: lower_0 > p_0 exactly when the mixture's wealth against p_0 passes
2 / alpha while x / n > p_0), checked at most alpha / 2 (Ville's inequality at the alpha / c = alpha / 2 of each
bound), and 10,000 simulated runs of the real procedure must fall in its two-sided binomial acceptance range.
Ville's inequality is loose (the wealth overshoots little between looks), so a bound at twice the level can
still fail less often than alpha / 2: a comparison with alpha alone would let it through; the exact value does
not.

``bounds="betting-cp"`` (the sequences at (1 - w) of each bound's level, and at the last look the better of them
and a fixed-n Clopper-Pearson bound at w of it) is calibrated the same way: the exact recursion adds "the
Clopper-Pearson bound fails" at the last look, read off the binomial tail (lower > p_0 exactly when
P(Binomial(n, p_0) >= x) < w alpha / 2). There the Clopper-Pearson share decides most failures, so the mutant
with that share at twice its level is caught by the same acceptance range; the sequence's share fails too
rarely for a doubled one to show in 20,000 runs, and the exact-bounds test pins it instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, special, stats

from multiguard.certificates import betting
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.certificates.stop_rule import StopRule


def mixture_log_wealth(p0: float, x: np.ndarray, n: int) -> np.ndarray:
    """log of int_0^1 (q / p0)^x ((1 - q) / (1 - p0))^(n - x) Beta(q; 1/2, 1/2) dq, written out."""
    return (special.betaln(x + 0.5, n - x + 0.5) - special.betaln(0.5, 0.5)
            - special.xlogy(x, p0) - special.xlog1py(n - x, -p0))


def test_the_confidence_sequence_ends_are_the_roots_of_the_mixture_wealth() -> None:
    n, level = 1000, 1e-4
    counts = np.array([0, 1, 5, 300, 600, 900, 999, 1000])
    lower, upper = betting.betting_confidence_sequence(counts, n, level)
    for x, low, up in zip(counts, lower, upper, strict=True):
        def excess(p: float, x: int = int(x)) -> float:
            return float(mixture_log_wealth(p, np.float64(x), n)) - np.log(1 / level)
        expect_low = 0.0 if x == 0 else optimize.brentq(excess, 1e-300, min(x / n, 1 - 1e-15), xtol=1e-15)
        expect_up = 1.0 if x == n else optimize.brentq(excess, max(x / n, 1e-300), 1 - 1e-16, xtol=1e-15)
        assert low == pytest.approx(expect_low, abs=1e-12) and low <= expect_low + 1e-15
        assert up == pytest.approx(expect_up, abs=1e-12) and up >= expect_up - 1e-15
    # the figures of docs/sequential.md: all 1000 in the top-k' at 1e-4, and 900 of 1000
    assert lower[-1] == pytest.approx(0.98685, abs=1e-5) and lower[5] == pytest.approx(0.84509, abs=1e-5)
    # wider than the fixed-n Clopper-Pearson bound at the same level: it holds at every n
    assert lower[5] < stats.beta.ppf(level, 900, 101) and upper[3] > stats.beta.ppf(1 - level, 301, 700)
    with pytest.raises(ValueError, match="counts must be whole numbers in"):
        betting.betting_confidence_sequence([1001], 1000, level)
    with pytest.raises(ValueError, match="alpha"):
        betting.betting_confidence_sequence([10], 100, 0.0)


def test_betting_label_bounds_split_alpha_over_the_bounds_read_and_ignore_the_looks() -> None:
    counts = np.array([[60, 30, 10], [0, 100, 0]])
    alpha = 0.01
    lower, upper = seq.anytime_label_probability_bounds(counts, 100, alpha, np.array([100, 200]), bounds="betting")
    expect = betting.betting_confidence_sequence(counts, 100, alpha / 3)
    np.testing.assert_array_equal(lower, expect[0])
    np.testing.assert_array_equal(upper, expect[1])
    # the same counts at the same n, read with other looks: the same bounds (nothing is spent on looks)
    other = seq.anytime_label_probability_bounds(counts, 100, alpha, np.arange(100, 2001, 100), bounds="betting")
    np.testing.assert_array_equal(other[0], lower)
    read = seq.anytime_label_probability_bounds(counts, 100, alpha, np.array([100]), bounds_read=np.array([1, 2]),
                                                bounds="betting")
    np.testing.assert_array_equal(read[0][1], betting.betting_confidence_sequence(counts[1], 100, alpha / 2)[0])
    with pytest.raises(ValueError, match="bounds must be one of"):
        seq.anytime_label_probability_bounds(counts, 100, alpha, np.array([100]), bounds="bayes")


def test_old_rules_read_as_union_and_the_cli_looks_after_every_block_with_betting() -> None:
    rule = {"radius": 0.25, "k": 3, "k_prime": 1, "alpha": 0.001}
    assert StopRule.coerce(rule).bounds == "union"  # a run's metadata without the field: the rule it ran
    assert StopRule(**rule).bounds == seq.DEFAULT_BOUNDS
    assert StopRule(**rule, bounds="betting").procedure()["bounds"] == "betting"
    with pytest.raises(ValueError, match="bounds"):
        StopRule(**rule, bounds="bayes")
    assert seq.look_schedule(450, "every-block").tolist() == [100, 200, 300, 400, 450]


# ----------------------------------------------------------------------------------------- calibration

P0 = 0.7
TRIALS = 100_000  # failures are rare (Ville is loose): 0.5 % at alpha / 2 = 0.15, so many runs
CAL_ALPHA = 0.3
CAL_N = 2000
MASKS = np.broadcast_to(np.array([True, False]), (TRIALS, 2))


def setup(radius_factor: float, futility: str, bounds: str = "betting") -> tuple[np.ndarray, dict, np.ndarray]:
    looks = seq.look_schedule(CAL_N, "every-block")
    p = np.array([P0, 1 - P0])
    radius = float(_topk.certified_radii(p, p, [True, False], k=1, k_prime=1, sigma=0.5)[0]) * radius_factor
    options = dict(looks=looks, k=1, k_prime=1, sigma=0.5, radius=radius, futility=futility, bounds=bounds)
    rng = np.random.default_rng(2031)
    increments = np.diff(np.concatenate([[0], looks]))
    first = np.cumsum(rng.binomial(increments[None, :], P0, size=(TRIALS, looks.size)), axis=1)
    return looks, options, np.stack([first, looks[None, :] - first], axis=2)


def mixture_refutes(x: np.ndarray, n: int, level: float) -> np.ndarray:
    """Whether the beta-binomial mixture's wealth against p_0 has passed 1 / level at count x of n."""
    return mixture_log_wealth(P0, x.astype(np.float64), n) >= np.log(1 / level)


def exact_failure_probability(looks: np.ndarray, alpha: float, options: dict, share: float | None = None,
                              refutes: Callable[[np.ndarray, int, float], np.ndarray] = mixture_refutes) -> float:
    """P(the bound read at the stop fails), by recursion over label 0's count; the rule's decisions come from
    ``sequential_stopping_rule`` at ``alpha``, the failures from the sequence's wealth against p_0 at level
    alpha / 2 (``refutes(x, n, level)``: the beta-binomial mixture's formula above, or another family's).
    With a ``share`` w (``bounds="betting-cp"``, ``"tuned-cp"``): the sequence at (1 - w) alpha / 2, and at the
    last look also the Clopper-Pearson bound at w alpha / 2, from the binomial tail."""
    level = alpha if share is None else (1 - share) * alpha
    extra = {} if share is None else {"spending": share}
    alive = np.ones(1)
    done, failure = 0, 0.0
    for n in looks.tolist():
        alive = np.convolve(alive, stats.binom.pmf(np.arange(n - done + 1), n - done, P0))
        done = n
        x = np.arange(n + 1)
        counts = np.stack([x, n - x], axis=1)
        stop = seq.sequential_stopping_rule(counts, n, np.broadcast_to([True, False], counts.shape), alpha=alpha,
                                            **options, **extra).stop
        fails = (x > P0 * n) & refutes(x, n, level / 2)
        if share is not None and n == looks[-1]:
            fails |= stats.binom.sf(x - 1, n, P0) < share * alpha / 2
        failure += alive[stop & fails].sum()
        alive = np.where(stop, 0.0, alive)
    return float(failure)


def failure_fraction(lower: np.ndarray, upper: np.ndarray) -> float:
    return float(((lower[:, 0] > P0) | (upper[:, 1] < 1 - P0)).mean())


def within(probability: float, trials: int = TRIALS) -> tuple[float, float]:
    return tuple(stats.binom.ppf([1e-6, 1 - 1e-6], trials, probability) / trials)


def test_betting_bounds_at_the_stop_fail_at_their_exact_rate_within_alpha_and_mutants_do_not() -> None:
    futility = "margin"
    looks, options, nested = setup(1 - 1e-9, futility)
    exact = exact_failure_probability(looks, CAL_ALPHA, options)
    result = seq.sequential_certification(nested, MASKS, alpha=CAL_ALPHA, **options)
    fails = failure_fraction(result.lower, result.upper)
    low, high = within(exact)
    # mutants: (1) the procedure with its bounds at 2 alpha (here, with c = 2, also the procedure that drops the
    # alpha / c split); (2) the real stop, but the certificate read with bounds at alpha each (B = 1)
    doubled = seq.sequential_certification(nested, MASKS, alpha=2 * CAL_ALPHA, **options)
    unsplit_lower, unsplit_upper = seq.anytime_label_probability_bounds(
        result.counts, result.samples, CAL_ALPHA, looks, bounds_read=1, bounds="betting")
    mutants = {"2 alpha": failure_fraction(doubled.lower, doubled.upper),
               "no alpha / c split at the stop": failure_fraction(unsplit_lower, unsplit_upper)}
    print(f"\n[calibration] betting, {futility}: exact failure probability {exact:.4f} (Ville: alpha/2 = "
          f"{CAL_ALPHA / 2}), simulated {fails:.4f} (accepted {low:.4f}-{high:.4f}), mean samples "
          f"{result.samples.mean():.0f}; mutants " + ", ".join(f"{k} {v:.4f}" for k, v in mutants.items()))
    assert exact <= CAL_ALPHA / 2  # the guarantee, exactly
    assert low <= fails <= high  # the procedure is what the recursion says
    assert np.unique(result.samples).size > 5  # the stopping is real: many looks are used
    assert mutants["2 alpha"] > high  # about twice the exact rate: far outside the acceptance range
    # read at the real stop, the unsplit bound fails where the split one does and a little more often
    assert mutants["no alpha / c split at the stop"] >= fails


# ------------------------------------------------------------------------- betting + Clopper-Pearson at the end


def test_betting_cp_reads_the_sequence_before_the_last_look_and_the_better_end_at_it() -> None:
    counts = np.array([[900, 60, 40], [1000, 0, 0], [500, 450, 50]])
    alpha, looks, share = 3e-4, np.array([100, 500, 1000]), 0.75
    lower, upper = seq.anytime_label_probability_bounds(counts, 1000, alpha, looks, share, bounds="betting-cp")
    cs_low, cs_up = betting.betting_confidence_sequence(counts, 1000, (1 - share) * alpha / 3)
    cp_low = np.where(counts > 0, stats.beta.ppf(share * alpha / 3, np.maximum(counts, 1), 1001 - counts), 0.0)
    cp_up = np.where(counts < 1000, stats.beta.ppf(1 - share * alpha / 3, counts + 1, np.maximum(1000 - counts, 1)),
                     1.0)
    np.testing.assert_allclose(lower, np.maximum(cs_low, cp_low), rtol=1e-12)
    np.testing.assert_allclose(upper, np.minimum(cs_up, cp_up), rtol=1e-12)
    # at these sizes Clopper-Pearson is the better end: 900 of 1000 at 1e-4 in all (the gap of docs/sequential.md)
    assert lower[0, 0] == pytest.approx(cp_low[0, 0], rel=1e-12) and lower[0, 0] > 0.859 > cs_low[0, 0]
    # before the last look: the sequence's ends at (1 - w) alpha / B, nothing else
    early = seq.anytime_label_probability_bounds(counts // 2, 500, alpha, looks, share, bounds="betting-cp")
    np.testing.assert_array_equal(early[0], betting.betting_confidence_sequence(counts // 2, 500,
                                                                                (1 - share) * alpha / 3)[0])
    # spending None: equal shares; w = 1: no sequence before the last look
    half = seq.anytime_label_probability_bounds(counts // 2, 500, alpha, looks, None, bounds="betting-cp")
    np.testing.assert_array_equal(half[1], betting.betting_confidence_sequence(counts // 2, 500, alpha / 6)[1])
    none = seq.anytime_label_probability_bounds(counts // 2, 500, alpha, looks, 1.0, bounds="betting-cp")
    assert (none[0] == 0).all() and (none[1] == 1).all()
    for bad in (0.0, 1.5, [0.5, 0.5, 0.0], "half"):
        with pytest.raises(ValueError, match="spending must be a share in"):
            seq.anytime_label_probability_bounds(counts, 1000, alpha, looks, bad, bounds="betting-cp")
    rule = {"radius": 0.25, "k": 3, "k_prime": 1, "alpha": 0.001}
    assert StopRule(**rule, bounds="betting-cp").procedure()["bounds"] == "betting-cp"


CP_TRIALS = 20_000  # the Clopper-Pearson share fails often enough (3 to 5 %) for fewer runs


@pytest.mark.parametrize("share", [0.5, 0.75])
def test_betting_cp_bounds_at_the_stop_fail_at_their_exact_rate_within_alpha_and_a_doubled_cp_share_does_not(
    share: float,
) -> None:
    looks, options, nested = setup(1 - 1e-9, "margin", bounds="betting-cp")
    nested, masks = nested[:CP_TRIALS], MASKS[:CP_TRIALS]
    exact = exact_failure_probability(looks, CAL_ALPHA, options, share)
    result = seq.sequential_certification(nested, masks, alpha=CAL_ALPHA, spending=share, **options)
    fails = failure_fraction(result.lower, result.upper)
    low, high = within(exact, CP_TRIALS)
    # mutants: alpha' = (1 + w) alpha, w' = 2 w / (1 + w) keeps the sequence's level (1 - w) alpha and doubles
    # the Clopper-Pearson one; alpha' = (2 - w) alpha, w' = w / (2 - w) doubles the sequence's only
    doubled_cp = seq.sequential_certification(nested, masks, alpha=(1 + share) * CAL_ALPHA,
                                              spending=2 * share / (1 + share), **options)
    doubled_cs = seq.sequential_certification(nested, masks, alpha=(2 - share) * CAL_ALPHA,
                                              spending=share / (2 - share), **options)
    mutants = {"Clopper-Pearson at 2x": failure_fraction(doubled_cp.lower, doubled_cp.upper),
               "sequence at 2x": failure_fraction(doubled_cs.lower, doubled_cs.upper)}
    print(f"\n[calibration] betting-cp, w = {share}: exact failure probability {exact:.4f} (alpha/2 = "
          f"{CAL_ALPHA / 2}), simulated {fails:.4f} (accepted {low:.4f}-{high:.4f}), mean samples "
          f"{result.samples.mean():.0f}, at the last look {(result.samples == looks[-1]).mean():.3f}; mutants "
          + ", ".join(f"{k} {v:.4f}" for k, v in mutants.items()))
    assert exact <= CAL_ALPHA / 2  # the guarantee, exactly
    assert low <= fails <= high  # the procedure is what the recursion says
    assert np.unique(result.samples).size > 5 and (result.samples == looks[-1]).any()
    assert mutants["Clopper-Pearson at 2x"] > high
    assert mutants["sequence at 2x"] >= fails  # the sequence's share fails rarely: not what this range catches


def test_cli_bounds_betting_cp_looks_after_every_block_records_its_share_and_reports_with_it(
    tmp_path: Path, capsys
) -> None:
    """``certify --bounds betting-cp``: every-block looks unless --schedule says, the run records the rule with
    its share (``spending``), and ``report`` rebuilds the bounds of that very rule."""
    from clitools import run_in_process

    from multiguard.runs import folder as _folder

    checkpoint = Path(__file__).parents[1] / "fixtures" / "old_run" / "model.pt"
    out = tmp_path / "run"
    code, _, err = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), "--num-samples", "500",
                                  "--num-inputs", "4", "--device", "cpu", "--stop-at-radius", "0.1", "--k", "2",
                                  "--bounds", "betting-cp", "--spending", "0.9", "--out", str(out))
    assert code == 0, err
    meta = json.loads((out / "metadata.json").read_text())
    assert {key: meta["stop_rule"][key] for key in ("schedule", "spending", "bounds")} == {
        "schedule": "every-block", "spending": 0.9, "bounds": "betting-cp"}
    assert meta["sample_sizes"] == [100, 200, 300, 400, 500]
    run, looks = _folder.load_run(out), np.array(meta["sample_sizes"])
    lower, _ = seq.anytime_label_probability_bounds(run.counts_for(1), run.samples, 0.001, looks, 0.9,
                                                    bounds="betting-cp")
    early = run.samples < 500  # before the last look: the sequences at 1/10 of alpha
    assert early.any()
    cs_lower, _ = seq.anytime_label_probability_bounds(run.counts_for(1), run.samples, 0.1 * 0.001, looks,
                                                       bounds="betting")
    np.testing.assert_array_equal(lower[early], cs_lower[early])
    code, summary, err = run_in_process(capsys, "report", str(out), "--k", "2", "--out", str(tmp_path / "rep"))
    assert code == 0, err
    assert "betting-cp bounds: beta-binomial mixture confidence sequences, and at the last look Clopper-Pearson " \
           "at 0.9 of alpha" in summary
