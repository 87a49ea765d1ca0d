"""ASL against a direct transcription of its formula (MultiGuard section 4.1)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from multiguard.training.losses import AsymmetricLoss
from multiguard.training.registries import make_loss


def asl_by_formula(logits: torch.Tensor, targets: torch.Tensor, gamma_pos: float, gamma_neg: float,
                   m: float) -> list[float]:
    """L_ASL = sum_j -y_j L_j+ - (1 - y_j) L_j-, one input at a time, with plain math."""
    losses = []
    for z_row, y_row in zip(logits.tolist(), targets.tolist(), strict=True):
        total = 0.0
        for z, y in zip(z_row, y_row, strict=True):
            q = 1.0 / (1.0 + math.exp(-z))
            l_pos = (1 - q) ** gamma_pos * math.log(q)
            q_m = max(q - m, 0.0)
            l_neg = q_m**gamma_neg * math.log(1 - q_m)
            total += -y * l_pos - (1 - y) * l_neg
        losses.append(total)
    return losses


@pytest.mark.parametrize("gamma_pos,gamma_neg,clip", [(0.0, 4.0, 0.05), (1.0, 2.0, 0.1), (0.0, 0.0, 0.0)])
def test_asl_matches_formula_on_random_logits(gamma_pos, gamma_neg, clip):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(16, 9, generator=g, dtype=torch.float64) * 3
    targets = (torch.rand(16, 9, generator=g) < 0.3).double()
    expected = torch.tensor(asl_by_formula(logits, targets, gamma_pos, gamma_neg, clip), dtype=torch.float64)
    per_input = AsymmetricLoss(gamma_pos, gamma_neg, clip, reduction="none")(logits, targets)
    assert per_input.shape == (16,)
    assert torch.allclose(per_input, expected, rtol=1e-10, atol=1e-12)
    assert torch.allclose(AsymmetricLoss(gamma_pos, gamma_neg, clip)(logits, targets), expected.mean())
    assert torch.allclose(AsymmetricLoss(gamma_pos, gamma_neg, clip, reduction="sum")(logits, targets),
                          expected.sum())


def test_paper_defaults_and_bce():
    asl = make_loss("asl")
    assert (asl.gamma_pos, asl.gamma_neg, asl.clip) == (0.0, 4.0, 0.05)
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(8, 5, generator=g)
    targets = (torch.rand(8, 5, generator=g) < 0.5).float()
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(1).mean()
    assert torch.allclose(make_loss("bce")(logits, targets), bce, atol=1e-6)
    # ASL discounts easy negatives: it is never above BCE
    assert make_loss("asl")(logits, targets) <= bce


def test_asl_finite_with_extreme_logits_and_gradients():
    logits = torch.tensor([[-200.0, 200.0, 0.0, 50.0]], requires_grad=True)
    targets = torch.tensor([[1.0, 0.0, 1.0, 1.0]])
    loss = make_loss("asl")(logits, targets)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    # a negative with q <= m contributes nothing
    assert make_loss("asl")(torch.tensor([[-5.0]]), torch.tensor([[0.0]])) == 0


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="loss must be 'asl' or 'bce'"):
        make_loss("focal")
    with pytest.raises(ValueError, match="clip"):
        AsymmetricLoss(clip=1.5)
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricLoss(reduction="max")
    with pytest.raises(ValueError, match="targets must have the shape"):
        make_loss()(torch.zeros(2, 3), torch.zeros(2, 4))
