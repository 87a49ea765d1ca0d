"""An l2 PGD attack on the smoothed multi-label classifier: how far the certificates are from what an attacker gets.

The certificate is a lower bound on robustness: at least e(R) labels of L(x) stay in the smoothed top-k under
every perturbation of l2 norm below R. An attack gives an upper bound: the labels of L that are still in the
smoothed top-k at the point it found. This module attacks the smoothed classifier itself, in the manner of
SmoothAdv (Salman et al., NeurIPS 2019): the gradient of a Monte Carlo estimate of a smooth surrogate of the
smoothed label probabilities, taken with respect to the perturbation delta, drives normalised l2 steps that are
projected on the ball ``||delta||_2 <= R`` and on the valid input range (``x + delta`` in [0, 1] for images).

The surrogate: for each of ``samples`` noisy copies ``x + delta + eps`` the base model's scores s give a soft
top-k' membership ``sigmoid((s_i - t) / temperature)``, t halfway between the k'-th and the (k'+1)-th score
(for k' = c every label is always in). Their mean over the copies, q_i, is a smooth stand-in for
``p_i(x + delta)``. Each step increases ``mean log q_j`` over the k highest non-L labels and decreases
``mean log q_i`` over the labels of L.

The result is then measured as the paper measures the smoothed classifier: n fresh Monte Carlo samples at
``x + delta`` through :meth:`MultiGuard.sample_counts` (a seed of their own, independent of the attack's noise
and of any certification run), the smoothed top-k taken on the counts (ties by label index), and
``|L ∩ top-k|`` per input. Precision, recall and F1 use the certificate's definitions
(:func:`multiguard.certificates.metrics.certified_metrics`), so empirical and certified curves can be drawn together.

Usage::

    from multiguard.evaluation.attack import attack_smoothed
    from multiguard.evaluation.attack_run import run_attack
    from multiguard.evaluation.empirical import load_empirical

    result = attack_smoothed(model, x, labels, radius=0.5, k=3, k_prime=1, sigma=0.5, n=1000)
    result.sizes          # int64 (N,): |L ∩ smoothed top-k(x + delta)| from n fresh samples
    result.deltas         # (N, *input_shape): ||delta||_2 <= 0.5, x + delta in [0, 1]

    run = run_attack("model.pt", out_dir="attack", radii=[0.25, 0.5, 1.0], k=3, k_prime=1, num_inputs=100)
    curves = load_empirical("attack")   # radius, precision, recall, f1 arrays; the settings
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from multiguard.certificates import metrics as _metrics
from multiguard.certificates.bounds import as_label_mask
from multiguard.common.seeds import attack_evaluation_seed
from multiguard.common.validation import check_float, check_int, check_interval
from multiguard.evaluation.empirical import EMPIRICAL_COLUMNS, EmpiricalCurves, load_empirical
from multiguard.sampling.engine import as_batch, as_index, eval_mode
from multiguard.sampling.smoothed import MultiGuard, smoothed_top_k
from multiguard.sampling.soft import attack_noise as _attack_noise
from multiguard.sampling.soft import soft_top_k_prime as _soft_top_k_prime

__all__ = [
    "EMPIRICAL_COLUMNS",
    "AttackResult",
    "EmpiricalCurves",
    "attack_in_chunks",
    "attack_smoothed",
    "load_empirical",
    "smoothed_top_k",
]



def _intersection(top: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|L ∩ top|: int64 ``(N,)`` from the ``(N, k)`` predicted labels and the ``(N, c)`` masks of L."""
    return np.take_along_axis(labels, top, axis=1).sum(axis=1).astype(np.int64)


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class AttackResult:
    """What :func:`attack_smoothed` found for N inputs at one radius.

    Attributes:
        deltas: float tensor ``(N, *input_shape)`` on the CPU: ``||deltas[i]||_2 <= radius`` and, with an
            ``input_range``, ``x[i] + deltas[i]`` inside it.
        sizes: int64 ``(N,)``: ``|L ∩ smoothed top-k(x + delta)|`` measured on ``n`` fresh samples.
        counts: int64 ``(N, c)``: those samples' top-k' counts at ``x + delta``.
        predicted: int64 ``(N, k)``: the smoothed top-k at ``x + delta`` (ties by label index).
        clean_sizes: int64 ``(N,)`` the same measurement at ``x`` (same samples' seed), or ``None``.
        labels: bool ``(N, c)`` mask of L.
    """

    deltas: torch.Tensor
    sizes: np.ndarray
    counts: np.ndarray
    predicted: np.ndarray
    clean_sizes: np.ndarray | None
    labels: np.ndarray
    radius: float
    k: int
    k_prime: int
    sigma: float
    n: int

    def metrics(self) -> _metrics.CertifiedMetrics:
        """Empirical top-k precision, recall and F1 at ``radius`` (the certificate's definitions)."""
        return _metrics.certified_metrics(self.sizes, self.labels, self.k)


def _project(delta: torch.Tensor, x: torch.Tensor, radius: float, input_range: tuple[float, float] | None) -> None:
    """In place: onto the l2 ball of ``radius`` (per input), then onto ``x + delta`` in ``input_range``.

    The box step moves every coordinate towards 0 (x lies in the range), so the ball constraint survives it.
    """
    norms = delta.reshape(delta.shape[0], -1).double().norm(dim=1)
    scale = torch.where(norms > radius, radius / (norms * (1.0 + 1e-6)), torch.ones_like(norms))
    delta.mul_(scale.to(delta.dtype).view(-1, *([1] * (delta.ndim - 1))))
    if input_range is not None:
        delta.copy_((x + delta).clamp_(*input_range) - x)


def _pgd(
    smoother: MultiGuard,
    x: torch.Tensor,
    labels: torch.Tensor,
    index: np.ndarray,
    *,
    radius: float,
    k: int,
    steps: int,
    samples: int,
    step_size: float,
    temperature: float,
    seed: int,
    input_range: tuple[float, float] | None,
) -> torch.Tensor:
    """PGD on one chunk of inputs ``x (B, *shape)`` with masks ``labels (B, c)``; returns delta ``(B, *shape)``."""
    model, sigma, k_prime = smoother.model, smoother.sigma, smoother.k_prime
    num, shape = x.shape[0], tuple(x.shape[1:])
    delta = torch.zeros_like(x)
    inside = labels.to(x.dtype)
    outside = 1.0 - inside
    active = (labels.any(dim=1) & (~labels).any(dim=1)).to(x.dtype)  # nothing to attack otherwise
    for step in range(steps):
        noise = torch.stack(
            [_attack_noise(seed, int(i), step, (samples, *shape), x.device, x.dtype) for i in index]
        )  # (B, m, *shape)
        delta.requires_grad_(True)
        batch = (x + delta)[:, None] + sigma * noise
        if smoother.clamp is not None:
            batch = batch.clamp(*smoother.clamp)
        scores = model(batch.reshape(num * samples, *shape))
        q = _soft_top_k_prime(scores.float(), k_prime, temperature).reshape(num, samples, -1).mean(dim=1)
        log_q = q.clamp_min(1e-6).log()
        with torch.no_grad():  # the k strongest labels outside L: the ones that can take L's places
            ranked = torch.where(outside > 0, q, torch.full_like(q, -1.0))
            rivals = torch.zeros_like(q).scatter_(1, torch.topk(ranked, k, dim=1).indices, 1.0) * outside
        gain = (rivals * log_q).sum(1) / rivals.sum(1).clamp_min(1.0)
        loss = (inside * log_q).sum(1) / inside.sum(1).clamp_min(1.0)
        objective = ((gain - loss) * active).sum()
        (grad,) = torch.autograd.grad(objective, delta)
        delta = delta.detach()
        flat = grad.reshape(num, -1)
        norms = flat.norm(dim=1).clamp_min(1e-12)
        delta += step_size * (flat / norms[:, None]).reshape(delta.shape)
        _project(delta, x, radius, input_range)
    return delta.detach()


def _smoother_for(model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | MultiGuard,
                  labels: np.ndarray | torch.Tensor, *, k_prime: int | None, sigma: float | None,
                  clamp: tuple[float, float] | None, device: str | torch.device | None) -> MultiGuard:
    """The smoothed classifier attacked: ``model`` itself if a MultiGuard (``k_prime``, ``sigma``, ``clamp`` and
    ``device`` must be left out or agree), else one built around the bare model; a ValueError names a mismatch."""
    if isinstance(model, MultiGuard):
        smoother = model
        for name, value, own in (("k_prime", k_prime, smoother.k_prime), ("sigma", sigma, smoother.sigma),
                                 ("clamp", clamp, smoother.clamp)):
            if value is not None and (tuple(value) if name == "clamp" else value) != own:  # type: ignore[arg-type]
                raise ValueError(f"{name}={value!r} disagrees with the MultiGuard's {name}={own!r}")
        if device is not None and torch.device(device) != smoother.device:
            raise ValueError(f"device={device!r} disagrees with the MultiGuard's device {smoother.device}")
    else:
        if sigma is None:
            raise ValueError("sigma is required when model is not a MultiGuard")
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else np.shape(labels)
        if len(shape) != 2:
            raise ValueError(f"labels must be an (N, c) mask, got shape {shape}")
        num_classes = int(shape[1])
        smoother = MultiGuard(model, num_classes, sigma, k_prime=1 if k_prime is None else k_prime, clamp=clamp,
                              device=device)
    return smoother


def _pgd_deltas(smoother: MultiGuard, x_dev: torch.Tensor, mask: np.ndarray, index_arr: np.ndarray, *,
                radius: float, k: int, steps: int, samples: int, step_size: float, temperature: float, seed: int,
                input_range: tuple[float, float] | None, batch_size: int) -> torch.Tensor:
    """The PGD perturbations of every input (zeros where there is no attack), in chunks of inputs whose
    noisy copies fit ``batch_size``."""
    deltas = torch.zeros_like(x_dev)
    if radius > 0 and steps > 0:
        labels_dev = torch.as_tensor(mask, device=smoother.device)

        def attack_chunk(part: slice) -> torch.Tensor:
            return _pgd(smoother, x_dev[part], labels_dev[part], index_arr[part], radius=radius, k=k, steps=steps,
                        samples=samples, step_size=step_size, temperature=temperature, seed=seed,
                        input_range=input_range)

        attack_in_chunks(smoother, x_dev, deltas, batch_size=batch_size, samples=samples, attack_chunk=attack_chunk)
    return deltas


def attack_in_chunks(smoother: MultiGuard, x_dev: torch.Tensor, deltas: torch.Tensor, *, batch_size: int,
                     samples: int, attack_chunk: Callable[[slice], torch.Tensor]) -> torch.Tensor:
    """Run an attack chunk by chunk of inputs: ``deltas[part] = attack_chunk(part)`` for the consecutive slices
    ``part`` of ``max(1, batch_size // samples)`` of the ``N = x_dev.shape[0]`` inputs (so that a chunk's
    ``samples`` noisy copies per input fit one forward batch of ``batch_size``), with ``smoother.model`` in eval
    mode and gradients on (both restored afterwards). ``deltas`` ``(N, *input_shape)`` is filled in place and
    returned; ``attack_chunk(part)`` returns the chunk's perturbations, of ``deltas[part]``'s shape, and may read
    ``deltas[part]`` (its start) first. Nothing is run for ``N = 0``."""
    num = x_dev.shape[0]
    if num:
        chunk = max(1, batch_size // samples)
        with eval_mode(smoother.model), torch.enable_grad():
            for start in range(0, num, chunk):
                part = slice(start, start + chunk)
                deltas[part] = attack_chunk(part)
    return deltas


def attack_smoothed(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | MultiGuard,
    x: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    *,
    radius: float,
    k: int,
    k_prime: int | None = None,
    sigma: float | None = None,
    steps: int = 20,
    samples: int = 32,
    n: int = 1000,
    seed: int = 0,
    index: np.ndarray | Sequence[int] | None = None,
    step_size: float | None = None,
    temperature: float = 1.0,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    clamp: tuple[float, float] | None = None,
    eval_seed: int | None = None,
    batch_size: int = 1000,
    measure_clean: bool = False,
    device: str | torch.device | None = None,
) -> AttackResult:
    """Attack the smoothed classifier at each input; measure what is left of L in its top-k at ``x + delta``.

    Args:
        model: the base classifier (a module or callable mapping ``(B, *input_shape)`` to scores ``(B, c)``)
            or a :class:`MultiGuard`, whose model, sigma, k' and clamp are then used (``k_prime``, ``sigma``
            and ``clamp`` must be left out or agree).
        x: ``(N, *input_shape)`` inputs; labels: ``(N, c)`` boolean masks of L (e.g. the ground truth).
        radius: l2 radius R of the attack (0: no perturbation, only the measurement).
        k: labels the smoothed classifier predicts; k_prime: labels the base classifier predicts (default 1);
            sigma: noise standard deviation (required with a bare model).
        steps: PGD steps; samples: noisy copies per input and step in the surrogate's Monte Carlo mean.
        n: fresh samples per input that measure the attacked point (use the certification's n).
        seed: seeds the attack's noise (stream of its own, per ``(seed, index, step)``); the measurement uses
            :func:`~multiguard.common.seeds.attack_evaluation_seed` ``(seed)`` unless ``eval_seed`` is given.
        index: ``(N,)`` non-negative integers naming the inputs (default ``range(N)``): the noise of input i
            depends on ``(seed, index[i])`` only.
        step_size: l2 length of each step (default ``2.5 * radius / steps``); temperature: of the soft top-k'.
        input_range: ``(lo, hi)`` that ``x + delta`` must stay in (default (0, 1), for images); ``None``: none.
        clamp: with a bare model, the base classifier's clamp of ``x + noise`` (as :class:`MultiGuard`'s).
        batch_size: forward batch size (inputs x samples per PGD forward; samples per measurement forward).
        measure_clean: also measure ``|L ∩ top-k|`` at ``x`` itself (``clean_sizes``).
        device: where to run (default: the smoother's / the model's device).

    Returns:
        an :class:`AttackResult`. Its ``sizes`` are an empirical upper bound on the worst case over the ball
        (up to the measurement's Monte Carlo error); a certified size e(R) of the same input should not exceed
        it except with probability alpha (the certificate's failure probability) or by Monte Carlo error of
        the measurement where labels are nearly tied.
    """
    radius = check_float(radius, "radius", 0.0)
    steps = check_int(steps, "steps", 0)
    samples = check_int(samples, "samples", 1)
    n = check_int(n, "n", 1)
    seed = check_int(seed, "seed", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    temperature = check_float(temperature, "temperature", 0.0, low_open=True)
    input_range = check_interval(input_range, "input_range")
    smoother = _smoother_for(model, labels, k_prime=k_prime, sigma=sigma, clamp=clamp, device=device)
    c = smoother.num_classes
    k = check_int(k, "k", 1, c, high_label="the number of classes")
    tensor = as_batch(x)
    num = tensor.shape[0]
    mask = as_label_mask(labels, num, c)
    index_arr = as_index(index, num)
    if step_size is None:
        step_size = 2.5 * radius / max(steps, 1)
    step_size = check_float(step_size, "step_size", 0.0)
    eval_seed = attack_evaluation_seed(seed) if eval_seed is None else check_int(eval_seed, "eval_seed", 0)

    device_, dtype = smoother.device, smoother.dtype
    x_dev = tensor.to(device=device_, dtype=dtype).contiguous()
    if input_range is not None and num and (x_dev.min() < input_range[0] or x_dev.max() > input_range[1]):
        raise ValueError(f"x must lie in input_range {input_range} (pass input_range=None for unbounded inputs)")
    deltas = _pgd_deltas(smoother, x_dev, mask, index_arr, radius=radius, k=k, steps=steps, samples=samples,
                         step_size=step_size, temperature=temperature, seed=seed, input_range=input_range,
                         batch_size=batch_size)
    attacked = x_dev + deltas
    counts = np.asarray(smoother.sample_counts(attacked, n, seed=eval_seed, index=index_arr, batch_size=batch_size))
    clean_sizes = None
    if measure_clean:
        clean = np.asarray(smoother.sample_counts(x_dev, n, seed=eval_seed, index=index_arr, batch_size=batch_size))
        clean_sizes = _intersection(smoothed_top_k(clean, k), mask)
    predicted = smoothed_top_k(counts, k)
    return AttackResult(deltas=deltas.detach().cpu(), sizes=_intersection(predicted, mask),
                        counts=counts.astype(np.int64), predicted=predicted, clean_sizes=clean_sizes, labels=mask,
                        radius=radius, k=k, k_prime=smoother.k_prime, sigma=smoother.sigma, n=n)
