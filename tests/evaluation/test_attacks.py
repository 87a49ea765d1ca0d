"""multiguard.evaluation.attacks: the registry, apgd-targeted against the pgd baseline, MultiGuard.soft_scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
