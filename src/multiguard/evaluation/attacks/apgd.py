"""``apgd-targeted``: the default attack on the smoothed multi-label classifier's top-k.

Aim: the smallest ``|L ∩ top-k(x + delta)|`` over ``||delta||_2 <= R``, the top-k of the *smoothed* classifier.
The intersection drops by one when a label of L leaves the smoothed top-k and a label outside L takes its place.
So the attack is targeted, per input:

- *targets*: the weakest labels of L in the smoothed top-k, by Monte Carlo counts at the current point (the
  weakest first; restart rho attacks the rho-th weakest, counted again at the best point found so far, so a
  label removed by one restart is not attacked again and the next one is);
- *objective*: the margin ``log q_r - log q_t`` between the target t and its replacement r, the strongest label
  outside L that is outside the current top-k, on the soft smoothed scores q of
  :func:`multiguard.sampling.soft.soft_smoothed_scores` (EOT over ``samples`` fresh noisy copies per step, as in
  SmoothAdv, Salman et al. 2019);
- *steps*: APGD (Croce & Hein, ICML 2020) in l2: step size ``2R`` halved at the checkpoints
  ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)`` where fewer than 75 % of the steps since
  the last checkpoint raised the objective or nothing improved, a restart from the best point at each halving,
  and momentum 0.75; every iterate projected on the ball and on ``input_range``;
- *restarts* (``restarts``), each from the best point so far, the later ones with a random offset of norm R/4,
  and a *warm start* (``init``: e.g. the perturbation found at a smaller radius, which lies in this ball too);
- *selection*: every candidate (the start and each restart's best) is judged on ``select_n`` samples of a seed of
  its own; the best (smallest intersection, then the smallest count gap between its weakest label of L in the
  top-k and the strongest label outside) is kept.

The kept point is then measured as :func:`multiguard.evaluation.attack.attack_smoothed` measures it: ``n``
fresh samples of the measurement's seed, independent of the attack's and the selection's noise, so success is
measured and not assumed, and choosing among candidates does not bias the measurement.

Why not torchattacks or ART (neither is installed here): their APGD implementations attack a deterministic
``model(x) -> logits`` with their own losses (cross-entropy, DLR, a targeted DLR towards one class) on the
argmax; the objective here is a margin between two labels of a *multi-label top-k*, re-targeted per input as
labels leave, on a Monte Carlo estimate with fresh noise each step, with per-input warm starts and a
count-based selection. Wrapping that in a fake "model" would fight their loss, stopping and restart logic, so
the schedule (a few lines) is written here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from multiguard.certificates.bounds import as_label_mask
from multiguard.common.seeds import attack_evaluation_seed
from multiguard.common.validation import check_float, check_int, check_interval
from multiguard.evaluation.attack import (
    AttackResult,
    _intersection,
    _pgd,
    _project,
    _smoother_for,
    attack_in_chunks,
)
from multiguard.sampling.engine import as_batch, as_index
from multiguard.sampling.smoothed import MultiGuard, smoothed_top_k
from multiguard.sampling.soft import attack_noise, soft_smoothed_scores

__all__ = ["apgd_checkpoints", "attack_smoothed_apgd"]

_STEP_OFFSET = 1 << 20  # the attack noise's step ids: apart from pgd's
_SELECTION_TAG = 0x5E1EC


def apgd_checkpoints(steps: int) -> list[int]:
    """The iterations (1..steps) after which APGD may halve its step size: ``ceil(p_j * steps)``."""
    points, previous, current = [0.0], 0.0, 0.22
    while current <= 1.0:
        points.append(current)
        previous, current = current, current + max(current - previous - 0.03, 0.06)
    ends = {int(np.ceil(round(p * steps, 9))) for p in points}
    return sorted(e for e in ends if 0 < e <= steps)


def _selection_seed(seed: int, round_: int) -> int:
    return int(np.random.SeedSequence([int(seed), _SELECTION_TAG, round_]).generate_state(1, np.uint32)[0]) >> 1


def _gap_score(counts: np.ndarray, mask: np.ndarray, k: int, n: int) -> np.ndarray:
    """Lower is better: ``|L ∩ top-k|`` plus, in [0, 1), how close the weakest label of L in the top-k is to
    the strongest label outside L and outside the top-k (by counts)."""
    top = smoothed_top_k(counts, k)
    size = _intersection(top, mask)
    in_top = np.zeros_like(mask)
    np.put_along_axis(in_top, top, True, axis=1)
    weakest = np.where(mask & in_top, counts, np.inf).min(axis=1)
    rival = np.where(~mask & ~in_top, counts, -np.inf).max(axis=1)
    gap = np.where(np.isfinite(weakest) & np.isfinite(rival), weakest - rival, n)
    return size + (np.clip(gap, -n, n) + n) / (2.0 * n + 1.0)


def _targets(counts: np.ndarray, mask: np.ndarray, k: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``rank``-th weakest label of L in the top-k of each row (cycling), int64 ``(B,)``, and whether a
    row has one and a label outside L to replace it, bool ``(B,)``."""
    top = smoothed_top_k(counts, k)
    in_top = np.zeros_like(mask)
    np.put_along_axis(in_top, top, True, axis=1)
    eligible = mask & in_top
    order = np.argsort(np.where(eligible, counts, np.iinfo(np.int64).max), axis=1, kind="stable")
    num = eligible.sum(axis=1)
    pick = order[np.arange(len(counts)), rank % np.maximum(num, 1)]
    return pick.astype(np.int64), (num > 0) & (~mask & ~in_top).any(axis=1)


def _margin(q: torch.Tensor, target: torch.Tensor, outside: torch.Tensor, k: int) -> torch.Tensor:
    """``log q_r - log q_t`` ``(B,)``: r the strongest label outside L and outside the soft top-k."""
    log_q = q.clamp_min(1e-6).log()
    with torch.no_grad():
        in_top = torch.zeros_like(outside).scatter_(1, torch.topk(q, k, dim=1).indices, True)
        candidates = outside & ~in_top
        candidates = torch.where(candidates.any(dim=1, keepdim=True), candidates, outside)
        rival = torch.where(candidates, q, torch.full_like(q, -1.0)).argmax(dim=1)
    return log_q.gather(1, rival[:, None])[:, 0] - log_q.gather(1, target[:, None])[:, 0]


class _Objective:
    """The margin and its gradient at ``x + delta`` for one chunk (EOT with fresh noise per call)."""

    def __init__(self, smoother: MultiGuard, x: torch.Tensor, index: np.ndarray, outside: torch.Tensor, *, k: int,
                 samples: int, seed: int, temperature: float) -> None:
        self.smoother, self.x, self.index, self.outside = smoother, x, index, outside
        self.k, self.samples, self.seed, self.temperature = k, samples, seed, temperature
        self.calls = 0

    def __call__(self, delta: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.smoother
        delta = delta.detach().requires_grad_(True)
        q = soft_smoothed_scores(s.model, self.x + delta, sigma=s.sigma, k_prime=s.k_prime, samples=self.samples,
                                 seed=self.seed, index=self.index, step=_STEP_OFFSET + self.calls,
                                 temperature=self.temperature, clamp=s.clamp)
        self.calls += 1
        value = _margin(q, target, self.outside, self.k)
        (grad,) = torch.autograd.grad(value.sum(), delta)
        return value.detach(), grad.detach()


def _step(delta: torch.Tensor, grad: torch.Tensor, eta: torch.Tensor, x: torch.Tensor, radius: float,
          input_range: tuple[float, float] | None) -> torch.Tensor:
    """``P(delta + eta * grad / ||grad||)`` per input."""
    flat = grad.reshape(grad.shape[0], -1)
    unit = (flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(grad.shape)
    out = delta + eta.view(-1, *([1] * (delta.ndim - 1))) * unit
    _project(out, x, radius, input_range)
    return out


def _apgd(objective: _Objective, start: torch.Tensor, target: torch.Tensor, active: torch.Tensor, *,
          radius: float, steps: int, input_range: tuple[float, float] | None) -> torch.Tensor:
    """One APGD run of ``steps`` from ``start`` ``(B, *shape)``; returns the best iterate by the objective."""
    x = objective.x
    view = (-1, *([1] * (x.ndim - 1)))
    eta = torch.full((x.shape[0],), 2.0 * radius, device=x.device, dtype=x.dtype)
    current = start.clone()
    value, grad = objective(current, target)
    grad = grad * active.view(view)
    best, best_value, best_grad = current.clone(), value.clone(), grad.clone()
    previous = current.clone()
    checkpoints = set(apgd_checkpoints(steps))
    rises = torch.zeros_like(eta)
    last, eta_last, best_last = 0, eta.clone(), best_value.clone()
    for t in range(steps):
        z = _step(current, grad, eta, x, radius, input_range)
        if t == 0:
            new = z
        else:
            new = current + 0.75 * (z - current) + 0.25 * (current - previous)
            _project(new, x, radius, input_range)
        new_value, new_grad = objective(new, target)
        new_grad = new_grad * active.view(view)
        rises += (new_value > value).to(eta.dtype)
        better = new_value > best_value
        best[better], best_value[better], best_grad[better] = new[better], new_value[better], new_grad[better]
        previous, current, value, grad = current, new, new_value, new_grad
        if t + 1 in checkpoints:
            halve = (rises < 0.75 * (t + 1 - last)) | ((eta == eta_last) & (best_value == best_last))
            eta_last, best_last = eta.clone(), best_value.clone()
            eta = torch.where(halve, eta / 2.0, eta)
            current[halve], previous[halve], grad[halve], value[halve] = (
                best[halve], best[halve], best_grad[halve], best_value[halve])
            rises.zero_()
            last = t + 1
    return best


def _attack_chunk(smoother: MultiGuard, x: torch.Tensor, mask: np.ndarray, index: np.ndarray, init: torch.Tensor,
                  *, radius: float, k: int, steps: int, samples: int, restarts: int, select_n: int, seed: int,
                  temperature: float, input_range: tuple[float, float] | None, batch_size: int,
                  pgd_steps: int = 0) -> torch.Tensor:
    """The kept perturbation ``(B, *shape)`` of one chunk of inputs."""
    outside = torch.as_tensor(~mask, device=x.device)
    objective = _Objective(smoother, x, index, outside, k=k, samples=samples, seed=seed, temperature=temperature)
    best = init.clone()
    _project(best, x, radius, input_range)

    def judge(delta: torch.Tensor, round_: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.asarray(smoother.sample_counts(x + delta, select_n, seed=_selection_seed(seed, round_),
                                                   index=index, batch_size=batch_size))
        return _gap_score(counts, mask, k, select_n), counts

    best_score, counts = judge(best, 0)
    if pgd_steps:  # the baseline's own point is a candidate: same noise, so the same delta pgd finds
        found = _pgd(smoother, x, torch.as_tensor(mask, device=x.device), index, radius=radius, k=k,
                     steps=pgd_steps, samples=samples, step_size=2.5 * radius / pgd_steps, temperature=temperature,
                     seed=seed, input_range=input_range)
        score, found_counts = judge(found, restarts + 1)
        keep = score < best_score
        best[torch.as_tensor(keep, device=x.device)] = found[torch.as_tensor(keep, device=x.device)]
        best_score, counts = np.where(keep, score, best_score), np.where(keep[:, None], found_counts, counts)
    for rho in range(restarts):
        target, active = _targets(counts, mask, k, rho)
        start = best.clone()
        if rho > 0:
            noise = torch.stack([attack_noise(seed, int(i), _STEP_OFFSET - rho, tuple(x.shape[1:]), x.device,
                                              x.dtype) for i in index])  # per input: chunks do not matter
            flat = noise.reshape(noise.shape[0], -1)
            start += (0.25 * radius * flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)).reshape(start.shape)
            _project(start, x, radius, input_range)
        active_t = torch.as_tensor(active, device=x.device).to(x.dtype)
        found = _apgd(objective, start, torch.as_tensor(target, device=x.device), active_t, radius=radius,
                      steps=steps, input_range=input_range)
        score, found_counts = judge(found, rho + 1)
        keep = (score < best_score) & active
        best[torch.as_tensor(keep, device=x.device)] = found[torch.as_tensor(keep, device=x.device)]
        best_score = np.where(keep, score, best_score)
        counts = np.where(keep[:, None], found_counts, counts)
    return best


def attack_smoothed_apgd(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | MultiGuard,
    x: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    *,
    radius: float,
    k: int,
    k_prime: int | None = None,
    sigma: float | None = None,
    steps: int = 30,
    samples: int = 32,
    restarts: int = 3,
    select_n: int = 256,
    pgd_steps: int = 20,
    n: int = 1000,
    seed: int = 0,
    index: np.ndarray | Sequence[int] | None = None,
    init: torch.Tensor | None = None,
    temperature: float = 1.0,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    clamp: tuple[float, float] | None = None,
    eval_seed: int | None = None,
    batch_size: int = 1000,
    measure_clean: bool = False,
    device: str | torch.device | None = None,
) -> AttackResult:
    """The targeted APGD attack (module docstring) on each input; measured as
    :func:`~multiguard.evaluation.attack.attack_smoothed` measures (same arguments, same :class:`AttackResult`).

    Args (beyond :func:`~multiguard.evaluation.attack.attack_smoothed`'s):
        steps: APGD steps per restart; samples: noisy copies per step (EOT); restarts: APGD runs per input, each
            at the next weakest label of L, from the best point so far (the first from ``init``).
        select_n: samples that judge each candidate (a seed of their own; not the measurement's).
        pgd_steps: first run the ``pgd`` baseline's untargeted steps (its noise, so its very point) as one more
            candidate, the restarts then going on from the better (0: none).
        init: ``(N, *input_shape)`` warm start (e.g. the result at a smaller radius), projected on this ball;
            default zeros.

    Per input and radius the model sees about ``restarts * (steps + 1) * samples`` copies with gradients and
    ``(restarts + 1) * select_n + n`` without. ``sizes`` are an empirical upper bound on the worst case, as
    for ``attack_smoothed``.
    """
    radius = check_float(radius, "radius", 0.0, low_open=True)
    steps, samples = check_int(steps, "steps", 1), check_int(samples, "samples", 1)
    restarts, select_n = check_int(restarts, "restarts", 1), check_int(select_n, "select_n", 1)
    pgd_steps = check_int(pgd_steps, "pgd_steps", 0)
    n, seed, batch_size = check_int(n, "n", 1), check_int(seed, "seed", 0), check_int(batch_size, "batch_size", 1)
    temperature = check_float(temperature, "temperature", 0.0, low_open=True)
    input_range = check_interval(input_range, "input_range")
    smoother = _smoother_for(model, labels, k_prime=k_prime, sigma=sigma, clamp=clamp, device=device)
    k = check_int(k, "k", 1, smoother.num_classes, high_label="the number of classes")
    eval_seed = attack_evaluation_seed(seed) if eval_seed is None else check_int(eval_seed, "eval_seed", 0)
    x_dev, mask, index_arr, deltas = attack_inputs(smoother, x, labels, index, init, input_range)
    attack_in_chunks(smoother, x_dev, deltas, batch_size=batch_size, samples=samples, attack_chunk=lambda part: (
        _attack_chunk(smoother, x_dev[part], mask[part], index_arr[part], deltas[part], radius=radius, k=k,
                      steps=steps, samples=samples, restarts=restarts, select_n=select_n, seed=seed,
                      temperature=temperature, input_range=input_range, batch_size=batch_size, pgd_steps=pgd_steps)))
    return _measured(smoother, x_dev, deltas, mask, index_arr, radius=radius, k=k, n=n, eval_seed=eval_seed,
                     batch_size=batch_size, measure_clean=measure_clean)


def attack_inputs(smoother: MultiGuard, x: object, labels: object, index: object, init: object,
                  input_range: tuple[float, float] | None) -> tuple[torch.Tensor, np.ndarray, np.ndarray, torch.Tensor]:
    """What every attack starts from: ``(x_dev, mask, index, deltas)``, the inputs on the smoothed classifier's
    device and dtype ``(N, ...)``, the label mask ``(N, c)``, the noise indices ``(N,)`` and the starting
    perturbations (zeros, or ``init`` of x's shape). ValueError naming ``x`` or ``init`` where they do not fit."""
    tensor = as_batch(x)
    num = tensor.shape[0]
    mask = as_label_mask(labels, num, smoother.num_classes)
    index_arr = as_index(index, num)
    x_dev = tensor.to(device=smoother.device, dtype=smoother.dtype).contiguous()
    if input_range is not None and num and (x_dev.min() < input_range[0] or x_dev.max() > input_range[1]):
        raise ValueError(f"x must lie in input_range {input_range} (pass input_range=None for unbounded inputs)")
    deltas = torch.zeros_like(x_dev)
    if init is not None:
        init = torch.as_tensor(init).to(device=x_dev.device, dtype=x_dev.dtype)
        if init.shape != x_dev.shape:
            raise ValueError(f"init must have the shape of x {tuple(x_dev.shape)}, got {tuple(init.shape)}")
        deltas = init.clone()
    return x_dev, mask, index_arr, deltas


def _measured(smoother: MultiGuard, x: torch.Tensor, deltas: torch.Tensor, mask: np.ndarray, index: np.ndarray, *,
              radius: float, k: int, n: int, eval_seed: int, batch_size: int, measure_clean: bool) -> AttackResult:
    """``x + deltas`` measured on ``n`` fresh samples of ``eval_seed``."""
    counts = np.asarray(smoother.sample_counts(x + deltas, n, seed=eval_seed, index=index, batch_size=batch_size))
    clean_sizes = None
    if measure_clean:
        clean = np.asarray(smoother.sample_counts(x, n, seed=eval_seed, index=index, batch_size=batch_size))
        clean_sizes = _intersection(smoothed_top_k(clean, k), mask)
    predicted = smoothed_top_k(counts, k)
    return AttackResult(deltas=deltas.detach().cpu(), sizes=_intersection(predicted, mask),
                        counts=counts.astype(np.int64), predicted=predicted, clean_sizes=clean_sizes, labels=mask,
                        radius=radius, k=k, k_prime=smoother.k_prime, sigma=smoother.sigma, n=n)
