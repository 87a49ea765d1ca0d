"""Per-label on-counts from the sampling engine: the same forward passes as the top-k' counts, equal to a plain
loop over the scores the model saw, nested and sequential counts consistent with fixed n, and the thresholded
certificate of ``MultiGuard.certify``/``predict`` from them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard import MultiGuard
from multiguard.certificates.sequential import DEFAULT_SPENDING, look_schedule
from multiguard.certificates.stop_rule import StopRule
from multiguard.certificates.thresholded import certify_thresholded
from multiguard.certificates.thresholds import LabelThresholds


class Recorder(torch.nn.Module):
    """Scores rounded to a grid (ties with the thresholds happen) from a linear map; keeps every batch it sees."""

    def __init__(self, in_features: int, num_classes: int, step: float | None = 0.25) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(in_features, num_classes)
        self.step = step
        self.batches: list[torch.Tensor] = []
        self.calls = 0

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        scores = self.linear(x.reshape(x.shape[0], -1))
        return scores if self.step is None else torch.round(scores / self.step) * self.step

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(x.clone())
        self.calls += 1
        return self.scores(x)


def seen_scores(model: Recorder, num_inputs: int, n: int) -> np.ndarray:
    """``(N, n, c)``: the scores of every noisy sample, in the engine's order (input after input)."""
    with torch.no_grad():
        scores = torch.cat([model.scores(batch) for batch in model.batches]).numpy()
    return scores.reshape(num_inputs, n, -1)


@pytest.mark.parametrize("batch_size", [64, 1000])
def test_on_counts_equal_a_plain_loop_over_the_scores_seen_in_the_same_pass(batch_size: int) -> None:
    torch.manual_seed(0)
    c, n = 5, 300
    model = Recorder(4, c)
    thresholds = LabelThresholds((0.5, 0.3, 0.7, 0.5, 0.9))
    guard = MultiGuard(model, num_classes=c, sigma=0.8, thresholds=thresholds)
    x = torch.rand(3, 4)
    both = guard.engine.count(x, n, seed=2, batch_size=batch_size, num_k=3, thresholds=guard.score_thresholds)
    scores = seen_scores(model, 3, n)
    calls = model.calls
    # A plain loop over the very scores the model returned: top-k' by a stable sort, on by score > logit(tau).
    logit = np.log(np.array(thresholds.values) / (1 - np.array(thresholds.values)))
    on = np.zeros((3, c), dtype=np.int64)
    for i in range(3):
        for s in range(n):
            for label in range(c):
                on[i, label] += scores[i, s, label] > logit[label]
    assert np.array_equal(both[:, 3], on)
    assert (on > 0).any() and (on < n).any()
    order = np.argsort(-scores, axis=2, kind="stable")
    for j in range(1, 4):
        expected = np.stack([np.bincount(order[i, :, :j].ravel(), minlength=c) for i in range(3)])
        assert np.array_equal(both[:, j - 1], expected)
    # The top-k' counts are those of a call without thresholds; the on-counts came from no extra forward pass.
    model.batches.clear()
    model.calls = 0
    alone = guard.sample_counts(x, n, seed=2, batch_size=batch_size, max_k_prime=3)
    assert np.array_equal(alone, both[:, :3]) and model.calls == calls
    assert np.array_equal(guard.sample_on_counts(x, n, seed=2, batch_size=batch_size), on)


def test_several_threshold_rows_and_sigmoid_scale() -> None:
    torch.manual_seed(1)
    model = Recorder(4, 3, step=None)
    guard = MultiGuard(model, num_classes=3, sigma=0.5)
    x = torch.rand(2, 4)
    rows = np.array([[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0], [np.inf, -np.inf, 0.1]])
    counts = guard.sample_on_counts(x, 200, seed=0, thresholds=rows)
    scores = seen_scores(model, 2, 200)
    assert counts.shape == (2, 3, 3)
    for t in range(3):
        assert np.array_equal(counts[:, t], (scores > rows[t]).sum(axis=1))
    assert (counts[:, 2, 0] == 0).all() and (counts[:, 2, 1] == 200).all()
    with pytest.raises(ValueError, match="^thresholds: this MultiGuard has none"):
        guard.sample_on_counts(x, 10)


def test_fixed_nested_and_sequential_on_counts_agree() -> None:
    torch.manual_seed(2)
    c = 4
    model = Recorder(6, c, step=None)
    guard = MultiGuard(model, num_classes=c, sigma=0.6, thresholds=LabelThresholds((0.0, 0.2, -0.3, 0.5), "score"))
    x = torch.rand(5, 6)
    sizes = look_schedule(1000)  # the looks of the default stopping rule
    nested, nested_on = guard.sample_nested_counts(x, sizes, seed=4, index=np.arange(10, 15), max_k_prime=2,
                                                   with_on_counts=True)
    assert nested.shape == (5, sizes.size, 2, c) and nested_on.shape == (5, sizes.size, c)
    plain = guard.sample_nested_counts(x, sizes, seed=4, index=np.arange(10, 15), max_k_prime=2)
    assert np.array_equal(plain, nested)
    for j, size in enumerate(sizes):
        fixed = guard.sample_on_counts(x, int(size), seed=4, index=np.arange(10, 15))
        assert np.array_equal(fixed, nested_on[:, j])
    labels = np.zeros((5, c), dtype=bool)
    labels[:, 0] = True
    counts, samples, on = guard.sample_sequential_counts(x, labels, 1000, stop_rule=StopRule(radius=0.1), alpha=0.01,
                                                         k=1, seed=4, index=np.arange(10, 15), max_k_prime=2,
                                                         with_on_counts=True)
    looks = np.searchsorted(sizes, samples)
    assert np.array_equal(on, nested_on[np.arange(5), looks])
    assert np.array_equal(counts, nested[np.arange(5), looks])


def test_certify_and_predict_return_the_thresholded_certificate_of_the_same_samples() -> None:
    torch.manual_seed(3)
    c, n, alpha, sigma = 4, 500, 0.01, 0.5
    model = Recorder(4, c, step=None)
    with torch.no_grad():
        model.linear.weight.mul_(6.0)
    guard = MultiGuard(model, num_classes=c, sigma=sigma, thresholds=0.5)
    x = torch.rand(6, 4)
    labels = np.ones((6, c), dtype=bool)
    cert = guard.certify(x, labels, n=n, alpha=alpha, k=2, seed=1, q=0.4)
    on = guard.sample_on_counts(x, n, seed=1)
    expected = certify_thresholded(on, n, alpha=alpha, sigma=sigma, q=0.4)
    assert np.array_equal(cert.thresholded.on_counts, on)
    assert np.array_equal(cert.thresholded.on_radius, expected.on_radius)
    assert np.array_equal(cert.thresholded.off_radius, expected.off_radius)
    assert np.array_equal(cert.counts, guard.sample_counts(x, n, seed=1))  # the top-k part is unchanged
    decided = (cert.thresholded.on_radius > 0) | (cert.thresholded.off_radius > 0)
    assert decided.mean() > 0.5
    assert cert.thresholded_metrics([0.0, 0.2]).f1.shape == (2,)
    pred = guard.predict(x, k=2, n=n, alpha=alpha, seed=1)
    assert np.array_equal(pred.thresholded.on_counts, on) and pred.thresholded.q == 0.5
    # Sequential: the on-counts at each input's stop, with the anytime bounds at the looks and spending of the
    # stopping rule that chose the stop (the default: fine looks, three quarters of alpha at the last one).
    seq = guard.certify(x, labels, n=n, alpha=alpha, k=2, seed=1, stop_rule=StopRule(radius=0.1))
    looks = look_schedule(n)
    anytime = certify_thresholded(seq.thresholded.on_counts, seq.samples, alpha=alpha, sigma=sigma, looks=looks,
                                  spending=DEFAULT_SPENDING)
    assert np.array_equal(seq.thresholded.on_radius, anytime.on_radius)
    assert np.array_equal(seq.thresholded.off_radius, anytime.off_radius)
    equal_shares = certify_thresholded(seq.thresholded.on_counts, seq.samples, alpha=alpha, sigma=sigma, looks=looks)
    assert not np.array_equal(seq.thresholded.lower, equal_shares.lower)  # the spending is read, not ignored
    assert np.array_equal(seq.thresholded.n, seq.samples)
    no_thresholds = MultiGuard(model, num_classes=c, sigma=sigma).certify(x, labels, n=50, alpha=alpha, k=2)
    assert no_thresholds.thresholded is None
    with pytest.raises(ValueError, match="^thresholds: this certificate has no thresholded part"):
        no_thresholds.thresholded_metrics(0.0)


def test_engine_counts_follow_the_exact_on_probability() -> None:
    """A half-space label (on when w . z + b > tau) is on with probability Phi((w . x + b - tau) / sigma):
    the engine's on-counts are Binomial with that p (a check of noise scale and the comparison)."""
    torch.manual_seed(4)
    w = np.array([[0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    b = np.array([0.1, -0.2, 0.3])
    model = torch.nn.Linear(2, 3, dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.from_numpy(w))
        model.bias.copy_(torch.from_numpy(b))
    tau = np.array([0.0, 0.25, -0.1])
    sigma, n = 0.7, 20_000
    guard = MultiGuard(model, num_classes=3, sigma=sigma, thresholds=LabelThresholds(tuple(tau), "score"))
    x = np.array([[0.2, -0.1], [0.5, 0.5]])
    counts = guard.sample_on_counts(x, n, seed=5)
    p = stats.norm.cdf((x @ w.T + b - tau) / sigma)
    z = (counts / n - p) / np.sqrt(p * (1 - p) / n)
    assert np.abs(z).max() < 4.5
    shifted = stats.norm.cdf((x @ w.T + b - tau + 0.05) / sigma)  # the control: a small shift is seen
    assert np.abs((counts / n - shifted) / np.sqrt(shifted * (1 - shifted) / n)).max() > 4.5
