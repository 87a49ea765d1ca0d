"""Tests of the sampling engine and the Python API (multiguard.sampling.smoothed) on real torch models."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multiguard import Certificate, MultiGuard, Prediction
from multiguard.certificates import bounds as _bounds
from multiguard.certificates import jia as _jia
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import topk as _topk
from multiguard.common.seeds import NOISE_BLOCK, noise_seed

# ------------------------------------------------------------------------------------------------ models


def linear_model(weight: np.ndarray, bias: np.ndarray) -> torch.nn.Linear:
    model = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        model.weight.copy_(torch.as_tensor(weight))
        model.bias.copy_(torch.as_tensor(bias))
    return model


class SmallCNN(torch.nn.Module):
    """BatchNorm and Dropout make the output depend on the batch in training mode."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(8),
            torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(1),
            torch.nn.Flatten(),
            torch.nn.Dropout(0.5),
        )
        self.head = torch.nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class Recorder(torch.nn.Module):
    """Scores from a linear map; keeps a copy of every batch it sees and counts forward calls."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes)
        self.batches: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        return self.linear(x.reshape(x.shape[0], -1))


class NaNForLargeInputs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.linear(x)
        return torch.where(x[:, :1] > 50, torch.full_like(scores, float("nan")), scores)


def top_k_prime_probabilities(mean: np.ndarray, weight: np.ndarray, sigma: float, max_k_prime: int) -> np.ndarray:
    """``[j-1, i]`` = Pr(i in top-j(mean + W eps)), eps ~ N(0, sigma^2 I): NumPy Monte Carlo, a million draws."""
    rng = np.random.default_rng(12345)
    scores = mean + sigma * rng.standard_normal((1_000_000, weight.shape[1])) @ weight.T
    order = np.argsort(-scores, axis=1)[:, :max_k_prime]  # ties have probability 0
    return np.stack(
        [
            np.bincount(order[:, :j].ravel(), minlength=mean.shape[0]) / scores.shape[0]
            for j in range(1, max_k_prime + 1)
        ]
    )


# ------------------------------------------------------------------------------------------ correctness


@pytest.mark.parametrize("sigma", [0.25, 0.5, 1.0])
def test_counts_match_gaussian_score_probabilities(sigma: float) -> None:
    rng = np.random.default_rng(0)
    c, dim, n = 5, 3, 20_000
    weight = rng.normal(size=(c, dim))
    bias = rng.normal(scale=0.3, size=c)
    x = rng.normal(size=(2, dim)).astype(np.float32)
    guard = MultiGuard(linear_model(weight, bias), num_classes=c, sigma=sigma)
    counts = guard.sample_counts(x, n=n, seed=7, max_k_prime=3)
    assert counts.shape == (2, 3, c) and counts.dtype == np.int64
    for i in range(2):
        mean = weight @ x[i].astype(np.float64) + bias
        probabilities = top_k_prime_probabilities(mean, weight, sigma, 3)
        for k_prime in (1, 2, 3):
            assert counts[i, k_prime - 1].sum() == n * k_prime
            p = probabilities[k_prime - 1]
            tolerance = 5 * np.sqrt(p * (1 - p) * (1 / n + 1 / 1_000_000)) + 1e-3
            np.testing.assert_array_less(np.abs(counts[i, k_prime - 1] / n - p), tolerance)


def test_noise_is_gaussian_with_sigma_and_clamped() -> None:
    model = Recorder(4, 3)
    x = torch.full((1, 4), 0.5)
    MultiGuard(model, num_classes=3, sigma=0.3).sample_counts(x, n=5000, seed=1)
    noise = torch.cat(model.batches) - x
    assert noise.shape == (5000, 4)
    assert abs(noise.mean().item()) < 0.01 and abs(noise.std().item() - 0.3) < 0.01
    model.batches.clear()
    MultiGuard(model, num_classes=3, sigma=0.3, clamp=(0, 1)).sample_counts(x, n=500, seed=1)
    clamped = torch.cat(model.batches)
    assert clamped.min() >= 0 and clamped.max() <= 1 and (clamped == 1).any()


def test_ties_are_broken_by_label_index() -> None:
    model = linear_model(np.zeros((6, 2)), np.array([1.0, 3.0, 3.0, 0.0, 3.0, 1.0]))  # constant scores
    counts = MultiGuard(model, num_classes=6, sigma=0.5).sample_counts(np.zeros((2, 2)), n=100, max_k_prime=6)
    expected_order = [1, 2, 4, 0, 5, 3]
    for j in range(1, 7):
        expected = np.zeros(6, dtype=np.int64)
        expected[expected_order[:j]] = 100
        np.testing.assert_array_equal(counts[:, j - 1], [expected, expected])


class CoarseScores(Recorder):
    """Scores rounded to a grid of ``step`` (None: not rounded). A coarse grid makes ties frequent."""

    def __init__(self, in_features: int, num_classes: int, step: float | None) -> None:
        super().__init__(in_features, num_classes)
        self.step = step

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.linear(x)
        return scores if self.step is None else torch.round(scores / self.step) * self.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        return self.scores(x)


@pytest.mark.parametrize("c, step", [(3, 0.5), (6, 0.5), (6, None)])
def test_counts_equal_a_stable_argsort_of_the_scores_seen(c: int, step: float | None) -> None:
    """Counting against NumPy, with ties (the stable-sort path) and without (the CPU topk path)."""
    torch.manual_seed(1)
    model = CoarseScores(4, c, step)
    x = torch.rand(3, 4)
    counts = MultiGuard(model, num_classes=c, sigma=0.7).sample_counts(x, n=300, batch_size=128, max_k_prime=c)
    with torch.no_grad():
        scores = torch.cat([model.scores(batch) for batch in model.batches]).numpy()
    has_tie = (np.diff(np.sort(scores, axis=1), axis=1) == 0).any(axis=1)
    assert has_tie.mean() > 0.1 if step else not has_tie.any()
    order = np.argsort(-scores, axis=1, kind="stable").reshape(3, 300, c)
    for j in range(1, c + 1):
        expected = np.stack([np.bincount(order[i, :, :j].ravel(), minlength=c) for i in range(3)])
        np.testing.assert_array_equal(counts[:, j - 1], expected)


# ---------------------------------------------------------------------------------------- reproducibility


@pytest.fixture(scope="module")
def cnn_and_inputs() -> tuple[SmallCNN, torch.Tensor]:
    torch.manual_seed(0)
    model = SmallCNN()
    with torch.no_grad():  # spread the scores so that noise moves the top-k' around
        model.head.bias.zero_()
        model.head.weight.mul_(20)
    return model, torch.rand(5, 3, 8, 8)


def test_batch_invariance(cnn_and_inputs: tuple[SmallCNN, torch.Tensor]) -> None:
    model, x = cnn_and_inputs
    model.train()
    guard = MultiGuard(model, num_classes=5, sigma=0.5)
    n = 250  # not a multiple of NOISE_BLOCK: blocks are cut at both ends of the batches
    reference = guard.sample_counts(x, n=n, seed=3, max_k_prime=3)
    for batch_size in (7, 37, 100, 1000, 5000):
        np.testing.assert_array_equal(
            guard.sample_counts(x, n=n, seed=3, batch_size=batch_size, max_k_prime=3), reference
        )
    for i in range(x.shape[0]):
        alone = guard.sample_counts(x[i : i + 1], n=n, seed=3, index=[i], batch_size=64, max_k_prime=3)
        np.testing.assert_array_equal(alone[0], reference[i])
    # A shard of the inputs in another order, given as a NumPy array with its dataset indices.
    order = [4, 1, 3]
    shard = guard.sample_counts(x[order].numpy(), n=n, seed=3, index=np.array(order), max_k_prime=3)
    np.testing.assert_array_equal(shard, reference[order])
    # The mode of every submodule is restored after sampling.
    assert model.training and all(module.training for module in model.modules())
    model.features[1].eval()
    guard.sample_counts(x[:1], n=10)
    assert model.training and not model.features[1].training and model.features[0].training


def test_seed_and_index_change_the_noise(cnn_and_inputs: tuple[SmallCNN, torch.Tensor]) -> None:
    model, x = cnn_and_inputs
    guard = MultiGuard(model, num_classes=5, sigma=1.0, k_prime=2)
    a = guard.sample_counts(x[:1], n=300, seed=0, index=[0])
    assert not np.array_equal(a, guard.sample_counts(x[:1], n=300, seed=1, index=[0]))
    assert not np.array_equal(a, guard.sample_counts(x[:1], n=300, seed=0, index=[1]))
    assert noise_seed(0, 0, 0) != noise_seed(0, 0, 1) != noise_seed(0, 1, 0) != noise_seed(1, 0, 0)
    assert noise_seed(0, 0, 0, stream=1) != noise_seed(0, 0, 0)


def test_max_k_prime_equals_separate_runs(cnn_and_inputs: tuple[SmallCNN, torch.Tensor]) -> None:
    model, x = cnn_and_inputs
    all_k = MultiGuard(model, num_classes=5, sigma=0.5).sample_counts(x, n=150, seed=9, max_k_prime=4)
    for k_prime in range(1, 5):
        alone = MultiGuard(model, num_classes=5, sigma=0.5, k_prime=k_prime).sample_counts(x, n=150, seed=9)
        np.testing.assert_array_equal(alone, all_k[:, k_prime - 1])
        np.testing.assert_array_equal(alone.sum(axis=1), 150 * k_prime)


def test_channels_last_and_dtype_keep_the_noise() -> None:
    torch.manual_seed(0)
    plain, other = Recorder(3 * 4 * 4, 4), Recorder(3 * 4 * 4, 4)
    other.load_state_dict(plain.state_dict())
    x = torch.rand(2, 3, 4, 4)
    MultiGuard(plain, num_classes=4, sigma=0.5).sample_counts(x, n=120, batch_size=50)
    MultiGuard(other, num_classes=4, sigma=0.5, channels_last=True).sample_counts(x, n=120, batch_size=50)
    assert other.batches[0].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(plain.batches, other.batches, strict=True):
        assert torch.equal(a, b)
    double = Recorder(4, 3).double()
    guard = MultiGuard(double, num_classes=3, sigma=0.5)
    counts = guard.sample_counts(np.zeros((1, 4), dtype=np.float32), n=50, progress=True)
    assert guard.dtype == torch.float64 and double.batches[0].dtype == torch.float64
    assert counts.sum() == 50
    bf16 = MultiGuard(torch.nn.Linear(4, 3), num_classes=3, sigma=0.5, k_prime=2, precision="bf16")
    np.testing.assert_array_equal(bf16.sample_counts(np.zeros((2, 4)), n=60).sum(axis=1), [120, 120])


# ------------------------------------------------------------------------------------ certify and predict


def test_certify_delegates_to_certify_module(cnn_and_inputs: tuple[SmallCNN, torch.Tensor]) -> None:
    model, x = cnn_and_inputs
    labels = np.array([[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [1, 0, 0, 1, 1], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)
    guard = MultiGuard(model, num_classes=5, sigma=0.5, k_prime=2)
    result = guard.certify(x, labels, n=400, alpha=0.01, k=3, seed=5)
    assert isinstance(result, Certificate)
    np.testing.assert_array_equal(result.counts, guard.sample_counts(x, n=400, seed=5))
    lower, upper = _bounds.label_probability_bounds(result.counts, 400, 0.01)
    np.testing.assert_array_equal(result.lower, lower)
    np.testing.assert_array_equal(result.upper, upper)
    radii = _topk.certified_radii(lower, upper, labels, k=3, k_prime=2, sigma=0.5)
    np.testing.assert_array_equal(result.radii, radii)
    radius = np.array([0.0, 0.1, 0.5])
    np.testing.assert_array_equal(result.intersection_size(radius), _topk.intersection_size_from_radii(radii, radius))
    metrics = result.metrics(radius)
    expected = _metrics.certified_metrics(_topk.intersection_size_from_radii(radii, radius), labels, 3)
    np.testing.assert_allclose(metrics.f1, expected.f1)
    ablation = guard.certify(x, labels, n=400, alpha=0.01, k=3, seed=5, second_terms=False)
    np.testing.assert_array_equal(
        ablation.radii, _topk.certified_radii(lower, upper, labels, k=3, k_prime=2, sigma=0.5, second_terms=False)
    )
    with pytest.raises(ValueError, match="k_prime"):
        result.jia_radii()
    single = MultiGuard(model, num_classes=5, sigma=0.5).certify(x, labels, n=400, alpha=0.01, k=3, seed=5)
    np.testing.assert_array_equal(
        single.jia_radii(), _jia.jia_certified_radii(single.lower, single.upper, labels, k=3, sigma=0.5)
    )
    assert single.jia_intersection_size(0.1).shape == (5,)
    assert single.jia_metrics(radius).precision.shape == (3,)


def stable_model(c: int = 6) -> tuple[torch.nn.Linear, torch.Tensor]:
    """Scores = x, with inputs whose entries are 10 apart: at sigma = 0.25 the top-k' never changes."""
    model = linear_model(np.eye(c), np.zeros(c))
    x = torch.tensor([[0, 10, 20, 30, 40, 50], [50, 40, 30, 0, 10, 20], [30, 50, 0, 40, 20, 10]], dtype=torch.float32)
    return model, x


def test_huge_margins_certify_every_label() -> None:
    model, x = stable_model()
    guard = MultiGuard(model, num_classes=6, sigma=0.25, k_prime=3)
    clean_top3 = np.argsort(-x.numpy(), axis=1)[:, :3]
    labels = np.zeros((3, 6), dtype=bool)
    np.put_along_axis(labels, clean_top3, True, axis=1)
    result = guard.certify(x, labels, n=1000, alpha=0.001, k=4)
    np.testing.assert_array_equal(result.counts, labels * 1000)
    # All d = 3 labels, up to about the largest radius n = 1000 samples can certify (~2.4 sigma).
    assert np.all(result.radii[:, :3] > 2 * 0.25)
    np.testing.assert_array_equal(result.intersection_size(0.5), [3, 3, 3])
    assert result.metrics(0.5).recall == 1.0


@pytest.mark.parametrize("k_prime, k", [(1, 1), (2, 2), (3, 3)])
def test_predict_returns_clean_top_k(k_prime: int, k: int) -> None:
    model, x = stable_model()
    guard = MultiGuard(model, num_classes=6, sigma=0.25, k_prime=k_prime)
    result = guard.predict(x, k=k, n0=50, n=500, alpha=0.001)
    assert isinstance(result, Prediction) and result.labels.shape == (3, k) and result.radii.shape == (3, k)
    clean = np.argsort(-x.numpy(), axis=1)[:, :k]
    np.testing.assert_array_equal(np.sort(result.labels, axis=1), np.sort(clean, axis=1))
    assert result.mask.sum(axis=1).tolist() == [k] * 3
    assert np.all(result.radii > 2 * 0.25) and np.all(result.intersection_size(0.5) == k)


def test_predict_selection_and_estimation_streams(cnn_and_inputs: tuple[SmallCNN, torch.Tensor]) -> None:
    model, x = cnn_and_inputs
    guard = MultiGuard(model, num_classes=5, sigma=1.0)
    result = guard.predict(x, k=2, n0=200, n=200, seed=4)
    # Estimation uses the sample_counts stream; selection an independent one.
    np.testing.assert_array_equal(result.counts, guard.sample_counts(x, n=200, seed=4))
    assert not np.array_equal(result.selection_counts, result.counts)
    expected = np.argsort(-result.selection_counts, axis=1, kind="stable")[:, :2]
    np.testing.assert_array_equal(result.labels, expected)
    radii = _topk.certified_radii(result.lower, result.upper, result.mask, k=2, k_prime=1, sigma=1.0)
    np.testing.assert_array_equal(result.radii, radii)


# ------------------------------------------------------------------------------------------------ errors


@pytest.fixture()
def recorder_guard() -> tuple[Recorder, MultiGuard]:
    torch.manual_seed(0)
    model = Recorder(4, 5)
    return model, MultiGuard(model, num_classes=5, sigma=0.5)


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda g, x, y: g.sample_counts(x, n=0), "n"),
        (lambda g, x, y: g.sample_counts(x, n=10, seed=-1), "seed"),
        (lambda g, x, y: g.sample_counts(x, n=10, batch_size=0), "batch_size"),
        (lambda g, x, y: g.sample_counts(x, n=10, max_k_prime=6), "max_k_prime"),
        (lambda g, x, y: g.sample_counts(x, n=10, index=[0, 1]), "index"),
        (lambda g, x, y: g.sample_counts(x, n=10, index=[0, 1, -2]), "index"),
        (lambda g, x, y: g.certify(x, y, n=10, alpha=0.0, k=2), "alpha"),
        (lambda g, x, y: g.certify(x, y, n=10, alpha=1.0, k=2), "alpha"),
        (lambda g, x, y: g.certify(x, y, n=10, alpha=0.01, k=0), "k"),
        (lambda g, x, y: g.certify(x, y, n=10, alpha=0.01, k=6), "k"),
        (lambda g, x, y: g.certify(x, y, n=0, alpha=0.01, k=2), "n"),
        (lambda g, x, y: g.certify(x, y[:2], n=10, alpha=0.01, k=2), "labels"),
        (lambda g, x, y: g.certify(x, y[:, :4], n=10, alpha=0.01, k=2), "labels"),
        (lambda g, x, y: g.certify(x, y, n=10, alpha=0.01, k=2, index=[0]), "index"),
        (lambda g, x, y: g.predict(x, k=2, n0=0), "n0"),
        (lambda g, x, y: g.predict(x, k=2, n=0), "n"),
        (lambda g, x, y: g.predict(x, k=2, alpha=1.5), "alpha"),
        (lambda g, x, y: g.predict(x, k=7), "k"),
        (lambda g, x, y: g.predict(x, k=2, index=[0, 1, 2, 3]), "index"),
    ],
)
def test_bad_arguments_fail_before_any_forward(recorder_guard, call, name: str) -> None:
    model, guard = recorder_guard
    x, labels = torch.zeros(3, 4), np.ones((3, 5), dtype=bool)
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        call(guard, x, labels)
    assert model.batches == []


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"sigma": 0.0}, "sigma"),
        ({"sigma": -1.0}, "sigma"),
        ({"sigma": float("nan")}, "sigma"),
        ({"k_prime": 0}, "k_prime"),
        ({"k_prime": 6}, "k_prime"),
        ({"num_classes": 0}, "num_classes"),
        ({"clamp": (1.0, 0.0)}, "clamp"),
        ({"precision": "bf17"}, "precision"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, name: str) -> None:
    arguments = {"num_classes": 5, "sigma": 0.5} | kwargs
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        MultiGuard(torch.nn.Linear(4, 5), **arguments)


def test_model_with_wrong_width_fails_after_first_forward() -> None:
    guard = MultiGuard(torch.nn.Linear(4, 21), num_classes=20, sigma=0.5)
    with pytest.raises(ValueError, match=r"model returned \(100, 21\), expected \(100, 20\)"):
        guard.sample_counts(torch.zeros(2, 4), n=50, batch_size=100)


def test_non_finite_scores_name_the_input() -> None:
    x = torch.zeros(4, 4)
    x[2, 0] = 1000.0
    guard = MultiGuard(NaNForLargeInputs(), num_classes=5, sigma=0.5)
    with pytest.raises(ValueError, match=r"non-finite scores for input 2 \(index 12\)"):
        guard.sample_counts(x, n=30, index=[10, 11, 12, 13])
    guard.sample_counts(x[:2], n=30)  # the others are fine


def test_block_size_divides_the_usual_n() -> None:
    assert all(n % NOISE_BLOCK == 0 for n in (100, 1000, 2000, 10_000))


def test_inputs_with_n_below_a_batch_share_full_forward_batches() -> None:
    # what dynamic batching in serve relies on: several inputs' samples fill one forward batch, the counts
    # being those of each input alone
    torch.manual_seed(0)
    model = Recorder(4, 5)
    guard = MultiGuard(model, num_classes=5, sigma=0.5, clamp=None)
    x = torch.rand(7, 4)
    together = guard.sample_counts(x, n=100, seed=4, index=np.arange(10, 17), batch_size=300)
    assert [batch.shape[0] for batch in model.batches] == [300, 300, 100]
    for i in range(7):
        alone = guard.sample_counts(x[i : i + 1], n=100, seed=4, index=[10 + i], batch_size=300)
        np.testing.assert_array_equal(alone[0], together[i])
