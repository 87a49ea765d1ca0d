"""The thresholded certificate's math (multiguard.certificates.thresholded): metric bounds against a brute force over
every
predicted set the certificate allows, radii against their closed forms at the edges, the joint guarantee over
labels calibrated on simulated counts of known probability (with a control that drops the correction), and
the threshold rule against a direct search."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import f1_score

from multiguard.certificates.sequential import DEFAULT_FUTILITY, DEFAULT_SCHEDULE, DEFAULT_SPENDING, look_schedule
from multiguard.certificates.thresholded import (
    DEFAULT_Q,
    OFF,
    ON,
    UNDECIDED,
    anytime_on_probability_bounds,
    certified_f1_thresholds,
    certified_label_radii,
    certified_sets,
    certify_thresholded,
    f1_best_thresholds,
    label_status,
    on_probability_bounds,
    sequential_thresholded_certification,
    set_metric_bounds,
    thresholded_metrics,
    thresholded_stopping_rule,
)

# ------------------------------------------------------------------------------------------ brute force


def metrics_of_set(predicted: tuple[bool, ...], truth: tuple[bool, ...]) -> tuple[float, float, float, float]:
    """Precision, recall, F1, Hamming accuracy of one predicted set, by the definitions in docs/certificate.md
    (a ratio with denominator 0 is 1 when prediction and truth are both empty, else 0)."""
    tp = sum(p and t for p, t in zip(predicted, truth, strict=True))
    size, d = sum(predicted), sum(truth)
    both_empty = size == 0 and d == 0
    precision = tp / size if size else (1.0 if both_empty else 0.0)
    recall = tp / d if d else (1.0 if both_empty else 0.0)
    f1 = 2 * tp / (size + d) if size + d else 1.0
    hamming = sum(p == t for p, t in zip(predicted, truth, strict=True)) / len(truth)
    return precision, recall, f1, hamming


def brute_force(certified_on: np.ndarray, possibly_on: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """The least of each metric over every set S with certified_on <= S <= possibly_on: ``(4,)``."""
    free = np.flatnonzero(possibly_on & ~certified_on)
    worst = np.full(4, np.inf)
    for choice in itertools.product([False, True], repeat=free.size):
        predicted = certified_on.copy()
        predicted[free] = choice
        worst = np.minimum(worst, metrics_of_set(tuple(predicted.tolist()), tuple(truth.tolist())))
    return worst


@pytest.mark.parametrize("seed", range(3))
def test_metric_bounds_equal_the_worst_set_between_a_and_b(seed: int) -> None:
    rng = np.random.default_rng(seed)
    checked_empty_truth = checked_empty_a = 0
    for _ in range(400):
        c = int(rng.integers(1, 7))
        status = rng.choice([ON, UNDECIDED, OFF], size=c, p=rng.dirichlet(np.ones(3)))
        truth = rng.random(c) < rng.uniform(0, 1)
        a, b = status == ON, status != OFF
        got = set_metric_bounds(a[None, None], b[None, None], truth[None])
        expected = brute_force(a, b, truth)
        for key, value in zip(("precision", "recall", "f1", "hamming"), expected, strict=True):
            assert got[key].shape == (1, 1)
            assert got[key][0, 0] == pytest.approx(value, abs=1e-12), (key, status, truth)
        checked_empty_truth += not truth.any()
        checked_empty_a += not a.any()
    assert checked_empty_truth > 10 and checked_empty_a > 40  # the conventions' corners are exercised


def test_metric_bounds_from_radii_across_a_grid() -> None:
    rng = np.random.default_rng(11)
    num, c = 30, 5
    on = np.where(rng.random((num, c)) < 0.4, rng.exponential(0.5, (num, c)), 0.0)
    off = np.where((on == 0) & (rng.random((num, c)) < 0.6), rng.exponential(0.5, (num, c)), 0.0)
    on[0, 0], off[0, 1] = np.inf, np.inf  # bounds at 1 and 0: decided at every radius
    truth = rng.random((num, c)) < 0.4
    grid = np.array([0.0, 0.1, 0.3, 0.7, 2.0])
    metrics = thresholded_metrics(on, off, truth, grid)
    a, b = certified_sets(on, off, grid)
    assert a.shape == b.shape == (num, grid.size, c)
    expected = np.array([[brute_force(a[i, r], b[i, r], truth[i]) for r in range(grid.size)] for i in range(num)])
    for idx, key in enumerate(("precision", "recall", "f1", "hamming")):
        assert getattr(metrics, key) == pytest.approx(expected[:, :, idx].mean(axis=0), abs=1e-12)
    assert metrics.certified_on == pytest.approx((on[:, None, :] > grid[None, :, None]).sum(-1).mean(0))
    assert (np.diff(metrics.f1) <= 1e-12).all()  # a larger radius never certifies more
    single = thresholded_metrics(on, off, truth, 0.3)
    assert np.ndim(single.f1) == 0 and single.f1 == pytest.approx(metrics.f1[2])
    assert a[0, :, 0].all() and not b[0, :, 1].any()


# ---------------------------------------------------------------------------------------------- radii


def test_radii_closed_forms_and_edges() -> None:
    lower = np.array([0.0, 0.3, 0.5, 0.8, 1.0, 0.1, 0.2])
    upper = np.array([0.0, 0.4, 0.5, 0.9, 1.0, 0.6, 0.45])
    for q in (0.5, 0.3, 0.7):
        on, off = certified_label_radii(lower, upper, sigma=0.5, q=q)
        for i in range(lower.size):
            z_lower = -np.inf if lower[i] == 0 else stats.norm.ppf(lower[i])
            z_upper = np.inf if upper[i] == 1 else stats.norm.ppf(upper[i])
            expect_on = 0.5 * (z_lower - stats.norm.ppf(q)) if lower[i] > 0 else -np.inf
            expect_off = 0.5 * (stats.norm.ppf(q) - z_upper) if upper[i] < 1 else -np.inf
            assert on[i] == pytest.approx(max(expect_on, 0.0)) if np.isfinite(expect_on) else on[i] in (0.0, np.inf)
            assert off[i] == pytest.approx(max(expect_off, 0.0)) if np.isfinite(expect_off) else True
        assert on[4] == np.inf and off[0] == np.inf  # bounds at 1 / 0: certified at every radius
        assert on[0] == 0.0 and off[4] == 0.0 and not np.isnan(on).any() and not np.isnan(off).any()
        assert not ((on > 0) & (off > 0)).any()
    on, off = certified_label_radii(lower, upper, sigma=0.5)  # q = 1/2: a label at exactly q is undecided
    assert on[2] == 0.0 and off[2] == 0.0
    status = label_status(on, off, [0.0, 0.2])
    assert status.shape == (2, 7) and status.dtype == np.int8
    assert status[0].tolist() == [OFF, OFF, UNDECIDED, ON, ON, UNDECIDED, OFF]


def test_certify_thresholded_in_one_call_and_shapes() -> None:
    counts = np.array([[1000, 0, 700, 480, 520], [3, 990, 500, 200, 1000]])
    cert = certify_thresholded(counts, 1000, alpha=0.001, sigma=0.25)
    lower, upper = on_probability_bounds(counts, 1000, 0.001)
    on, off = certified_label_radii(lower, upper, sigma=0.25, q=DEFAULT_Q)
    assert np.array_equal(cert.on_radius, on) and np.array_equal(cert.off_radius, off)
    assert cert.status(0.0)[0].tolist() == [ON, OFF, ON, UNDECIDED, UNDECIDED]
    a, b = cert.sets(np.array([0.0, 0.5]))
    assert a.shape == (2, 2, 5)
    row_on, row_off = certified_label_radii(lower[0], upper[0], sigma=0.25)
    assert row_on.shape == (5,) and np.array_equal(row_on, on[0])


def test_both_sides_are_clopper_pearson_at_alpha_over_2c() -> None:
    counts = np.array([0, 1, 37, 500, 999, 1000])
    n, alpha, c = 1000, 0.01, 6
    lower, upper = on_probability_bounds(counts, n, alpha)
    level = alpha / (2 * c)
    for i, k in enumerate(counts):
        expect_lower = 0.0 if k == 0 else stats.beta.ppf(level, k, n - k + 1)
        expect_upper = 1.0 if k == n else stats.beta.ppf(1 - level, k + 1, n - k)
        assert lower[i] == pytest.approx(expect_lower, rel=1e-12)
        assert upper[i] == pytest.approx(expect_upper, rel=1e-12)
    looks = np.array([100, 200, 500, 1000])
    any_lower, any_upper = anytime_on_probability_bounds(counts, n, alpha, looks)
    level = alpha / (2 * c * looks.size)
    assert any_lower[3] == pytest.approx(stats.beta.ppf(level, 500, 501), rel=1e-12)
    assert any_upper[3] == pytest.approx(stats.beta.ppf(1 - level, 501, 500), rel=1e-12)
    # Spending weights w_j (a sequential rule's): both sides at alpha w_j / (2c) at look j; here three quarters
    # of alpha at the last look (1000) and one twelfth at each earlier one (200 is read below).
    spent_lower, spent_upper = anytime_on_probability_bounds(counts, n, alpha, looks, 0.75)
    assert spent_lower[3] == pytest.approx(stats.beta.ppf(alpha * 0.75 / (2 * c), 500, 501), rel=1e-12)
    assert spent_upper[3] == pytest.approx(stats.beta.ppf(1 - alpha * 0.75 / (2 * c), 501, 500), rel=1e-12)
    early_lower, _ = anytime_on_probability_bounds([37], 200, alpha, looks, 0.75)
    assert early_lower[0] == pytest.approx(stats.beta.ppf(alpha * 0.25 / 3 / (2 * 1), 37, 164), rel=1e-12)
    with pytest.raises(ValueError, match="^spending "):  # a fixed-n certificate has no looks to spend over
        certify_thresholded(counts, n, alpha=alpha, sigma=0.5, spending=0.75)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: on_probability_bounds([3, 4], 10, 1.5), "alpha"),
        (lambda: on_probability_bounds([3, 11], 10, 0.1), "counts"),
        (lambda: certified_label_radii([0.5], [0.6], sigma=0.0), "sigma"),
        (lambda: certified_label_radii([0.5], [0.6], sigma=1.0, q=1.0), "q"),
        (lambda: certified_label_radii([0.7], [0.6], sigma=1.0), "lower"),
        (lambda: certified_label_radii([0.5, 0.2], [0.6], sigma=1.0), "upper"),
        (lambda: certified_sets([1.0], [1.0], 0.0), "on_radius"),
        (lambda: certified_sets([1.0], [0.0], -1.0), "radius"),
        (lambda: thresholded_metrics([[1.0, 0.0]], [[0.0, 1.0]], [[1, 2]], 0.0), "labels"),
        (lambda: f1_best_thresholds([[0.1, np.inf]], [[1, 0]]), "scores"),
    ],
)
def test_bad_arguments_are_refused_naming_them(call, name: str) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match=f"^{name} "):
        call()


# ------------------------------------------------------------------------------------------ calibration


def allowed(rate: float, trials: int) -> float:
    """Largest failure fraction consistent with a true rate <= ``rate`` (one-sided binomial test at 1e-6)."""
    return stats.binom.ppf(1 - 1e-6, trials, rate) / trials


def exact_radii(p: np.ndarray, sigma: float, q: float) -> tuple[np.ndarray, np.ndarray]:
    """The radii the exact on-probabilities give (the largest any certificate may claim for a half-space)."""
    on = np.maximum(sigma * (stats.norm.ppf(p) - stats.norm.ppf(q)), 0.0)
    off = np.maximum(sigma * (stats.norm.ppf(q) - stats.norm.ppf(p)), 0.0)
    return on, off


def wrong_statements(on: np.ndarray, off: np.ndarray, p: np.ndarray, sigma: float, q: float) -> np.ndarray:
    """``(trials,)``: some label certified on or off beyond the radius its exact probability allows."""
    exact_on, exact_off = exact_radii(p, sigma, q)
    slack = 1e-9
    return ((on > exact_on * (1 + slack) + slack) | (off > exact_off * (1 + slack) + slack)).any(axis=1)


@pytest.mark.parametrize("q", [0.5, 0.3])
@pytest.mark.parametrize("alpha", [0.01, 0.05])
def test_joint_guarantee_over_labels_is_calibrated_and_the_uncorrected_bounds_are_not(q: float, alpha: float) -> None:
    """Simulated on-counts of known p (labels at q, near it, and far); failure = any label's statement is
    false. The certificate fails at most alpha; the same counts read with one-sided bounds at alpha / c (no
    correction for choosing the side from the counts) fail visibly more often."""
    rng = np.random.default_rng(int(100 * q + 1000 * alpha))
    c, n, trials, sigma = 8, 1000, 40_000, 0.5
    p = np.concatenate([np.full(4, q), q + rng.uniform(-0.03, 0.03, 2), rng.uniform(0.01, 0.99, 2)])
    counts = rng.binomial(n, p, size=(trials, c))
    cert = certify_thresholded(counts, n, alpha=alpha, sigma=sigma, q=q)
    rate = wrong_statements(cert.on_radius, cert.off_radius, p, sigma, q).mean()

    from multiguard.certificates.bounds import label_probability_bounds

    lower, upper = label_probability_bounds(counts, n, alpha)  # one side per label at alpha / c: no correction
    on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
    uncorrected = wrong_statements(on, off, p, sigma, q).mean()
    print(f"\n[thresholded] calibration q={q} alpha={alpha} c={c} n={n} trials={trials}: failure rate "
          f"{rate:.5f} (allowed {allowed(alpha, trials):.5f}); one-sided at alpha/c: {uncorrected:.5f}")
    assert rate <= allowed(alpha, trials)
    if alpha == 0.05:  # at 0.01 Clopper-Pearson's conservatism hides the factor 2 from 40,000 trials
        assert uncorrected > allowed(alpha, trials)


def nested_counts(rng: np.random.Generator, p: np.ndarray, looks: np.ndarray, trials: int) -> np.ndarray:
    """``(trials, J, c)`` cumulative on-counts of Binomial samples with probabilities p, read at each look."""
    steps = np.diff(np.concatenate([[0], looks]))
    return rng.binomial(steps[None, :, None], p[None, None, :], size=(trials, looks.size, p.size)).cumsum(axis=1)


SEQUENTIAL_PROCEDURES = {
    "remaining": dict(futility="remaining", schedule="1-2-5", spending=None),
    "projected": dict(futility="projected", schedule="1-2-5", spending=None),
    # the default of a sequential run (multiguard.certificates.stop_rule.StopRule): fine looks, 3/4 of alpha at the
    # last one
    "default": dict(futility=DEFAULT_FUTILITY, schedule=DEFAULT_SCHEDULE, spending=DEFAULT_SPENDING),
    # issue 31: the betting sequences at 1/4 of alpha at every block, Clopper-Pearson at 3/4 at the last look
    "betting-cp": dict(futility=DEFAULT_FUTILITY, schedule="every-block", spending=0.75, bounds="betting-cp"),
    # the tuned sequences alone, and at 1/2 of alpha with Clopper-Pearson at the other 1/2 at the last look
    "tuned": dict(futility=DEFAULT_FUTILITY, schedule="every-block", spending=None, bounds="tuned"),
    "tuned-cp": dict(futility=DEFAULT_FUTILITY, schedule="every-block", spending=0.5, bounds="tuned-cp"),
}


@pytest.mark.parametrize("p", [[0.5], [0.5, 0.5, 0.52, 0.9, 0.1]], ids=["one label at q", "five labels"])
@pytest.mark.parametrize("procedure", list(SEQUENTIAL_PROCEDURES))
def test_calibration_under_the_sequential_stopping_rule(p: list[float], procedure: str) -> None:
    """The certificate at the look where :func:`thresholded_stopping_rule` stops fails at most alpha, for the
    rules of older runs (1-2-5 looks, equal shares) and the default one (fine looks, unequal spending, the
    margin rule). With one label at q (the rule stops as soon as it is decided, so every look is a chance to be
    wrong), the fixed-n bounds read under the same rule fail visibly more often: the anytime correction is
    needed."""
    rng = np.random.default_rng(3 + len(p))
    p_arr = np.array(p)
    trials, sigma, q, alpha, radius = 20_000, 0.5, 0.5, 0.05, 0.0
    settings = SEQUENTIAL_PROCEDURES[procedure]
    futility, spending = settings["futility"], settings["spending"]
    looks = look_schedule(1000, settings["schedule"])
    nested = nested_counts(rng, p_arr, looks, trials)
    cert = sequential_thresholded_certification(nested, looks=looks, alpha=alpha, sigma=sigma, q=q, radius=radius,
                                                futility=futility, spending=spending,
                                                bounds=settings.get("bounds", "union"))
    rate = wrong_statements(cert.on_radius, cert.off_radius, p_arr, sigma, q).mean()
    # The control: the same stopping rule, reading fixed-n bounds at every look (no correction for the looks).
    open_rows = np.ones(trials, dtype=bool)
    naive_on = np.zeros(nested.shape[::2])
    naive_off = np.zeros(nested.shape[::2])
    for j, size in enumerate(looks):
        lower, upper = on_probability_bounds(nested[:, j], int(size), alpha)
        on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
        stop = ((on > radius) | (off > radius)).all(axis=1) | (j == looks.size - 1)
        take = open_rows & stop
        naive_on[take], naive_off[take] = on[take], off[take]
        open_rows &= ~stop
    naive = wrong_statements(naive_on, naive_off, p_arr, sigma, q).mean()
    print(f"\n[thresholded] sequential calibration p={p} futility={futility} spending={spending} alpha={alpha} "
          f"looks={looks.tolist()}: "
          f"anytime {rate:.5f} (allowed {allowed(alpha, trials):.5f}), mean samples {cert.n.mean():.0f}; fixed-n "
          f"bounds under the same rule: {naive:.5f}")
    assert rate <= allowed(alpha, trials)
    if len(p) == 1:
        assert naive > allowed(alpha, trials)


def test_sequential_replay_and_the_remaining_rule_never_gives_up_too_early() -> None:
    rng = np.random.default_rng(12)
    trials, sigma, q, alpha, radius = 400, 0.5, 0.5, 0.001, 1.0
    looks = np.array([100, 200, 500, 1000])
    far = np.array([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])  # all decided before the last look
    near = np.array([0.99, 0.02, 0.6, 0.45, 0.8, 0.3])  # some decidable only with many samples, or never
    nested = np.concatenate([nested_counts(rng, far, looks, trials // 2), nested_counts(rng, near, looks, trials // 2)])
    cert = sequential_thresholded_certification(nested, looks=looks, alpha=alpha, sigma=sigma, q=q, radius=radius)
    stopped_at = np.searchsorted(looks, cert.n)
    all_decided = ((cert.on_radius > radius) | (cert.off_radius > radius)).all(axis=1)
    gave_up = (cert.n < looks[-1]) & ~all_decided
    print(f"\n[thresholded] sequential replay: stopped with every label decided {all_decided.sum()}, gave up early "
          f"{gave_up.sum()}, ran to the last look {(cert.n == looks[-1]).sum()} (of {trials})")
    assert (all_decided & (cert.n < looks[-1])).any() and gave_up.any() and (cert.n == looks[-1]).any()
    for row in range(trials):
        j = stopped_at[row]
        assert np.array_equal(cert.on_counts[row], nested[row, j])
        # A look-by-look check of the rule: it did not stop earlier, and it stopped here.
        for earlier in range(j + 1):
            decision = thresholded_stopping_rule(nested[row, earlier][None], int(looks[earlier]), looks=looks,
                                                 alpha=alpha, sigma=sigma, q=q, radius=radius)
            assert decision.stop[0] == (earlier == j)
        # 'remaining': labels undecided at the stop are decided at no later look.
        lower, upper = anytime_on_probability_bounds(nested[row, j:], looks[j:], alpha, looks)
        on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
        decided_later = (on > radius) | (off > radius)
        decided_now = (cert.on_radius[row] > radius) | (cert.off_radius[row] > radius)
        assert not (decided_later & ~decided_now).any()


# ------------------------------------------------------------------------------------------- thresholds


def test_f1_best_thresholds_match_a_direct_search() -> None:
    rng = np.random.default_rng(5)
    m, c = 200, 4
    labels = rng.random((m, c)) < 0.3
    labels[:, 3] = False  # no positive example: keeps the default
    scores = np.round(rng.normal(size=(m, c)) + 1.5 * labels, 1)  # rounded: many ties
    tau = f1_best_thresholds(scores, labels, default=0.0)
    assert tau[3] == 0.0
    for label in range(3):
        values = np.unique(scores[:, label])
        candidates = np.concatenate([[values[0] - 1], (values[1:] + values[:-1]) / 2])
        best = max(f1_score(labels[:, label], scores[:, label] > t) for t in candidates)
        assert f1_score(labels[:, label], scores[:, label] > tau[label]) == pytest.approx(best)
        assert not np.isin(tau[label], scores[:, label])  # a cut between scores: '>' and '>=' agree


def test_certified_f1_thresholds_match_a_direct_search() -> None:
    """Each label's threshold maximises its certified F1 summed over the radii, computed here per candidate by
    certifying all c labels at that candidate (the level alpha / (2c) of the real certificate)."""
    rng = np.random.default_rng(8)
    m, g, c, n, alpha, sigma = 60, 7, 4, 200, 0.01, 0.5
    labels = rng.random((m, c)) < 0.4
    labels[:, 3] = False
    candidates = np.sort(rng.normal(size=(g, c)), axis=0)
    p = np.clip(0.5 + 0.45 * np.where(labels, 1, -1)[:, None, :] * rng.random((m, 1, c))
                - 0.1 * candidates[None], 0, 1)
    on_counts = rng.binomial(n, p)  # (m, g, c)
    radii = (0.0, 0.3)
    tau = certified_f1_thresholds(candidates, on_counts, n, labels, alpha=alpha, sigma=sigma, radii=radii)
    assert tau[3] == 0.0
    scores = np.zeros((g, c))
    for cand in range(g):
        cert = certify_thresholded(on_counts[:, cand], n, alpha=alpha, sigma=sigma)
        for radius in radii:
            a, b = cert.sets(radius)
            for label in range(c):
                tp = int((a[:, label] & labels[:, label]).sum())
                fp = int((b[:, label] & ~labels[:, label]).sum())
                fn = int((~a[:, label] & labels[:, label]).sum())
                scores[cand, label] += 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    for label in range(3):
        chosen = np.flatnonzero(candidates[:, label] == tau[label])
        assert chosen.size == 1 and scores[chosen[0], label] == pytest.approx(scores[:, label].max())
    assert (scores[:, :3].max(axis=0) > scores[:, :3].min(axis=0)).all()  # the choice matters for every label
