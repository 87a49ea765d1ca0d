"""multiguard.certificates.topk against a plain loop, against closed forms and published radii, and its argument
checks."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import plain_loop
import pytest
from scipy import stats

from multiguard.certificates import topk as _topk
from multiguard.certificates.bounds import label_probability_bounds
from multiguard.certificates.jia import jia_certified_intersection_size, jia_certified_radii
from multiguard.certificates.metrics import certified_metrics
from multiguard.certificates.topk import certified_intersection_size, certified_radii, intersection_size_from_radii

DATA = Path(__file__).parents[1] / "fixtures"


def simulate_counts(rng: np.random.Generator, num: int, c: int, k_prime: int, n: int) -> np.ndarray:
    """Counts of a simulated top-k' base classifier: every row sums to n * k' and every count is <= n."""
    counts = np.zeros((num, c), dtype=np.int64)
    for row in range(num):
        margin = rng.uniform(0.0, 4.0)
        mean = rng.normal(size=c) * margin
        scores = mean + rng.normal(size=(n, c))
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k_prime]
        counts[row] = np.bincount(top.ravel(), minlength=c)
    return counts


def random_case(rng: np.random.Generator, num: int = 8):
    c = int(rng.integers(2, 16))
    k_prime = int(rng.integers(1, min(c, 4) + 1))
    k = int(rng.integers(1, min(c, 8) + 1))
    n = int(rng.choice([20, 100, 500, 2000]))
    alpha = float(rng.choice([1e-3, 1e-2, 0.1]))
    sigma = float(rng.choice([0.12, 0.25, 0.5, 1.0]))
    counts = simulate_counts(rng, num, c, k_prime, n)
    # L: sometimes the most frequent labels (large certificates), sometimes a random set (small ones).
    labels = np.zeros((num, c), dtype=bool)
    for row in range(num):
        d = int(rng.integers(0, c + 1))
        if rng.random() < 0.5:
            chosen = np.argsort(-counts[row] - rng.random(c))[:d]
        else:
            chosen = rng.choice(c, size=d, replace=False)
        labels[row, chosen] = True
    lower, upper = label_probability_bounds(counts, n, alpha)
    return dict(counts=counts, labels=labels, lower=lower, upper=upper, c=c, k=k, k_prime=k_prime, n=n,
                alpha=alpha, sigma=sigma)


RADII = np.array([0.0, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("second_terms", [True, False])
def test_sizes_equal_the_plain_loop_exactly(seed: int, second_terms: bool) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):  # 6 seeds x 40 cases x 8 inputs x 2 = 3840 inputs
        case = random_case(rng)
        got = certified_intersection_size(
            case["lower"], case["upper"], case["labels"], k=case["k"], k_prime=case["k_prime"],
            sigma=case["sigma"], radius=RADII, second_terms=second_terms,
        )
        for row in range(case["labels"].shape[0]):
            lower, upper, labels = case["lower"][row].tolist(), case["upper"][row].tolist(), case["labels"][row]
            expected = [
                plain_loop.intersection_size(
                    lower, upper, labels.tolist(), k=case["k"], k_prime=case["k_prime"], sigma=case["sigma"],
                    radius=float(r), second_terms=second_terms,
                )
                for r in RADII
            ]
            assert got[row].tolist() == expected, (case, row)


@pytest.mark.parametrize("seed", range(3))
def test_radii_match_the_plain_loop(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    checked = finite = 0
    for _ in range(25):
        case = random_case(rng, num=4)
        radii = certified_radii(
            case["lower"], case["upper"], case["labels"], k=case["k"], k_prime=case["k_prime"], sigma=case["sigma"]
        )
        assert radii.shape == (4, case["k"])
        for row in range(4):
            for e in range(1, case["k"] + 1):
                expected = plain_loop.radius(
                    case["lower"][row].tolist(), case["upper"][row].tolist(), case["labels"][row].tolist(),
                    k=case["k"], k_prime=case["k_prime"], sigma=case["sigma"], e_prime=e,
                )
                if math.isinf(expected):
                    assert radii[row, e - 1] == math.inf
                else:
                    assert abs(radii[row, e - 1] - expected) <= 1e-6
                    finite += expected > 0
                checked += 1
    assert finite > 20  # the cases exercise real bisections, not only zeros


def test_single_row_and_scalar_radius_shapes() -> None:
    counts = np.array([900, 850, 100, 80, 60, 10])
    lower, upper = label_probability_bounds(counts, 1000, 0.001)
    labels = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    radii = certified_radii(lower, upper, labels, k=2, k_prime=2, sigma=0.5)
    assert radii.shape == (2,)
    size = certified_intersection_size(lower, upper, labels, k=2, k_prime=2, sigma=0.5, radius=0.1)
    assert np.ndim(size) == 0 and size == 2
    batch = certified_intersection_size(lower[None], upper[None], labels[None], k=2, k_prime=2, sigma=0.5,
                                        radius=0.1)
    assert batch.shape == (1,)


# ------------------------------------------------------------------------------------------- bounds


def test_bounds_are_clopper_pearson_at_alpha_over_c_with_n_not_the_sum() -> None:
    counts = np.array([[1000, 700, 300, 0, 1000], [3, 997, 0, 1000, 1000]])  # k' = 3: rows sum to 3000
    n, alpha = 1000, 0.01
    lower, upper = label_probability_bounds(counts, n, alpha)
    level = alpha / 5
    for (row, col), value in np.ndenumerate(counts):
        expected_low = 0.0 if value == 0 else stats.beta.ppf(level, value, n - value + 1)
        expected_up = 1.0 if value == n else stats.beta.ppf(1 - level, value + 1, n - value)
        assert lower[row, col] == pytest.approx(expected_low, abs=1e-12)
        assert upper[row, col] == pytest.approx(expected_up, abs=1e-12)
    assert lower[0, 3] == 0.0 and upper[0, 0] == 1.0
    assert (lower <= counts / n).all() and (upper >= counts / n).all()
    # The binomial n is the number of samples: with n = sum of counts the bounds would be looser / wrong.
    wrong_lower, _ = label_probability_bounds(counts, 3000, alpha)
    assert (wrong_lower[0, :3] < lower[0, :3]).all()


def test_bounds_reject_bad_arguments() -> None:
    good = np.array([[5, 3, 2]])
    cases = [
        (dict(counts=good, n=0, alpha=0.01), "n"),
        (dict(counts=good, n=2.5, alpha=0.01), "n"),
        (dict(counts=good, n=10, alpha=0.0), "alpha"),
        (dict(counts=good, n=10, alpha=1.0), "alpha"),
        (dict(counts=np.array([[5, -1, 2]]), n=10, alpha=0.01), "counts"),
        (dict(counts=np.array([[11, 0, 2]]), n=10, alpha=0.01), "counts"),
        (dict(counts=np.array([[1.5, 0, 2]]), n=10, alpha=0.01), "counts"),
        (dict(counts=np.array([[np.nan, 0, 2]]), n=10, alpha=0.01), "counts"),
        (dict(counts=np.zeros((2, 2, 2)), n=10, alpha=0.01), "counts"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=name):
            label_probability_bounds(**kwargs)


# --------------------------------------------------------------------------------------- reductions


def test_cohen_closed_form_for_k_and_k_prime_one() -> None:
    rng = np.random.default_rng(7)
    counts = simulate_counts(rng, 300, 10, 1, 1000)
    lower, upper = label_probability_bounds(counts, 1000, 0.001)
    top = counts.argmax(axis=1)
    labels = np.zeros_like(counts, dtype=bool)
    labels[np.arange(300), top] = True
    sigma = 0.5
    radii = certified_radii(lower, upper, labels, k=1, k_prime=1, sigma=sigma)[:, 0]
    p_a = lower[np.arange(300), top]
    others = np.where(labels, -np.inf, upper).max(axis=1)
    p_b = np.minimum(others, 1 - p_a)
    closed = np.maximum(sigma / 2 * (stats.norm.ppf(p_a) - stats.norm.ppf(p_b)), 0.0)
    np.testing.assert_allclose(radii, closed, atol=1e-9)
    assert (radii > 0).sum() > 100


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_multiguard_with_one_label_and_top1_base_equals_jia(k: int) -> None:
    rng = np.random.default_rng(k)
    counts = simulate_counts(rng, 200, 10, 1, 500)
    lower, upper = label_probability_bounds(counts, 500, 0.001)
    label = np.where(rng.random(200) < 0.7, counts.argmax(axis=1), rng.integers(0, 10, 200))
    labels = np.zeros_like(counts, dtype=bool)
    labels[np.arange(200), label] = True
    mg = certified_radii(lower, upper, labels, k=k, k_prime=1, sigma=0.25)[:, 0]
    jia = jia_certified_radii(lower, upper, labels, k=k, sigma=0.25)[np.arange(200), label]
    np.testing.assert_allclose(mg, jia, atol=1e-9)
    loop = [plain_loop.jia_radius(lower[i].tolist(), upper[i].tolist(), int(label[i]), k=k, sigma=0.25)
            for i in range(0, 200, 10)]
    np.testing.assert_allclose(jia[::10], loop, atol=1e-6)


def test_reproduces_the_published_jia_radii_on_cifar10_counts() -> None:
    data = np.loadtxt(DATA / "jia2020_cifar10_sigma0.25_counts.txt", dtype=np.int64)
    published = np.loadtxt(DATA / "jia2020_cifar10_sigma0.25_k3_radii.txt", skiprows=2)[:, 1]
    counts, label = data[:, :10], data[:, 10]
    assert counts.shape == (500, 10) and (counts.sum(axis=1) == 100_000).all()
    labels = np.zeros_like(counts, dtype=bool)
    labels[np.arange(500), label] = True
    lower, upper = label_probability_bounds(counts, 100_000, 0.001)
    jia = jia_certified_radii(lower, upper, labels, k=3, sigma=0.25)[np.arange(500), label]
    mg = certified_radii(lower, upper, labels, k=3, k_prime=1, sigma=0.25)[:, 0]
    # Published to 3 significant digits: half a unit of the third digit, plus 1e-5 for the published code's
    # own bisection tolerance (5 of the 500 values sit just above a rounding boundary).
    unit = np.where(published > 0, 10.0 ** (np.floor(np.log10(np.where(published > 0, published, 1))) - 2), 0)
    for ours in (jia, mg):
        assert ((published == 0) == (ours == 0)).all()
        assert (np.abs(ours - published) <= unit / 2 + 1e-5).all()
    assert (published > 0).sum() > 400


# ----------------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("seed", range(4))
def test_monotone_in_radius_above_jia_and_second_terms_never_hurt(seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    radius = np.linspace(0, 3, 61)
    for _ in range(20):
        case = random_case(rng, num=25)
        kw = dict(k=case["k"], sigma=case["sigma"], radius=radius)
        full = certified_intersection_size(case["lower"], case["upper"], case["labels"], k_prime=case["k_prime"],
                                           **kw)
        first = certified_intersection_size(case["lower"], case["upper"], case["labels"],
                                            k_prime=case["k_prime"], second_terms=False, **kw)
        assert (np.diff(full, axis=1) <= 0).all() and (np.diff(first, axis=1) <= 0).all()
        assert (full >= first).all()
        assert (full <= np.minimum(case["labels"].sum(axis=1), case["k"])[:, None]).all()
        # Jia et al. needs a top-1 base classifier: compare on counts of one.
        counts1 = simulate_counts(rng, 25, case["c"], 1, case["n"])
        lower1, upper1 = label_probability_bounds(counts1, case["n"], case["alpha"])
        mg1 = certified_intersection_size(lower1, upper1, case["labels"], k_prime=1, **kw)
        jia = jia_certified_intersection_size(lower1, upper1, case["labels"], **kw)
        assert (mg1 >= jia).all()


def test_edges_zero_one_and_infinite_radius() -> None:
    # Bounds at exactly 0 and 1 behave as limits: no NaN, and an infinite radius where nothing can change.
    lower = np.array([1.0, 0.0, 0.0, 0.0])
    upper = np.array([1.0, 0.0, 0.0, 0.0])
    labels = np.array([True, False, False, False])
    radii = certified_radii(lower, upper, labels, k=1, k_prime=1, sigma=0.5)
    assert radii.tolist() == [math.inf]
    # s = k - e + 1 larger than the number of labels outside L: certified at every radius.
    counts = np.array([10, 10, 10, 0])
    lower, upper = label_probability_bounds(counts, 10, 0.01)
    labels = np.array([True, True, True, False])
    radii = certified_radii(lower, upper, labels, k=3, k_prime=3, sigma=0.5)
    assert radii[0] == math.inf and radii[1] == math.inf  # e = 1, 2: s = 3, 2 > c - d = 1
    assert np.isfinite(radii[2])  # e = 3: s = 1, a real comparison with the one label outside L
    # A label set with nothing certified gives zeros.
    counts = np.array([0, 0, 10, 10])
    lower, upper = label_probability_bounds(counts, 10, 0.01)
    radii = certified_radii(lower, upper, np.array([True, True, False, False]), k=2, k_prime=2, sigma=0.5)
    assert radii.tolist() == [0.0, 0.0]
    assert not np.isnan(radii).any()


def test_empty_label_set_and_e_beyond_d_are_zero() -> None:
    counts = np.array([[100, 90, 5, 5], [100, 90, 5, 5]])
    lower, upper = label_probability_bounds(counts, 100, 0.01)
    labels = np.array([[False] * 4, [True, False, False, False]])
    radii = certified_radii(lower, upper, labels, k=3, k_prime=2, sigma=0.5)
    assert (radii[0] == 0).all() and (radii[1, 1:] == 0).all() and radii[1, 0] > 0


def test_intersection_size_from_radii_takes_the_largest_e() -> None:
    radii = np.array([[1.0, 0.5, 0.0], [0.2, 0.8, math.inf]])
    sizes = intersection_size_from_radii(radii, [0.0, 0.3, 0.6, 1.0, 1e9])
    assert sizes.tolist() == [[2, 2, 1, 0, 0], [3, 3, 3, 3, 3]]


# ------------------------------------------------------------------------------------------ metrics


def test_metrics_are_per_input_means_and_count_empty_sets() -> None:
    labels = np.array([[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]], dtype=bool)
    sizes = np.array([[2, 1], [1, 0], [0, 0]])
    m = certified_metrics(sizes, labels, k=2)
    np.testing.assert_allclose(m.precision, [(1 + 0.5 + 0) / 3, (0.5 + 0 + 0) / 3])
    np.testing.assert_allclose(m.recall, [(1 + 1 + 0) / 3, (0.5 + 0 + 0) / 3])
    np.testing.assert_allclose(m.f1, [(2 * 2 / 4 + 2 * 1 / 3 + 0) / 3, (2 * 1 / 4 + 0 + 0) / 3])
    assert m.num_inputs == 3 and m.num_empty == 1
    with pytest.raises(ValueError, match="sizes"):
        certified_metrics(np.array([[3, 0], [0, 0], [0, 0]]), labels, k=2)
    with pytest.raises(ValueError, match="k"):
        certified_metrics(sizes, labels, k=0)


# ------------------------------------------------------------------------------------------- errors


def test_certify_functions_reject_bad_arguments() -> None:
    lower = np.full((2, 4), 0.2)
    upper = np.full((2, 4), 0.4)
    labels = np.array([[1, 0, 0, 0], [0, 1, 1, 0]], dtype=bool)
    good = dict(k=2, k_prime=1, sigma=0.5)
    cases = [
        (dict(lower=lower[:, :3]), "upper"),
        (dict(labels=labels[:, :3]), "labels"),
        (dict(labels=np.full((2, 4), 0.5)), "labels"),
        (dict(labels=np.full((2, 4), "a")), "labels"),
        (dict(lower=np.where(labels, np.nan, lower)), "lower"),
        (dict(upper=upper + 1), "upper"),
        (dict(k=0), "k"),
        (dict(k=5), "k"),
        (dict(k_prime=0), "k_prime"),
        (dict(k_prime=5), "k_prime"),
        (dict(sigma=0.0), "sigma"),
        (dict(sigma=-1.0), "sigma"),
        (dict(sigma=float("nan")), "sigma"),
    ]
    for change, name in cases:
        kwargs = dict(lower=lower, upper=upper, labels=labels, **good) | change
        args = (kwargs.pop("lower"), kwargs.pop("upper"), kwargs.pop("labels"))
        with pytest.raises(ValueError, match=name):
            certified_radii(*args, **kwargs)
    with pytest.raises(ValueError, match="radius"):
        certified_intersection_size(lower, upper, labels, radius=-1.0, **good)
    with pytest.raises(ValueError, match="radius"):
        certified_intersection_size(lower, upper, labels, radius=[[0.1]], **good)
    with pytest.raises(ValueError, match="k_prime"):
        jia_certified_radii(lower, upper, labels, k=2, sigma=0.5, k_prime=2)
    with pytest.raises(ValueError, match="k"):
        jia_certified_radii(lower, upper, labels, k=7, sigma=0.5)


def test_no_torch_import() -> None:
    source = Path(_topk.__file__).read_text()
    assert "import torch" not in source
