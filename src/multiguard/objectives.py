"""Training objectives: what one training step minimises, registered by name in
:data:`multiguard.train_settings.TRAINING_OBJECTIVES` (``--objective``).

An objective is a factory ``factory(context) -> step``; ``step(model, images, labels, noise)`` draws its noise
from the generator ``noise`` (the training core's, seeded per epoch) and returns ``(loss, outputs)``: the scalar
loss to minimise and the model's outputs on the last forward pass (the core checks a classifier's first outputs
look like logits). Shapes: ``images`` ``(B, C, S, S)`` in [0, 1], ``labels`` ``(B, c)`` in {0, 1}.

Adding one (e.g. a consistency objective for classifiers) is one registration::

    TRAINING_OBJECTIVES.register("consistency", "my_package.objectives:consistency", trains="classifier")

Built in: ``gaussian`` (classifiers: the loss on noisy inputs), ``mse`` and ``stability`` (denoisers).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .training import add_noise

__all__ = ["ObjectiveContext", "Step", "gaussian", "mse", "stability", "stability_loss"]

Step = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may read: the noise level ``sigma`` and ``clamp`` of the training inputs, the
    classifier's ``criterion`` (ASL or BCE on logits; classifiers), and a frozen ``classifier`` (denoisers trained
    through one; ``None`` otherwise)."""

    sigma: float
    clamp: bool = False
    criterion: nn.Module | None = None
    classifier: nn.Module | None = None


def gaussian(context: ObjectiveContext) -> Step:
    """Classifiers: ``criterion(model(x + eps), y)`` with ``eps ~ N(0, sigma^2 I)`` fresh on every batch."""

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(add_noise(images, context.sigma, context.clamp, noise))
        return context.criterion(logits, labels), logits

    return step


def mse(context: ObjectiveContext) -> Step:
    """Denoisers: ``mean((D(x + eps) - x)^2)`` over pixels; no labels, no classifier."""

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        restored = model(add_noise(images, context.sigma, context.clamp, noise))
        return F.mse_loss(restored, images), restored

    return step


def stability_loss(noisy_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Mean Bernoulli KL from ``sigmoid(clean_logits)`` to ``sigmoid(noisy_logits)``, both ``(B, c)``: 0 iff equal."""
    target = torch.sigmoid(clean_logits)
    cross = F.binary_cross_entropy_with_logits(noisy_logits, target)
    entropy = F.binary_cross_entropy_with_logits(clean_logits, target)
    return cross - entropy


def stability(context: ObjectiveContext) -> Step:
    """Denoisers (Salman et al., NeurIPS 2020): :func:`stability_loss` from the frozen classifier's outputs on the
    clean images to its outputs on the denoised noisy ones; no labels."""
    classifier = context.classifier
    if classifier is None:
        raise ValueError("classifier: the stability objective needs a classifier checkpoint (--classifier)")

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        restored = model(add_noise(images, context.sigma, context.clamp, noise))
        with torch.no_grad():
            clean_logits = classifier(images)
        return stability_loss(classifier(restored), clean_logits), restored

    return step
