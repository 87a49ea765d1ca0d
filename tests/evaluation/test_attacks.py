"""multiguard.evaluation.attacks: the registry, apgd-targeted against the pgd baseline, MultiGuard.soft_scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from multiguard.evaluation.attack import attack_smoothed
from multiguard.evaluation.attacks import DEFAULT_ATTACK, attack_method
from multiguard.evaluation.attacks.apgd import apgd_checkpoints, attack_smoothed_apgd
from multiguard.sampling.smoothed import MultiGuard

WEIGHTS = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]])


def toy_model(z: torch.Tensor) -> torch.Tensor:
    return z @ WEIGHTS.T + torch.tensor([0.0, 0.0, -0.5])


X = torch.tensor([[0.4, 0.0], [0.5, 0.1], [0.3, -0.2], [0.45, 0.05]])
LABELS = np.array([[True, False, False]] * 4)


def test_registry_names_the_default_and_refuses_unknown_names() -> None:
    assert DEFAULT_ATTACK == "apgd-targeted" and attack_method("pgd").function is attack_smoothed
    with pytest.raises(ValueError, match="^attack: unknown attack 'nope'"):
        attack_method("nope")


def test_apgd_refuses_a_radius_of_zero_or_below() -> None:
    for radius in (0.0, -1.0):
        with pytest.raises(ValueError, match="radius"):
            attack_smoothed_apgd(toy_model, X, LABELS, radius=radius, k=1, sigma=0.25, input_range=None)


def test_apgd_is_never_weaker_than_pgd_on_the_same_inputs() -> None:
    for radius in (0.2, 0.4, 1.0):
        pgd = attack_smoothed(toy_model, X, LABELS, radius=radius, k=1, k_prime=1, sigma=0.25, n=500,
                              input_range=None)
        apgd = attack_smoothed_apgd(toy_model, X, LABELS, radius=radius, k=1, k_prime=1, sigma=0.25, n=500,
                                    input_range=None)
        assert apgd.sizes.sum() <= pgd.sizes.sum()
        assert (apgd.deltas.double().norm(dim=1) <= radius).all()


def test_apgd_checkpoints_follow_croce_and_hein() -> None:
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]


def test_soft_scores_are_differentiable_and_reproducible() -> None:
    smoother = MultiGuard(toy_model, 3, 0.25)
    x = X.clone().requires_grad_(True)
    q = smoother.soft_scores(x, samples=16, seed=3)
    assert q.shape == (4, 3) and float(q.min()) >= 0.0 and float(q.max()) <= 1.0
    q[:, 0].sum().backward()
    assert x.grad is not None and (x.grad[:, 0] > 0).all()  # label 0 grows with z_0
    assert torch.equal(q.detach(), smoother.soft_scores(X, samples=16, seed=3))


# ------------------------------------------------------------- a base classifier with closed-form smoothed scores

CENTERS = torch.arange(6, dtype=torch.float64) * 0.5
SIGMA = 0.5


def nearest_center(z: torch.Tensor) -> torch.Tensor:
    """Linear scores ``2 c_i z_0 - c_i^2``: the top-1 is the centre nearest z_0, so label i's region is the slab
    between the midpoints around ``c_i`` (an intersection of two half-spaces), whatever ``z_1``."""
    c = CENTERS.to(z.dtype)
    return 2.0 * z[:, :1] * c[None, :] - c[None, :] ** 2


def slab_probabilities(x0: np.ndarray) -> np.ndarray:
    """The smoothed probabilities ``p_i = Phi((b_i - x_0) / sigma) - Phi((a_i - x_0) / sigma)`` ``(P, 6)``."""
    c = CENTERS.numpy()
    cuts = np.concatenate([[-np.inf], (c[1:] + c[:-1]) / 2.0, [np.inf]])
    return np.diff(stats.norm.cdf((cuts[None, :] - np.asarray(x0)[:, None]) / SIGMA), axis=1)


def smallest_intersection(x0: np.ndarray, mask: np.ndarray, k: int, radius: float) -> np.ndarray:
    """min over ``||delta|| <= radius`` of ``|L ∩ top-k|`` of the exact smoothed classifier: only the move along
    z_0 matters, so a fine grid of ``x_0 + [-radius, radius]`` finds it."""
    out = []
    for x, m in zip(x0, mask, strict=True):
        p = slab_probabilities(np.linspace(x - radius, x + radius, 4001))
        top = np.argsort(-p, axis=1, kind="stable")[:, :k]
        out.append(int(m[top].sum(axis=1).min()))
    return np.array(out)


X0 = np.array([0.6, 1.25, 1.0, 1.7, 0.9, 2.0])
SLAB_X = torch.tensor(np.stack([X0, np.zeros_like(X0)], axis=1))
SLAB_LABELS = np.zeros((6, 6), dtype=bool)
for _row, _labels in enumerate([[0, 1, 2], [1, 2, 3], [2, 3], [3, 4], [0, 1, 2, 3], [3, 4, 5]]):
    SLAB_LABELS[_row, _labels] = True


def _within_closed_form(sizes: np.ndarray, radius: float) -> bool:
    """Whether each size is the closed form's smallest intersection, to Monte Carlo tolerance: no smaller than
    what a ball 2 % larger allows, no larger than what a ball 2 % smaller allows (n = 2000 cannot resolve a
    boundary point's tie any closer)."""
    lowest = smallest_intersection(X0, SLAB_LABELS, 3, 1.02 * radius)
    reachable = smallest_intersection(X0, SLAB_LABELS, 3, 0.98 * radius)
    return bool(((lowest <= sizes) & (sizes <= reachable)).all())


@pytest.mark.parametrize("radius", [0.25, 0.5, 1.0])
def test_apgd_finds_the_smallest_intersection_the_closed_form_allows(radius: float) -> None:
    result = attack_smoothed_apgd(nearest_center, SLAB_X, SLAB_LABELS, radius=radius, k=3, k_prime=1, sigma=SIGMA,
                                  n=2000, input_range=None)
    assert _within_closed_form(result.sizes, radius), (result.sizes, smallest_intersection(X0, SLAB_LABELS, 3,
                                                                                             radius))
    clean = smallest_intersection(X0, SLAB_LABELS, 3, 0.0)
    assert (result.sizes < clean).any()  # the radius matters: the case has teeth
    pgd = attack_smoothed(nearest_center, SLAB_X, SLAB_LABELS, radius=radius, k=3, k_prime=1, sigma=SIGMA, n=2000,
                          input_range=None)
    assert result.sizes.sum() <= pgd.sizes.sum()  # never weaker than the baseline (same model, seed, inputs)


def test_the_closed_form_check_catches_an_attack_that_does_nothing() -> None:
    """Control: zero steps leave the clean point, which the closed-form check refuses at R = 0.5."""
    idle = attack_smoothed(nearest_center, SLAB_X, SLAB_LABELS, radius=0.5, k=3, k_prime=1, sigma=SIGMA, n=2000,
                           steps=0, input_range=None)
    assert not _within_closed_form(idle.sizes, 0.5)
