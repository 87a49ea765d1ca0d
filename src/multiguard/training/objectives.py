"""Training objectives: what one training step minimises, registered by name in
:data:`multiguard.training.registries.TRAINING_OBJECTIVES` (``--objective``).

An objective is a factory ``factory(context) -> step``; ``step(model, images, labels, noise)`` draws its noise
from the generator ``noise`` (the training core's, seeded per epoch) and returns ``(loss, outputs)``: the scalar
loss to minimise and the model's outputs on the last forward pass (the core checks a classifier's first outputs
look like logits). Shapes: ``images`` ``(B, C, S, S)`` in [0, 1], ``labels`` ``(B, c)`` in {0, 1}.

Adding one (e.g. a consistency objective for classifiers) is one registration::

    TRAINING_OBJECTIVES.register("consistency", "my_package.objectives:consistency",
                                 record=ObjectiveRecord(trains="classifier"))

Built in: ``gaussian`` (classifiers: the loss on noisy inputs), ``consistency`` (classifiers: the loss on m noisy
copies plus their per-label disagreement, Jeong & Shin 2020 carried to labels), ``vote`` (classifiers: the loss on
m noisy copies plus the cross-entropy of their averaged soft top-1 vote, what the k' = 1 certificate counts), and
``mse`` and ``stability`` (denoisers). Their options (``objective_options``, ``--objective-option KEY=VALUE``) and
what each optimises for the multi-label certificate: docs/training.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multiguard.training.engine import add_noise

__all__ = ["ObjectiveContext", "Step", "TrainingClock", "consistency", "consistency_loss", "gaussian", "mse",
           "ramp", "stability", "stability_loss", "vote", "vote_loss"]

Step = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class TrainingClock:
    """Where training is: the training core sets ``fraction`` (steps done / steps in the whole run, in [0, 1])
    before every step, so an objective can ramp a weight up; a resumed run sets the same values."""

    fraction: float = 0.0


@dataclass(frozen=True)
class ObjectiveContext:
    """What an objective may read: the noise level ``sigma`` and ``clamp`` of the training inputs, the
    classifier's ``criterion`` (ASL or BCE on logits; classifiers), a frozen ``classifier`` (denoisers trained
    through one; ``None`` otherwise), the objective's ``options`` (``KEY=VALUE`` of ``--objective-option``) and
    the training ``clock``."""

    sigma: float
    clamp: bool = False
    criterion: nn.Module | None = None
    classifier: nn.Module | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    clock: TrainingClock = field(default_factory=TrainingClock)

    def option(self, name: str, default: Any, kind: type, low: float, objective: str) -> Any:
        """``options[name]`` as ``kind`` (``default`` if absent); ValueError naming it if below ``low``."""
        raw = self.options.get(name, default)
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            what = {int: "a whole number", float: "a number"}.get(kind, kind.__name__)
            raise ValueError(f"objective_options: {objective}'s {name} must be {what} "
                             f"(--objective-option {name}=VALUE), got {raw!r}") from None
        if value < low:
            raise ValueError(f"objective_options: {objective}'s {name} must be >= {low:g}, got {value!r}")
        return value

    def check_options(self, objective: str, known: tuple[str, ...]) -> None:
        """ValueError naming any option ``objective`` does not read."""
        unknown = sorted(set(self.options) - set(known))
        if unknown:
            raise ValueError(f"objective_options: {objective} has no option {', '.join(unknown)}; its options are "
                             f"{', '.join(known) if known else 'none'}")


def gaussian(context: ObjectiveContext) -> Step:
    """Classifiers: ``criterion(model(x + eps), y)`` with ``eps ~ N(0, sigma^2 I)`` fresh on every batch."""
    context.check_options("gaussian", ())

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(add_noise(images, context.sigma, context.clamp, noise))
        return context.criterion(logits, labels), logits

    return step


def ramp(weight: float, warmup: float, fraction: float) -> float:
    """``weight`` scaled linearly from 0 to 1 over the first ``warmup`` of training (``fraction`` done)."""
    return weight if warmup <= 0 else weight * min(1.0, fraction / warmup)


def _noisy_copies(model: nn.Module, images: torch.Tensor, copies: int, context: ObjectiveContext,
                  noise: torch.Generator) -> torch.Tensor:
    """Logits ``(m, B, c)`` of ``m`` independently noised copies of ``images`` (one forward pass)."""
    batch = images.repeat(copies, *([1] * (images.dim() - 1)))
    logits = model(add_noise(batch, context.sigma, context.clamp, noise))
    return logits.reshape(copies, len(images), -1)


def consistency_loss(logits: torch.Tensor) -> torch.Tensor:
    """Per-label consistency of ``m`` noisy copies: ``logits`` ``(m, B, c)``; with ``q_j = sigmoid(logits_j)`` and
    ``q_bar`` their mean over copies, the mean over copies and inputs of ``sum_labels KL(Bern(q_bar) || Bern(q_j))``.
    Zero iff every copy gives every label the same probability; positive otherwise."""
    probs = torch.sigmoid(logits.float())
    mean = probs.mean(0, keepdim=True).expand_as(probs)
    # KL(Bern(p) || Bern(q)) = BCE(q-logits, p) - H(p): the cross term through logits stays finite
    cross = F.binary_cross_entropy_with_logits(logits.float(), mean, reduction="none")
    entropy = F.binary_cross_entropy(mean, mean, reduction="none")
    return (cross - entropy).sum(-1).mean()


def consistency(context: ObjectiveContext) -> Step:
    """Classifiers, consistency regularisation (Jeong & Shin, NeurIPS 2020) per label: ``m`` noisy copies of each
    input, ``mean_j criterion(model(x + eps_j), y) + lambda * consistency_loss + eta * H(q_bar)``.

    Options: ``copies`` m (default 2), ``weight`` lambda (default 5), ``entropy`` eta (default 0: the mean's
    Bernoulli entropy summed over labels), ``warmup`` (fraction of training over which lambda ramps up from 0;
    default 0)."""
    context.check_options("consistency", ("copies", "weight", "entropy", "warmup"))
    copies = context.option("copies", 2, int, 1, "consistency")
    weight = context.option("weight", 5.0, float, 0, "consistency")
    entropy_weight = context.option("entropy", 0.0, float, 0, "consistency")
    warmup = context.option("warmup", 0.0, float, 0, "consistency")

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _noisy_copies(model, images, copies, context, noise)
        task = sum(context.criterion(z, labels) for z in logits) / copies
        loss = task + ramp(weight, warmup, context.clock.fraction) * consistency_loss(logits)
        if entropy_weight > 0:
            mean = torch.sigmoid(logits.float()).mean(0)
            loss = loss + entropy_weight * F.binary_cross_entropy(mean, mean, reduction="none").sum(-1).mean()
        return loss, logits[-1]

    return step


def vote_loss(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the soft top-1 vote of ``m`` noisy copies against the uniform vote on the label set.

    ``logits`` ``(m, B, c)``, ``labels`` ``(B, c)`` in {0, 1}. ``v = mean_j softmax(logits_j / T)`` over labels
    estimates the smoothed classifier's k' = 1 vote frequencies p_l; the loss is ``-mean_{l in L} log v_l``,
    averaged over inputs with a non-empty L (0 if none). Minimal when the vote is spread evenly over L."""
    votes = torch.softmax(logits.float() / temperature, dim=-1).mean(0)
    positives = labels.float()
    size = positives.sum(-1)
    has = size > 0
    if not bool(has.any()):
        return logits.sum() * 0.0
    per_input = -(positives * torch.log(votes.clamp_min(1e-12))).sum(-1) / size.clamp_min(1)
    return per_input[has].mean()


def vote(context: ObjectiveContext) -> Step:
    """Classifiers, the k' = 1 vote the certificate counts: ``m`` noisy copies, ``mean_j criterion(model(x +
    eps_j), y) + lambda * vote_loss``: the per-label loss keeps each label's score calibrated (mAP, R = 0), the
    vote term raises the smoothed top-1 frequency of every true label, which Theorem 1's lower bounds read.

    Options: ``copies`` m (default 2), ``weight`` lambda (default 1), ``temperature`` T of the soft vote
    (default 1), ``consistency`` mu: plus ``mu * consistency_loss`` (default 0: none), ``warmup`` (fraction of
    training over which both weights ramp up; default 0)."""
    context.check_options("vote", ("copies", "weight", "temperature", "consistency", "warmup"))
    copies = context.option("copies", 2, int, 1, "vote")
    weight = context.option("weight", 1.0, float, 0, "vote")
    temperature = context.option("temperature", 1.0, float, 1e-6, "vote")
    agreement = context.option("consistency", 0.0, float, 0, "vote")
    warmup = context.option("warmup", 0.0, float, 0, "vote")

    def step(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
             noise: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _noisy_copies(model, images, copies, context, noise)
        task = sum(context.criterion(z, labels) for z in logits) / copies
        scale = ramp(1.0, warmup, context.clock.fraction)
        loss = task + scale * weight * vote_loss(logits, labels, temperature)
        if agreement > 0:
            loss = loss + scale * agreement * consistency_loss(logits)
        return loss, logits[-1]

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
