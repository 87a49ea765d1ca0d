"""Soundness of the thresholded certificate against ground truth, with real sampling through real torch models.

Each label of the base classifier is a half-space rule, ``s_i(z) = w_i . z + b_i`` with a unit vector w_i, on
when ``s_i(z) > tau_i``. Its smoothed on-probability is exact, ``p_i(x) = Phi((w_i . x + b_i - tau_i) / sigma)``,
and the smoothed classifier's decision for label i flips exactly on the hyperplane where ``p_i = q``, so the
exact flip radius of a label at x is known: ``sigma |Phi^-1(p_i(x)) - Phi^-1(q)|``, reached along ``-+ w_i``.
The certificate, computed from counts of real Gaussian noise through the torch model (counted by the sampling
engine, as ``MultiGuard.certify`` counts them), must claim no label
on (or off) beyond that radius for more than the alpha share of inputs that its guarantee allows; the same
certificate with inflated radii must fail that check (so it can fail). A second check perturbs each input
along every ``+- w_i`` and in random directions and asks the definition directly: the exact smoothed set at
``x + delta`` lies between A_R and B_R.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard import MultiGuard
from multiguard.certificates.thresholded import certified_sets, certify_thresholded
from multiguard.certificates.thresholds import LabelThresholds


class HalfSpaces(torch.nn.Module):
    """Per-label scores ``z @ w.T + b`` (rows of w unit vectors): label i is on when its score exceeds tau_i."""

    def __init__(self, weights: np.ndarray, bias: np.ndarray) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(weights.shape[1], weights.shape[0], dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.from_numpy(weights))
            self.linear.bias.copy_(torch.from_numpy(bias))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.linear(z)


def random_classifier(rng: np.random.Generator, c: int, dim: int) -> tuple[HalfSpaces, np.ndarray]:
    weights = rng.normal(size=(c, dim))
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    return HalfSpaces(weights, rng.normal(size=c) * 0.3), rng.normal(size=c) * 0.2


def exact_on_probability(model: HalfSpaces, tau: np.ndarray, points: np.ndarray, sigma: float) -> np.ndarray:
    """``(P, c)``: p_i at each point, exactly (a Gaussian's mass beyond a hyperplane)."""
    w = model.linear.weight.detach().numpy()
    b = model.linear.bias.detach().numpy()
    return stats.norm.cdf((points @ w.T + b - tau) / sigma)


def engine_on_counts(model: torch.nn.Module, tau: np.ndarray, x: np.ndarray, n: int, sigma: float,
                     seed: int) -> np.ndarray:
    """``(N, c)``: for each input, how many of n noisy copies had each label's score above its threshold, counted
    by the sampling engine (``MultiGuard.sample_on_counts``, noise in the model's float64)."""
    guard = MultiGuard(model, num_classes=tau.size, sigma=sigma, thresholds=LabelThresholds(tuple(tau), "score"))
    return guard.sample_on_counts(x, n, seed=seed)


def allowed_failures(alpha: float, trials: int) -> int:
    """Most failures consistent with a true rate <= alpha (one-sided binomial test at 1e-6)."""
    return int(stats.binom.ppf(1 - 1e-6, trials, alpha))


@pytest.mark.parametrize("q", [0.5, 0.35])
def test_no_label_certified_beyond_its_exact_flip_radius_more_often_than_alpha(q: float) -> None:
    rng = np.random.default_rng(int(q * 100))
    c, dim, sigma, n, alpha, num = 6, 3, 0.5, 500, 0.05, 400
    model, tau = random_classifier(rng, c, dim)
    x = rng.normal(size=(num, dim)) * 0.6
    counts = engine_on_counts(model, tau, x, n, sigma, seed=int(q * 1000))
    p = exact_on_probability(model, tau, x, sigma)
    exact_on = np.maximum(sigma * (stats.norm.ppf(p) - stats.norm.ppf(q)), 0.0)
    exact_off = np.maximum(sigma * (stats.norm.ppf(q) - stats.norm.ppf(p)), 0.0)
    cert = certify_thresholded(counts, n, alpha=alpha, sigma=sigma, q=q)

    def failures(on: np.ndarray, off: np.ndarray) -> int:
        wrong = (on > exact_on * (1 + 1e-9)) | (off > exact_off * (1 + 1e-9))
        return int(wrong.any(axis=1).sum())

    found = failures(cert.on_radius, cert.off_radius)
    inflated = failures(1.25 * cert.on_radius, 1.25 * cert.off_radius)
    claimed = np.concatenate([cert.on_radius[cert.on_radius > 0], cert.off_radius[cert.off_radius > 0]])
    exact = np.concatenate([exact_on[cert.on_radius > 0], exact_off[cert.off_radius > 0]])
    ratio = claimed / exact
    decided = (cert.on_radius > 0) | (cert.off_radius > 0)
    print(f"\n[thresholded] exact soundness q={q} alpha={alpha} n={n}: {num} inputs x {c} labels, "
          f"{decided.mean():.3f} of labels decided at R = 0; inputs with a label certified beyond its exact flip "
          f"radius {found} (allowed {allowed_failures(alpha, num)}); with radii x1.25: {inflated}; certified / "
          f"exact radius: median {np.median(ratio):.3f}, 90th percentile {np.quantile(ratio, 0.9):.3f}")
    assert decided.mean() > 0.5  # the check has labels to check
    assert found <= allowed_failures(alpha, num)
    assert inflated > allowed_failures(alpha, num)  # the check can fail


def test_the_exact_smoothed_set_lies_between_a_and_b_under_perturbations() -> None:
    rng = np.random.default_rng(21)
    c, dim, sigma, n, alpha, num, q = 5, 3, 0.25, 1000, 0.001, 150, 0.5
    model, tau = random_classifier(rng, c, dim)
    x = rng.normal(size=(num, dim)) * 0.4
    cert = certify_thresholded(engine_on_counts(model, tau, x, n, sigma, seed=3), n, alpha=alpha,
                               sigma=sigma, q=q)
    w = model.linear.weight.detach().numpy()
    radii = np.array([0.0, 0.05, 0.1, 0.2, 0.4])
    a, b = certified_sets(cert.on_radius, cert.off_radius, radii)
    bad_inputs = set()
    nontrivial = 0
    for r_idx, radius in enumerate(radii):
        directions = np.concatenate([w, -w, rng.normal(size=(20, dim))])
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        for row in range(num):
            smoothed = exact_on_probability(model, tau, x[row] + radius * directions, sigma) > q  # (D, c)
            inside = (smoothed >= a[row, r_idx]).all() and (smoothed <= b[row, r_idx]).all()
            if not inside:
                bad_inputs.add(row)
            nontrivial += int(a[row, r_idx].any() or (~b[row, r_idx]).any())
    print(f"\n[thresholded] exact sets: {num} inputs x {radii.size} radii, {nontrivial} with a label decided; "
          f"inputs whose exact smoothed set left [A_R, B_R]: {len(bad_inputs)}")
    assert nontrivial > 0.5 * num * radii.size
    assert len(bad_inputs) <= allowed_failures(alpha, num)
