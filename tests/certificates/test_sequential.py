"""Sequential certification: nested counts, anytime-valid bounds, the stopping rule and its validity.

The statistical tests simulate the whole sequential procedure (the real stopping rule of
:func:`multiguard.certificates.sequential.sequential_stopping_rule`, looking at the real schedule) on base
classifiers of known
label probabilities: a multinomial over labels for k' = 1 and a known law over top-k' sets for k' > 1. The
target radius sits exactly at the radius the true probabilities certify, so the rule stops an input precisely
when its bounds look better than the truth: the setting in which reusing fixed-n bounds at every look fails,
and the controls show that it does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from clitools import (
    assert_one_line_error_in_process,
    assert_same_counts,
    command,
    env,
    load_counts,
    run,
    run_in_process,
    tiny_checkpoint,
)
from scipy import stats

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.certificates.stop_rule import StopRule
from multiguard.evaluation import report as _report
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.spec import RunSpec
from multiguard.sampling.engine import SamplingEngine
from multiguard.sampling.smoothed import MultiGuard

# ------------------------------------------------------------------------------------------ schedules


def test_sample_size_schedule_is_a_1_2_5_series_ending_at_n() -> None:
    assert seq.sample_size_schedule(1000).tolist() == [100, 200, 500, 1000]
    assert seq.sample_size_schedule(10_000).tolist() == [100, 200, 500, 1000, 2000, 5000, 10_000]
    assert seq.sample_size_schedule(3000).tolist() == [100, 200, 500, 1000, 2000, 3000]
    assert seq.sample_size_schedule(150).tolist() == [100, 150]
    assert seq.sample_size_schedule(100).tolist() == [100]
    assert seq.sample_size_schedule(60).tolist() == [60]
    assert seq.sample_size_schedule(50, first=10).tolist() == [10, 20, 50]
    with pytest.raises(ValueError, match="n must be"):
        seq.sample_size_schedule(0)


# ------------------------------------------------------------------------------------- anytime bounds


def test_anytime_bounds_are_clopper_pearson_at_alpha_over_c_times_the_number_of_looks() -> None:
    looks = np.array([100, 200, 500, 1000])
    counts = np.array([[0, 37, 100, 63], [200, 1, 0, 199]])
    n = np.array([100, 200])
    alpha = 0.01
    lower, upper = seq.anytime_label_probability_bounds(counts, n, alpha, looks)
    level = alpha / (4 * 4)  # c = 4 labels, J = 4 looks
    for row in range(2):
        size = n[row]
        for label, count in enumerate(counts[row]):
            expect_low = 0.0 if count == 0 else stats.beta.ppf(level, count, size - count + 1)
            expect_up = 1.0 if count == size else stats.beta.ppf(1 - level, count + 1, size - count)
            assert lower[row, label] == pytest.approx(expect_low, rel=1e-12, abs=1e-300)
            assert upper[row, label] == pytest.approx(expect_up, rel=1e-12)
    # One look is the fixed-n procedure: the bounds of label_probability_bounds, exactly.
    fixed = _bounds.label_probability_bounds(counts[0], 100, alpha)
    single = seq.anytime_label_probability_bounds(counts[0], 100, alpha, [100])
    np.testing.assert_array_equal(single[0], fixed[0])
    np.testing.assert_array_equal(single[1], fixed[1])


@pytest.mark.parametrize(
    ("counts", "n", "looks", "message"),
    [
        ([1, 2], 150, [100, 200], "n must be one of the looks"),
        ([1, 201], 200, [100, 200], r"counts must lie in \[0, n\]"),
        ([1.5, 2], 200, [100, 200], "whole numbers"),
        ([1, 2], 200, [200, 100], "looks must be strictly increasing"),
        ([1, 2], 200, [], "looks must be a non-empty"),
        ([[1, 2], [3, 4]], [100, 100, 100], [100], r"n must be an integer or \(2,\)"),
    ],
)
def test_anytime_bounds_reject_bad_input(counts: object, n: object, looks: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        seq.anytime_label_probability_bounds(counts, n, 0.01, looks)


# -------------------------------------------------------------------------------------- stopping rule


def simulate_nested_counts(
    rng: np.random.Generator, weights: np.ndarray, sets: np.ndarray, looks: np.ndarray, trials: int
) -> np.ndarray:
    """``trials`` independent runs of a base classifier whose top-k' is ``sets[s]`` with probability
    ``weights[s]``: cumulative counts ``(trials, J, c)`` at every look (each label's count at look j is
    Binomial(looks[j], p_i) with ``p = weights @ sets``)."""
    increments = np.diff(np.concatenate([[0], looks]))
    draws = np.stack([rng.multinomial(m, weights, size=trials) for m in increments], axis=1)
    return np.cumsum(draws, axis=1) @ sets


def test_the_rule_stops_settled_and_hopeless_inputs_and_continues_the_others() -> None:
    looks = np.array([100, 200, 500, 1000])
    labels = np.array([[True, False, False]] * 3)
    counts = np.array([[100, 0, 0], [50, 50, 0], [70, 30, 0]])  # certain / a coin flip / promising
    options = dict(looks=looks, alpha=0.001, k=1, k_prime=1, sigma=0.5, radius=0.25, futility="remaining",
                   spending=None)
    decision = seq.sequential_stopping_rule(counts, 100, labels, **options)
    # Row 0 certifies e = 1 = min(|L|, k) at once. Rows 1 and 2 certify nothing yet, and would if the 900
    # samples still allowed all went to label 0 (50 + 900 of 1000): they go on.
    assert decision.settled.tolist() == [True, False, False]
    assert decision.intersection_size.tolist() == [1, 0, 0]
    assert decision.stop.tolist() == [True, False, False]
    assert decision.best_possible.tolist() == [1, 1, 1]
    # At the last look but one, 200 of 500 can no longer reach the radius (700 of 1000 at best): it gives up.
    late = seq.sequential_stopping_rule(np.array([[200, 300, 0]]), 500, labels[:1], **options)
    assert late.stop.tolist() == [True] and late.best_possible.tolist() == [0]
    # The last look always stops.
    last = seq.sequential_stopping_rule(np.array([[700, 300, 0]]), 1000, labels[:1], **options)
    assert last.stop.tolist() == [True] and not last.settled[0]


@pytest.mark.parametrize("k_prime", [1, 2])
def test_no_later_look_certifies_more_than_the_rules_best_possible(k_prime: int) -> None:
    rng = np.random.default_rng(7 + k_prime)
    c, trials, looks = 5, 400, np.array([100, 200, 500, 1000, 2000])
    sets = np.eye(c, dtype=np.int64) if k_prime == 1 else np.array([[1, 1, 0, 0, 0], [1, 0, 1, 0, 0],
                                                                     [0, 1, 0, 1, 0], [1, 0, 0, 0, 1]])
    weights = rng.dirichlet(np.ones(sets.shape[0]), size=trials)  # a different classifier per trial
    nested = np.stack([simulate_nested_counts(rng, w, sets, looks, 1)[0] for w in weights])
    labels = rng.uniform(size=(trials, c)) < 0.4
    options = dict(alpha=0.01, k=2, k_prime=k_prime, sigma=0.5, radius=0.1, futility="remaining")
    sizes = []
    best = []
    for j, size in enumerate(looks):
        decision = seq.sequential_stopping_rule(nested[:, j], int(size), labels, looks=looks, **options)
        sizes.append(decision.intersection_size)
        best.append(decision.best_possible)
    sizes_arr, best_arr = np.stack(sizes, axis=1), np.stack(best, axis=1)
    for j in range(looks.size):
        assert (sizes_arr[:, j:] <= best_arr[:, j : j + 1]).all()
    assert (sizes_arr[:, -1] > sizes_arr[:, 0]).any()  # the check compares sizes that do change


def test_the_plausible_and_projected_futility_rules_stop_sooner() -> None:
    rng = np.random.default_rng(21)
    c, trials, looks = 4, 2000, seq.sample_size_schedule(10_000)
    weights = rng.dirichlet(np.full(c, 0.5), size=trials)
    nested = np.stack([simulate_nested_counts(rng, w, np.eye(c, dtype=np.int64), looks, 1)[0] for w in weights])
    labels = np.zeros((trials, c), dtype=bool)
    labels[np.arange(trials), np.argmax(weights, axis=1)] = True  # L = the most likely label: often certified
    options = dict(looks=looks, alpha=0.001, k=1, k_prime=1, sigma=0.5, radius=0.25, spending=None)
    remaining = seq.sequential_certification(nested, labels, futility="remaining", **options)
    plausible = seq.sequential_certification(nested, labels, futility="plausible", **options)
    assert (plausible.samples <= remaining.samples).all()
    assert plausible.samples.mean() < 0.7 * remaining.samples.mean()
    certified = (_topk.intersection_size_from_radii(remaining.radii, 0.25) > 0).mean()
    certified_plausible = (_topk.intersection_size_from_radii(plausible.radii, 0.25) > 0).mean()
    assert certified_plausible <= certified and certified_plausible > certified - 0.03
    projected = seq.sequential_certification(nested, labels, futility="projected", **options)
    assert projected.samples.mean() < plausible.samples.mean()
    from multiguard.cli import FUTILITY_CHOICES

    assert FUTILITY_CHOICES == seq.FUTILITY_RULES.names()  # the command line offers every rule
    with pytest.raises(ValueError, match="futility must be one of"):
        seq.sequential_stopping_rule(nested[:2, 0], 100, labels[:2], futility="never", **options)


def test_a_registered_futility_rule_is_used_by_the_rule_the_stop_rule_and_the_sampler() -> None:
    """One registration makes a futility rule a choice everywhere: the stopping rule calls it, a StopRule
    accepts it, MultiGuard samples with it (and the command line lists FUTILITY_RULES' names)."""
    rng = np.random.default_rng(5)
    looks = seq.sample_size_schedule(1000)
    weights = rng.dirichlet(np.full(3, 0.5), size=40)
    nested = np.stack([simulate_nested_counts(rng, w, np.eye(3, dtype=np.int64), looks, 1)[0] for w in weights])
    labels = np.zeros((40, 3), dtype=bool)
    labels[np.arange(40), np.argmax(weights, axis=1)] = True
    options = dict(looks=looks, alpha=0.001, k=1, k_prime=1, sigma=0.5, radius=0.25)
    calls = []

    def hopeless(counts, n, lower, upper, remaining):  # noqa: ANN001, ANN202 - the rule's documented arguments
        """no later sample helps: give up at once"""
        calls.append(counts.shape)
        return np.zeros_like(remaining), 0

    seq.FUTILITY_RULES.register("test-hopeless", hopeless)
    seq.FUTILITY_RULES.register("test-remaining", seq.FUTILITY_RULES.get("remaining"))
    try:
        assert StopRule(radius=0.25, k=1, k_prime=1, alpha=0.001, futility="test-hopeless").futility == "test-hopeless"
        result = seq.sequential_certification(nested, labels, futility="test-hopeless", **options)
        assert calls and (result.samples == looks[0]).all()  # every input stopped at the first look
        control = seq.sequential_certification(nested, labels, futility="remaining", **options)
        assert (control.samples > looks[0]).any()  # the control goes on: the new rule made the difference
        same = seq.sequential_certification(nested, labels, futility="test-remaining", **options)
        np.testing.assert_array_equal(same.samples, control.samples)
        model, _, _ = vector_problem(1, seed=0)
        guard = MultiGuard(model, 6, sigma=0.25)
        x = VectorData().x[:3]
        mask = np.zeros((3, 6), dtype=bool)
        mask[:, 0] = True
        certificate = guard.certify(x, mask, n=1000, alpha=0.001, k=2, check_range=False,
                                    stop_rule=StopRule(radius=0.1, futility="test-hopeless"))
        assert (certificate.samples == 100).all()
    finally:
        seq.FUTILITY_RULES.unregister("test-hopeless")
        seq.FUTILITY_RULES.unregister("test-remaining")
    with pytest.raises(ValueError, match="futility must be one of"):
        StopRule(radius=0.25, k=1, k_prime=1, alpha=0.001, futility="test-hopeless")


# ----------------------------------------------------------------------------- validity under stopping

# (law over top-k' sets, sets, L, k, looks, alpha): the looks are the real 1-2-5 schedule, and a dense one.
CASES = {
    "k'=1, 1-2-5 looks to 10000": (
        np.array([0.75, 0.25]), np.eye(2, dtype=np.int64), [0], 1, seq.sample_size_schedule(10_000), 0.1,
    ),
    "k'=1, 20 looks every 100 samples": (
        np.array([0.75, 0.25]), np.eye(2, dtype=np.int64), [0], 1, np.arange(100, 2001, 100), 0.04,
    ),
    "k'=2, 1-2-5 looks to 10000": (
        np.array([0.6, 0.3, 0.1]), np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1]]), [0, 1], 2,
        seq.sample_size_schedule(10_000), 0.1,
    ),
}


def allowed(rate: float, trials: int) -> float:
    """Largest failure fraction consistent with a true rate <= ``rate`` (one-sided binomial test at 1e-6)."""
    return stats.binom.ppf(1 - 1e-6, trials, rate) / trials


def failure_fraction(result: seq.SequentialCertificate, p: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of runs in which a bound read at the stop is wrong: lower_i > p_i (i in L) or upper_j < p_j."""
    wrong = np.where(labels[None, :], result.lower > p[None, :], result.upper < p[None, :])
    return float(wrong.any(axis=1).mean())


@pytest.mark.parametrize(("case", "futility"), [(case, "remaining") for case in CASES]
                         + [("k'=2, 1-2-5 looks to 10000", "margin")]
                         + [("k'=1, 1-2-5 looks to 10000", "plausible")])
def test_bounds_at_the_stopping_time_fail_at_most_alpha_and_naive_fixed_n_bounds_do_not(
    case: str, futility: str
) -> None:
    weights, sets, members, k, looks, alpha = CASES[case]
    k_prime = int(sets.sum(axis=1)[0])
    p = weights @ sets
    assert np.isclose(p.sum(), k_prime)
    labels = np.zeros(p.size, dtype=bool)
    labels[members] = True
    d = min(len(members), k)
    # The target radius: the one the true probabilities certify (just inside it).
    radius = float(_topk.certified_radii(p, p, labels, k=k, k_prime=k_prime, sigma=0.5)[d - 1]) * (1 - 1e-9)
    trials = 20_000
    nested = simulate_nested_counts(np.random.default_rng(2024), weights, sets, looks, trials)
    masks = np.broadcast_to(labels, (trials, p.size))
    # equal shares, so that level alpha * J is fixed-n bounds at every look (the spending of the default rule is
    # calibrated sharply in test_spending.py)
    options = dict(looks=looks, k=k, k_prime=k_prime, sigma=0.5, radius=radius, futility=futility, spending=None)

    anytime = seq.sequential_certification(nested, masks, alpha=alpha, **options)
    # Fixed-n bounds at level alpha reused at every look are exactly the anytime bounds at level J * alpha.
    naive = seq.sequential_certification(nested, masks, alpha=alpha * looks.size, **options)
    fails, naive_fails = failure_fraction(anytime, p, labels), failure_fraction(naive, p, labels)
    print(f"\n[sequential] {case}, futility {futility}: alpha={alpha}, R={radius:.4f}, {trials} runs: bounds read "
          f"at the stop fail in "
          f"{fails:.5f} (allowed {allowed(alpha, trials):.5f}); naive fixed-n bounds {naive_fails:.5f}; "
          f"mean samples {anytime.samples.mean():.0f}")
    assert np.unique(anytime.samples).size > 2  # runs stop at different looks: the stopping is real
    assert fails <= allowed(alpha, trials)
    assert naive_fails > allowed(alpha, trials)  # the check catches invalid bounds


def test_sequential_certification_reads_the_counts_of_the_look_it_stops_at() -> None:
    weights, sets, members, k, looks, alpha = CASES["k'=2, 1-2-5 looks to 10000"]
    labels = np.zeros(3, dtype=bool)
    labels[members] = True
    nested = simulate_nested_counts(np.random.default_rng(3), weights, sets, looks, 300)
    masks = np.broadcast_to(labels, (300, 3))
    options = dict(alpha=0.001, k=k, k_prime=2, sigma=0.5)
    result = seq.sequential_certification(nested, masks, looks=looks, radius=0.1, **options)
    stopped = np.searchsorted(looks, result.samples)
    np.testing.assert_array_equal(result.counts, nested[np.arange(300), stopped])
    lower, upper = seq.anytime_label_probability_bounds(result.counts, result.samples, 0.001, looks,
                                                        seq.DEFAULT_SPENDING)
    np.testing.assert_array_equal(result.lower, lower)
    np.testing.assert_array_equal(result.radii, _topk.certified_radii(lower, upper, masks, k=k, k_prime=2, sigma=0.5))
    # Every input stopped at its first look where the rule said so.
    for j, size in enumerate(looks):
        here = stopped >= j
        decision = seq.sequential_stopping_rule(nested[here, j], int(size), masks[here], looks=looks,
                                                 radius=0.1, **options)
        np.testing.assert_array_equal(decision.stop, stopped[here] == j)
        np.testing.assert_array_equal(
            decision.intersection_size[decision.stop], _topk.intersection_size_from_radii(result.radii[here], 0.1)[
                decision.stop]
        )


# ------------------------------------------------------------------------------------------ nested counts


class TinyCNN(torch.nn.Module):
    def __init__(self, num_classes: int = 6) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def test_nested_counts_equal_separate_fixed_n_runs_with_the_same_seed() -> None:
    torch.manual_seed(0)
    model = TinyCNN()
    with torch.no_grad():
        model.head.weight.mul_(30)  # spread the scores so that the noise moves the top-k' around
    x = torch.rand(7, 3, 8, 8)
    engine = SamplingEngine(model, 6, 0.5, clamp=None, device=torch.device("cpu"), dtype=torch.float32)
    sizes = seq.sample_size_schedule(730)  # [100, 200, 500, 730]: the last one ends inside a noise block
    index = np.array([3, 14, 15, 92, 65, 35, 89])
    nested = engine.count_nested(x, sizes, seed=5, index=index, batch_size=256, num_k=2)
    assert nested.shape == (7, 4, 2, 6)
    for position, size in enumerate(sizes):
        alone = engine.count(x, int(size), seed=5, index=index, batch_size=333, num_k=2)
        np.testing.assert_array_equal(nested[:, position], alone)
    assert (np.diff(nested[:, :, 0, :].sum(axis=2), axis=1) > 0).all()
    # Starting later continues the same sample stream.
    later = engine.count_nested(x, [130, 430], seed=5, index=index, batch_size=64, num_k=2, start=np.full(7, 300))
    first_300 = engine.count(x, 300, seed=5, index=index, num_k=2)
    np.testing.assert_array_equal(later[:, 1], nested[:, 3] - first_300)
    with pytest.raises(ValueError, match="sizes must be"):
        engine.count_nested(x, [200, 100], seed=5)


# ------------------------------------------------------------------------------- MultiGuard, sequentially


def vector_problem(num: int, seed: int) -> tuple[torch.nn.Linear, torch.Tensor, np.ndarray]:
    """Scores ``4 x`` of 6-vectors ``x`` in [0, 1]: each input's large coordinates are its likely labels, with
    margins from clear to hopeless; L is each input's two largest coordinates (the likely top-2)."""
    model = torch.nn.Linear(6, 6)
    with torch.no_grad():
        model.weight.copy_(4.0 * torch.eye(6))
        model.bias.zero_()
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, size=(num, 6)) ** 3
    labels = np.zeros((num, 6), dtype=bool)
    np.put_along_axis(labels, np.argsort(-x, axis=1)[:, :2], True, axis=1)
    return model, torch.as_tensor(x, dtype=torch.float32), labels


# The default rule (margin, fine looks, 3/4 of alpha last) and the rule of runs written before it.
PROCEDURES = {"default": {}, "legacy": {"futility": "remaining", "schedule": "1-2-5", "spending": None},
              "betting": {"bounds": "betting", "schedule": "every-block"},
              "betting-cp": {"bounds": "betting-cp", "schedule": "every-block", "spending": 0.75},
              "tuned": {"bounds": "tuned", "schedule": "every-block"},
              "tuned-cp": {"bounds": "tuned-cp", "schedule": "every-block", "spending": 0.5}}
LOOKS_AT_2000 = {"default": 11, "legacy": 5, "betting": 20, "betting-cp": 20, "tuned": 20, "tuned-cp": 20}


@pytest.mark.parametrize(("k_prime", "procedure"), [(1, "default"), (2, "default"), (1, "legacy"), (1, "betting"),
                                                    (2, "betting"), (1, "betting-cp"), (2, "betting-cp"),
                                                    (1, "tuned"), (2, "tuned-cp")])
def test_sequential_certify_is_the_replay_of_its_nested_counts_whatever_the_batching(
    k_prime: int, procedure: str
) -> None:
    model, x, labels = vector_problem(12, seed=k_prime)
    guard = MultiGuard(model, num_classes=6, sigma=0.25, k_prime=k_prime)
    rule = PROCEDURES[procedure]
    options = dict(n=2000, alpha=0.001, k=2, seed=4, stop_rule=StopRule(radius=0.1, **rule))
    result = guard.certify(x, labels, batch_size=300, **options)
    looks = seq.look_schedule(2000, rule.get("schedule", seq.DEFAULT_SCHEDULE))
    assert looks.size == LOOKS_AT_2000[procedure]
    nested = guard.engine.count_nested(x, looks, seed=4, num_k=k_prime)[:, :, k_prime - 1]
    replay = seq.sequential_certification(
        nested, labels, looks=looks, alpha=0.001, k=2, k_prime=k_prime, sigma=0.25, radius=0.1,
        **{key: value for key, value in rule.items() if key != "schedule"},
    )
    np.testing.assert_array_equal(result.samples, replay.samples)
    np.testing.assert_array_equal(result.counts, replay.counts)
    np.testing.assert_array_equal(result.radii, replay.radii)
    assert np.unique(result.samples).size >= 2  # inputs stop at different looks
    assert result.stop_at_radius == 0.1 and result.n == 2000
    # Batch size and the company of other inputs change nothing.
    for batch_size in (7, 1000):
        np.testing.assert_array_equal(guard.certify(x, labels, batch_size=batch_size, **options).radii, result.radii)
    order = [5, 0, 11]
    alone = guard.certify(x[order], labels[order], index=order, **options)
    np.testing.assert_array_equal(alone.samples, result.samples[order])
    np.testing.assert_array_equal(alone.radii, result.radii[order])
    # Fixed n: every input used n samples.
    fixed = guard.certify(x[:2], labels[:2], n=300, alpha=0.001, k=2)
    assert fixed.samples.tolist() == [300, 300] and fixed.stop_at_radius is None


def test_sequential_predict_stops_and_its_radii_come_from_anytime_bounds() -> None:
    model, x, _ = vector_problem(10, seed=5)
    guard = MultiGuard(model, num_classes=6, sigma=0.25)
    fixed = guard.predict(x, k=2, n=1000, seed=2)
    result = guard.predict(x, k=2, n=1000, seed=2, stop_rule=StopRule(radius=0.05))
    np.testing.assert_array_equal(result.labels, fixed.labels)  # the same selection samples
    assert result.samples.min() < 1000 and fixed.samples.tolist() == [1000] * 10
    looks = seq.look_schedule(1000)  # the default rule's looks and spending
    lower, upper = seq.anytime_label_probability_bounds(result.counts, result.samples, 0.001, looks,
                                                        seq.DEFAULT_SPENDING)
    np.testing.assert_array_equal(result.lower, lower)
    np.testing.assert_array_equal(
        result.radii, _topk.certified_radii(lower, upper, result.mask, k=2, k_prime=1, sigma=0.25)
    )
    for i in np.flatnonzero(result.samples < 1000):  # an input that stopped early used the estimation stream
        counts = guard.engine.count(x[i : i + 1], int(result.samples[i]), seed=2, index=[i])[0, 0]
        np.testing.assert_array_equal(result.counts[i], counts)
    with pytest.raises(ValueError, match="stop_at_radius"):
        guard.predict(x, k=2, stop_rule=StopRule(radius=-1.0))
    with pytest.raises(ValueError, match="k: 2 where the stop_rule says 3"):
        guard.predict(x, k=2, stop_rule=StopRule(radius=0.05, k=3))
    with pytest.raises(ValueError, match="alpha: 0.01 where the stop_rule says 0.001"):
        guard.certify(x, np.ones((10, 6), dtype=bool), n=100, k=2, alpha=0.01,
                      stop_rule=StopRule(radius=0.05, alpha=0.001))
    with pytest.raises(ValueError, match="k_prime: 1 where the stop_rule says 2"):
        guard.predict(x, k=2, stop_rule=StopRule(radius=0.05, k_prime=2))
    # The rule's alpha is the call's where the call leaves it out (and 0.001 where neither gives one).
    assert guard.predict(x[:2], k=2, n=100, stop_rule=StopRule(radius=0.05, alpha=0.01)).alpha == 0.01
    assert guard.predict(x[:2], k=2, n=100, stop_rule=StopRule(radius=0.05)).alpha == 0.001


# ---------------------------------------------------------------------------------- exact soundness, sampled


@pytest.mark.parametrize("procedure", ["default", "betting", "betting-cp", "tuned", "tuned-cp"])
def test_sequential_certificates_on_exact_1d_classifiers_hold_at_every_radius(procedure: str) -> None:
    """Linear scores on a 1-D input (top-k' piecewise constant in the input) wrapped as a torch model and
    certified sequentially with real sampling. From the exact smoothed probabilities on a fine grid of the
    line, each e's break radius is the smallest ||delta|| at which fewer than e labels of L are surely in the
    smoothed top-k; a certified radius beyond it is a failure. Failures stay within the alpha share of inputs
    allowed, at every radius (not only the target one); the same search catches the radii doubled."""
    from test_soundness import arrangement_1d, break_radii, probabilities_1d

    rng = np.random.default_rng(11)
    alpha, sigma, n, num = 0.01, 0.5, 2000, 60
    checked = failures = inflated_failures = certified = 0
    offsets = np.linspace(-4.0, 4.0, 8001)
    stops = []
    for problem, (c, k_prime, k) in enumerate([(3, 1, 1), (4, 1, 2), (5, 2, 2), (4, 2, 1)]):
        w, b = rng.normal(size=c) * 2.0, rng.normal(size=c)
        model = torch.nn.Linear(1, c)
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(w[:, None]))
            model.bias.copy_(torch.as_tensor(b))
        arrangement = arrangement_1d(w, b, k_prime)
        x = rng.normal(size=num) * 1.5
        p = probabilities_1d(*arrangement, x, sigma)
        labels = np.zeros((num, c), dtype=bool)  # the smoothed top-d, d = 1 or 2: chosen before sampling
        d = rng.integers(1, 3, size=num)
        for i in range(num):
            labels[i, np.argsort(-p[i], kind="stable")[: d[i]]] = True
        guard = MultiGuard(model, num_classes=c, sigma=sigma, k_prime=k_prime)
        result = guard.certify(torch.as_tensor(x[:, None]), labels, n=n, alpha=alpha, k=k, seed=problem,
                               stop_rule=StopRule(radius=0.25, **PROCEDURES[procedure]))
        stops.append(result.samples)
        for i in range(num):
            broke = break_radii(offsets[:, None], probabilities_1d(*arrangement, x[i] + offsets, sigma), labels[i], k)
            radii = result.radii[i]
            checked += 1
            certified += bool((radii > 0).any())
            failures += bool((radii > broke).any())
            inflated_failures += bool((2.0 * radii > broke).any())
    stops = np.concatenate(stops)
    print(f"\n[sequential] exact 1-D, {procedure}: {checked} inputs, {certified} certify something, mean samples "
          f"{stops.mean():.0f} of at most {n}; certified radii beyond the break radius: {failures} "
          f"(allowed {allowed(alpha, checked) * checked:.0f}); radii doubled: {inflated_failures}")
    assert certified >= checked // 3 and stops.min() < n
    assert failures <= allowed(alpha, checked) * checked
    assert inflated_failures > allowed(alpha, checked) * checked  # the search has teeth


# ------------------------------------------------------------------------------------------------ runs


class VectorData:
    """An in-memory dataset of 6-vectors with 6 labels (a real dataset, not a mock): each input's two largest
    coordinates are its labels."""

    class_names = list("abcdef")

    def __init__(self, num: int = 14) -> None:
        _, self.x, labels = vector_problem(num, seed=9)
        self.y = torch.as_tensor(labels, dtype=torch.float32)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


RULE = {"radius": 0.1, "k": 2, "k_prime": 1, "alpha": 0.001}


def certify_vectors(path: Path, **kwargs: object) -> _job.RunResult:
    model, _, _ = vector_problem(1, seed=0)
    plan = dict(n=1000, max_k_prime=2, seed=3, num_inputs=0, chunk_size=4, sigma=0.25, arch="linear",
                dataset="vectors")
    plan.update({name: kwargs.pop(name) for name in list(kwargs) if name in RunSpec.__dataclass_fields__})
    args = dict(sampler=MultiGuard(model, 6, sigma=0.25), dataset=VectorData(), **kwargs)
    return _job.sample_run(path, RunSpec(**plan), **args)


def test_a_run_stores_nested_counts_that_equal_runs_with_smaller_n(tmp_path: Path) -> None:
    certify_vectors(tmp_path / "n1000")
    certify_vectors(tmp_path / "n500", n=500, batch_size=170)
    big, small = _folder.load_run(tmp_path / "n1000"), _folder.load_run(tmp_path / "n500")
    assert big.sample_sizes.tolist() == [100, 200, 500, 1000] and big.stop_rule is None
    assert big.nested_counts.shape == (14, 4, 2, 6)
    np.testing.assert_array_equal(big.nested_counts[:, -1], big.counts)
    at_500 = big.at_sample_size(500)
    assert at_500.n == 500
    np.testing.assert_array_equal(at_500.counts, small.counts)
    np.testing.assert_array_equal(at_500.nested_counts, small.nested_counts)
    with pytest.raises(ValueError, match=r"n must be one of the stored sample sizes \[100, 200, 500, 1000\]"):
        big.at_sample_size(300)
    # The report at n = 500 of the n = 1000 run is the report of the n = 500 run.
    one = _report.make_report([tmp_path / "n1000"], tmp_path / "r1", k=[2], names=["x"], n=[500])
    two = _report.make_report([tmp_path / "n500"], tmp_path / "r2", k=[2], names=["x"])
    assert (tmp_path / "r1" / "curves.csv").read_bytes() == (tmp_path / "r2" / "curves.csv").read_bytes()
    assert len(one.curves) == len(two.curves) == 3


def test_a_run_written_before_nested_counts_still_loads_and_reports(tmp_path: Path) -> None:
    certify_vectors(tmp_path / "run", n=300)
    folder = tmp_path / "run"
    # Make it a run of an earlier format: no nested counts, no sample sizes or rule in the metadata (and no stored
    # identity, which runs of that time did not have either).
    meta = json.loads((folder / "metadata.json").read_text())
    del meta["sample_sizes"], meta["stop_rule"]
    (folder / "metadata.json").write_text(json.dumps(meta))
    for path in [folder / "counts.npz", *sorted((folder / "chunks").glob("*.npz"))]:
        with np.load(path) as data:
            arrays = {key: data[key] for key in data.files
                      if key not in ("nested_counts", "identity", "identity_sha256")}
        np.savez(path, **arrays)
    old = _folder.load_run(folder)
    assert old.nested_counts is None and old.samples is None and old.sample_sizes is None
    fresh = _report.make_report([folder], tmp_path / "rep", k=[2])
    assert fresh.curves[0].n == 300
    with pytest.raises(ValueError, match="no nested counts"):
        old.at_sample_size(100)
    (folder / "counts.npz").unlink()  # chunks only, merged on load
    np.testing.assert_array_equal(_folder.load_run(folder).counts, old.counts)


EXPECTED_RULES = {
    "default": {"futility": "margin", "schedule": "fine", "spending": 0.75, "margin": 0.2, "bounds": "union"},
    "legacy": {"futility": "remaining", "schedule": "1-2-5", "spending": None, "margin": 0.2, "bounds": "union"},
    "betting": {"futility": "margin", "schedule": "every-block", "spending": 0.75, "margin": 0.2, "bounds": "betting"},
    "betting-cp": {"futility": "margin", "schedule": "every-block", "spending": 0.75, "margin": 0.2,
                   "bounds": "betting-cp"},
    "tuned-cp": {"futility": "margin", "schedule": "every-block", "spending": 0.5, "margin": 0.2, "bounds": "tuned-cp"},
}


@pytest.mark.parametrize("procedure", ["default", "legacy", "betting", "betting-cp", "tuned-cp"])
def test_sequential_runs_are_identical_across_batch_sizes_shards_and_resume(tmp_path: Path, procedure: str) -> None:
    rule = StopRule(**RULE, **PROCEDURES[procedure])
    reference = certify_vectors(tmp_path / "ref", stop_rule=rule)
    expected = EXPECTED_RULES[procedure]
    assert reference.complete and reference.metadata["stop_rule"] == {**RULE, **expected}
    looks = seq.look_schedule(1000, expected["schedule"])
    assert reference.metadata["sample_sizes"] == looks.tolist()
    stored = _folder.load_run(tmp_path / "ref")
    assert stored.samples.shape == (14,) and np.unique(stored.samples).size >= 2 and stored.samples.max() <= 1000
    # Each input's counts are those of its first samples[i] samples, and the rule stopped it there.
    model, _, _ = vector_problem(1, seed=0)
    guard = MultiGuard(model, 6, sigma=0.25)
    data = VectorData()
    for i in range(14):
        alone = guard.sample_counts(data.x[i : i + 1], int(stored.samples[i]), seed=3, index=[i], max_k_prime=2)
        np.testing.assert_array_equal(stored.counts[i], alone[0])
    replay = seq.sequential_certification(
        guard.sample_nested_counts(data.x, looks, seed=3)[:, :, 0], stored.labels, looks=looks, alpha=0.001, k=2,
        k_prime=1, sigma=0.25, radius=0.1, futility=expected["futility"], spending=expected["spending"],
        bounds=expected["bounds"],
    )
    np.testing.assert_array_equal(replay.samples, stored.samples)

    certify_vectors(tmp_path / "batch", stop_rule=rule, batch_size=77)
    for shard in range(3):
        certify_vectors(tmp_path / "shards", stop_rule=rule, shard=(shard, 3))
    partial = certify_vectors(tmp_path / "resumed", stop_rule=rule, shard=(0, 2))  # as if killed half-way
    assert not partial.complete
    certify_vectors(tmp_path / "resumed", stop_rule=rule, resume=True)
    for name in ("batch", "shards", "resumed"):
        other = _folder.load_run(tmp_path / name)
        for field in ("counts", "samples", "labels", "indices"):
            np.testing.assert_array_equal(getattr(other, field), getattr(stored, field), err_msg=f"{name}: {field}")
    # Another rule is another stored.
    with pytest.raises(ValueError, match="stop_rule"):
        certify_vectors(tmp_path / "ref", stop_rule=rule.replace(radius=0.2), resume=True)
    other = {"default": {"schedule": "1-2-5"}, "legacy": {"spending": 0.75}, "betting": {"bounds": "union"},
             "betting-cp": {"spending": 0.5}, "tuned-cp": {"bounds": "betting-cp"}}[procedure]
    with pytest.raises(ValueError, match="different settings"):  # another schedule or spending: another rule
        certify_vectors(tmp_path / "ref", stop_rule=rule.replace(**other), resume=True)
    with pytest.raises(ValueError, match="k_prime must be the sampler's k_prime"):
        certify_vectors(tmp_path / "other", stop_rule=rule.replace(k_prime=2))
    # A dict reads as a run's metadata does: what it leaves out takes the value of runs written before it existed.
    assert StopRule.coerce(RULE) == StopRule(**RULE, **PROCEDURES["legacy"])


@pytest.mark.parametrize("procedure", ["default", "legacy", "betting", "betting-cp", "tuned-cp"])
def test_a_sequential_report_uses_anytime_bounds_and_states_the_rule(tmp_path: Path, procedure: str) -> None:
    """A run is reported with the bounds of its own rule: its looks and its spending."""
    rule = {**RULE, **PROCEDURES[procedure]}
    certify_vectors(tmp_path / "seq", stop_rule=StopRule(**rule))
    stored = _folder.load_run(tmp_path / "seq")
    result = _report.make_report([stored], tmp_path / "rep", k=[2], k_prime=[1, 2], methods=["multiguard"],
                                radius_grid="0,0.1,0.3")
    looks = seq.look_schedule(1000, rule.get("schedule", "fine"))
    spending = rule.get("spending", 0.75)
    for curve in result.curves:
        lower, upper = seq.anytime_label_probability_bounds(stored.counts_for(curve.k_prime), stored.samples, 0.001,
                                                             looks, spending, bounds=rule.get("bounds", "union"))
        sizes = _topk.certified_intersection_size(lower, upper, stored.labels, k=2, k_prime=curve.k_prime, sigma=0.25,
                                                 radius=curve.radius)
        np.testing.assert_allclose(curve.f1, _metrics.certified_metrics(sizes, stored.labels, 2).f1)
    assert "sequential: sampling stopped per input once its certified size at R = 0.1" in result.summary
    assert {"default": "margin (gamma = 0.2), looks fine, 0.75 of alpha spent at the last look",
            "legacy": "remaining, looks 1-2-5, alpha spent in equal shares",
            "betting": "looks every-block, betting bounds: beta-binomial mixture confidence sequences",
            "betting-cp": "looks every-block, betting-cp bounds: beta-binomial mixture confidence sequences, and at "
                          "the last look Clopper-Pearson at 0.75 of alpha",
            "tuned-cp": "looks every-block, tuned-cp bounds: mixture confidence sequences tuned to the sizes up to "
                        "the last look, and at the last look Clopper-Pearson at 0.5 of alpha",
            }[procedure] in result.summary
    assert f"mean {stored.samples.mean():.0f}" in result.summary
    with pytest.raises(ValueError, match="it is sequential"):
        stored.at_sample_size(100)


# ------------------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_cli_report_at_n_equals_a_run_with_that_n(tmp_path_factory, tmp_path: Path, capsys) -> None:
    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    common = ["--max-k-prime", "1", "--num-inputs", "12", "--chunk-size", "5", "--seed", "3", "--device", "cpu",
              "--quiet"]
    run("certify", "--checkpoint", checkpoint, "--num-samples", "1000", *common, "--out", str(tmp_path / "n1000"))
    run("certify", "--checkpoint", checkpoint, "--num-samples", "500", *common, "--out", str(tmp_path / "n500"))
    report_args = ["--k", "3", "--radii", "0:1:0.05", "--names", "demo", "--quiet"]
    run("report", str(tmp_path / "n1000"), "--n", "500", *report_args, "--out", str(tmp_path / "r1"))
    run("report", str(tmp_path / "n500"), *report_args, "--out", str(tmp_path / "r2"))
    assert (tmp_path / "r1" / "curves.csv").read_bytes() == (tmp_path / "r2" / "curves.csv").read_bytes()
    code, text, _ = run_in_process(capsys, "report", str(tmp_path / "n1000"), "--n", "100", "200", "500", "1000",
                                   *report_args, "--out", str(tmp_path / "r3"))
    rows = [line for line in (tmp_path / "r3" / "summary.md").read_text().splitlines() if line.startswith("| MultiG")]
    assert {row.split("|")[2].strip() for row in rows} == {"100", "200", "500", "1000"}  # the n column
    assert code == 0 and "wrote" in text
    assert_one_line_error_in_process(
        run_in_process(capsys, "report", str(tmp_path / "n1000"), "--n", "300", "--out", str(tmp_path / "r4")),
        "n must be one of the stored sample sizes",
    )


@pytest.mark.slow
def test_cli_sequential_certify_is_identical_after_kill_9_and_in_shards(
    tmp_path_factory, tmp_path: Path, capsys
) -> None:
    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    args = ["certify", "--checkpoint", checkpoint, "--num-samples", "1000", "--max-k-prime", "2", "--num-inputs",
            "20", "--chunk-size", "2", "--seed", "3", "--stop-at-radius", "0.25", "--k", "2", "--device", "cpu"]
    reference = tmp_path / "reference"
    text = run(*args, "--out", str(reference)).stdout
    assert "sequential at R = 0.25 (at most n = 1000)" in text
    meta = json.loads((reference / "metadata.json").read_text())
    assert meta["stop_rule"] == {"radius": 0.25, "k": 2, "k_prime": 1, "alpha": 0.001, "futility": "margin",
                                 "schedule": "fine", "spending": 0.75, "margin": 0.2, "bounds": "union"}
    samples = load_counts(reference)["samples"]
    assert samples.shape == (20,) and samples.mean() < 1000

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*command(), *args, "--quiet", "--batch-size", "300", "--out", str(killed)], env=env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not list((killed / "chunks").glob("chunk-*.npz")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 1 <= len(list((killed / "chunks").glob("chunk-*.npz"))) < 10
    run(*args, "--quiet", "--out", str(killed), "--resume")
    assert_same_counts(reference, killed)

    shards = tmp_path / "shards"
    procs = [subprocess.Popen([*command(), *args, "--quiet", "--out", str(shards), "--shard", f"{i}/2"], env=env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    assert_same_counts(reference, shards)
    code, summary, _ = run_in_process(capsys, "report", str(reference), "--k", "2", "--out", str(tmp_path / "rep"))
    assert code == 0 and "sequential: sampling stopped per input" in summary


@pytest.mark.parametrize("option", [("--schedule", "1-2-5"), ("--spending", "equal"), ("--futility-margin", "0.3")])
def test_cli_procedure_options_without_stop_at_radius_are_refused(tmp_path: Path, capsys, option: tuple) -> None:
    """--schedule, --spending and --futility-margin only set the stopping rule: a fixed-n certify refuses them
    (as --k and --futility) before any folder is written."""
    checkpoint = Path(__file__).parents[1] / "fixtures" / "old_run" / "model.pt"
    result = run_in_process(capsys, "certify", "--checkpoint", str(checkpoint), "--num-samples", "100",
                            "--num-inputs", "2", "--device", "cpu", *option, "--out", str(tmp_path / "r"))
    assert_one_line_error_in_process(result, option[0], "--stop-at-radius")
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_predict_stops_early(tmp_path_factory, tmp_path: Path, capsys) -> None:
    from PIL import Image

    from multiguard.data import get_dataset

    images = get_dataset("multidigits", split="test", size=3, seed=0)
    paths = []
    for i in range(3):
        path = tmp_path / f"digit{i}.png"
        Image.fromarray((images[i][0][0].numpy() * 255).round().astype(np.uint8), mode="L").save(path)
        paths.append(str(path))
    checkpoint = str(tiny_checkpoint(tmp_path_factory))
    common = ["predict", "--checkpoint", checkpoint, *paths, "--k", "2", "--n", "2000", "--device", "cpu", "--json"]
    code, out, _ = run_in_process(capsys, *common, "--stop-at-radius", "0.1")
    assert code == 0
    sequential = json.loads(out)
    code, out, _ = run_in_process(capsys, *common)
    fixed = json.loads(out)
    assert [p["labels"] for p in sequential] == [p["labels"] for p in fixed]
    assert all(p["samples"] <= 2000 for p in sequential) and [p["samples"] for p in fixed] == [2000] * 3
    code, text, _ = run_in_process(capsys, *common[:-1], "--stop-at-radius", "0.1")
    assert code == 0 and "samples)" in text
    mean = sum(p["samples"] for p in sequential) / 3
    assert f"sequential at R = 0.1 (at most n = 2000): 3 image(s), {mean:.0f} estimation samples per image" in text
    assert " s for all of them" in text and all(p["batch_seconds"] > 0 for p in sequential)
    # The stopping rule's options reach predict: the legacy rule stops each image at a 1-2-5 look.
    code, out, _ = run_in_process(capsys, *common, "--stop-at-radius", "0.1", "--futility", "remaining",
                                  "--schedule", "1-2-5", "--spending", "equal")
    assert code == 0 and {p["samples"] for p in json.loads(out)} <= {100, 200, 500, 1000, 2000}
