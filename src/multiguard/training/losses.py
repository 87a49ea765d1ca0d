"""Multi-label losses on logits: the asymmetric loss (ASL) of Ridnik et al. (2021) and plain BCE.

With ``q_j = sigmoid(z_j)`` the predicted probability of label j, ``y_j`` in {0, 1},
and the shifted probability ``q_m = max(q_j - m, 0)``, ASL for one input is

    L_ASL = sum_j  - y_j (1 - q_j)^gamma_pos log(q_j)  -  (1 - y_j) q_m^gamma_neg log(1 - q_m)

(MultiGuard section 4.1). The paper uses ``gamma_pos = 0``, ``gamma_neg = 4``, ``m = 0.05``.
With ``gamma_pos = gamma_neg = 0`` and ``m = 0`` it is binary cross-entropy.

``paper_asl`` and ``bce`` are the ``asl`` and ``bce`` entries of :data:`multiguard.training.registries.LOSSES`;
:func:`multiguard.training.registries.make_loss` builds a loss by name.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AsymmetricLoss", "bce", "paper_asl"]

_REDUCTIONS = ("mean", "sum", "none")


class AsymmetricLoss(nn.Module):
    """ASL on logits.

    Args:
        gamma_pos: focusing exponent of positive labels (paper: 0).
        gamma_neg: focusing exponent of negative labels (paper: 4).
        clip: probability margin m shifting negatives (paper: 0.05); 0 disables it.
        reduction: ``'mean'`` (the per-input loss, summed over labels, averaged over the batch),
            ``'sum'`` (summed over inputs and labels) or ``'none'`` (per-input losses ``(N,)``).

    Shapes: ``logits`` ``(N, c)`` (or ``(c,)``), ``targets`` of the same shape with values in {0, 1}.
    """

    def __init__(self, gamma_pos: float = 0.0, gamma_neg: float = 4.0, clip: float = 0.05,
                 reduction: str = "mean"):
        super().__init__()
        if gamma_pos < 0 or gamma_neg < 0:
            raise ValueError(f"gamma_pos and gamma_neg must be >= 0, got {gamma_pos} and {gamma_neg}")
        if not 0 <= clip < 1:
            raise ValueError(f"clip must be in [0, 1), got {clip}")
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
        self.gamma_pos, self.gamma_neg, self.clip, self.reduction = (
            float(gamma_pos), float(gamma_neg), float(clip), reduction
        )

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if logits.shape != targets.shape:
            raise ValueError(f"targets must have the shape of logits {tuple(logits.shape)}, "
                             f"got {tuple(targets.shape)}")
        targets = targets.to(logits.dtype)
        q = torch.sigmoid(logits)
        log_q = F.logsigmoid(logits)  # log(q), stable for very negative logits
        if self.clip > 0:
            # 1 - max(q - m, 0) = min(1 - q + m, 1) >= m > 0, so the log is finite
            q_m = (q - self.clip).clamp(min=0)
            log_one_minus_q_m = torch.log((torch.sigmoid(-logits) + self.clip).clamp(max=1))
        else:
            q_m = q
            log_one_minus_q_m = F.logsigmoid(-logits)  # log(1 - q), stable for large logits
        pos = log_q if self.gamma_pos == 0 else (1 - q).pow(self.gamma_pos) * log_q
        neg = log_one_minus_q_m if self.gamma_neg == 0 else q_m.pow(self.gamma_neg) * log_one_minus_q_m
        per_label = -(targets * pos + (1 - targets) * neg)
        per_input = per_label.sum(-1)
        if self.reduction == "mean":
            return per_input.mean()
        if self.reduction == "sum":
            return per_input.sum()
        return per_input

    def extra_repr(self) -> str:
        return f"gamma_pos={self.gamma_pos}, gamma_neg={self.gamma_neg}, clip={self.clip}"


def paper_asl() -> nn.Module:
    """AsymmetricLoss(0, 4, 0.05), as in the paper."""
    return AsymmetricLoss(gamma_pos=0.0, gamma_neg=4.0, clip=0.05)


def bce() -> nn.Module:
    """Binary cross-entropy with ASL's reduction (summed over labels, averaged over inputs)."""
    return AsymmetricLoss(gamma_pos=0.0, gamma_neg=0.0, clip=0.0)
