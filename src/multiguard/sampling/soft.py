"""A differentiable Monte Carlo estimate of the smoothed classifier's label probabilities (for attacks).

The smoothed classifier's label probability ``p_i(x) = P(i in top-k'(f(x + eps)))``, ``eps ~ N(0, sigma^2 I)``,
is a step function of the base scores inside an expectation: its Monte Carlo estimate from counts has no useful
gradient. :func:`soft_smoothed_scores` replaces the hard top-k' membership of each noisy copy by a soft one,
``sigmoid((s_i - t) / temperature)`` with t halfway between the k'-th and (k'+1)-th score (for k' = c every label is
always in), and averages it over ``samples`` noisy copies: a smooth, differentiable estimate of a smoothed version
of ``p_i`` (the expectation over noise of the gradient, as in SmoothAdv, Salman et al. 2019).

It is an **estimate**, for building attacks: it is biased (the soft membership is not the hard one; as
``temperature -> 0`` it approaches it) and noisy (``samples`` copies), and it carries no guarantee. Certificates
and measurements use the counts of :meth:`MultiGuard.sample_counts`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from multiguard.common.seeds import STREAM_ATTACK, noise_seed
from multiguard.common.validation import check_int, check_positive
from multiguard.sampling.engine import as_batch, as_index

__all__ = ["attack_noise", "soft_scores_of", "soft_smoothed_scores", "soft_top_k_prime"]


def soft_top_k_prime(scores: torch.Tensor, k_prime: int, temperature: float) -> torch.Tensor:
    """Soft membership of the top-k' ``(B, c)``: sigmoid of each score's distance to the k'/k'+1 midpoint."""
    c = scores.shape[1]
    if k_prime >= c:
        return torch.ones_like(scores)
    top = torch.topk(scores, k_prime + 1, dim=1).values
    threshold = 0.5 * (top[:, k_prime - 1] + top[:, k_prime])
    return torch.sigmoid((scores - threshold[:, None]) / temperature)


def attack_noise(seed: int, index: int, step: int, shape: tuple[int, ...], device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """Standard normal noise of ``shape`` for input ``index`` at ``step``, on the attack's stream of ``seed``
    (independent of the certification's and the measurement's)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(noise_seed(seed, index, step, STREAM_ATTACK))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def soft_smoothed_scores(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, sigma: float, k_prime: int, samples: int,
    seed: int, index: Sequence[int] | np.ndarray, step: int = 0, temperature: float = 1.0,
    clamp: tuple[float, float] | None = None,
) -> torch.Tensor:
    """The soft smoothed scores ``q (N, c)`` of ``x (N, *shape)``: the mean over ``samples`` noisy copies of
    :func:`soft_top_k_prime` of the base scores, differentiable in ``x`` (and the model's parameters).

    The noise of input i is drawn from ``(seed, index[i], step)`` on the attack stream; the same arguments give
    the same noise. Values lie in [0, 1] (and sum to about k' per row for small ``temperature``)."""
    num, shape = x.shape[0], tuple(x.shape[1:])
    noise = torch.stack([attack_noise(seed, int(i), step, (samples, *shape), x.device, x.dtype) for i in index])
    batch = x[:, None] + sigma * noise
    if clamp is not None:
        batch = batch.clamp(*clamp)
    scores = model(batch.reshape(num * samples, *shape))
    return soft_top_k_prime(scores.float(), k_prime, temperature).reshape(num, samples, -1).mean(dim=1)


def soft_scores_of(smoother: Any, x: torch.Tensor | np.ndarray, samples: int = 64, seed: int = 0, *,
                   index: Sequence[int] | None = None, temperature: float = 1.0, step: int = 0) -> torch.Tensor:
    """``MultiGuard.soft_scores``: a differentiable Monte Carlo **estimate** of the smoothed label probabilities
    of ``smoother`` at ``x (N, *shape)``: float ``(N, c)``, the mean over ``samples`` noisy copies of a soft
    top-k' membership of the base scores (:func:`soft_smoothed_scores`), with gradients to ``x``, for your own
    attacks. Biased (soft, not hard, membership), noisy and drawn with float Gaussian noise whatever the
    smoother's ``noise``; no guarantee: certify and measure with the counts."""
    tensor = x if isinstance(x, torch.Tensor) else as_batch(x)
    samples = check_int(samples, "samples", 1)
    temperature = check_positive(temperature, "temperature")
    tensor = tensor.to(device=smoother.device, dtype=smoother.dtype)
    return soft_smoothed_scores(smoother.model, tensor, sigma=smoother.sigma, k_prime=smoother.k_prime,
                                samples=samples, seed=check_int(seed, "seed", 0),
                                index=as_index(index, tensor.shape[0]), step=step, temperature=temperature,
                                clamp=smoother.clamp)
