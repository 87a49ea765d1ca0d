"""The attack on the per-label decisions of the smoothed *thresholded* classifier (``multiguard attack --threshold``).

The thresholded smoothed classifier predicts ``{i : p_i(x) > q}``, ``p_i(x) = Pr(s_i(x + eps) > tau_i)``
(:mod:`multiguard.certificates.thresholded`). The attacker wants wrong decisions within ``||delta||_2 <= R``:
true labels turned off (``p_i <= q``) and other labels turned on (``p_i > q``). Per input:

- *soft on-probabilities*: ``p̂_i`` = the mean over ``samples`` fresh noisy copies per step (EOT, as SmoothAdv) of
  ``sigmoid((s_i - tau_i) / temperature)``, differentiable in delta (:func:`soft_on_scores`; an estimate, no
  guarantee);
- *objective*: for each targeted label the log of its soft probability of being on the wrong side,
  ``log(1 - p̂_i)`` for a true label and ``log p̂_i`` for another one, computed in log space (a log-sum-exp of
  log-sigmoids over the copies, so that a label on, or off, in every copy still has a gradient), capped at
  ``cap`` above the cut's value (``log(1 - q)``, ``log q``) so that a label pushed past its cut stops pulling; the
  sum over the targets is maximised;
- *targets, nearest to the cut first*: round 0 targets the correctly decided label whose Monte Carlo
  probability (by counts at the current best point) is nearest its cut, together with every label already
  decided wrongly there (to keep them wrong); each later round adds the next nearest label not tried in vain
  (``rounds`` rounds, greedy);
- *steps*: the APGD schedule of :mod:`multiguard.evaluation.attacks.apgd` (step size, momentum, checkpoints),
  every iterate on the ball and in ``input_range``; round 0 starts from ``init`` (a warm start, e.g. the result
  at a smaller radius), each later round from the best point so far;
- *selection*: each candidate is judged on ``select_n`` samples of a seed of its own (more wrong decisions, then
  the wrong ones furthest past their cuts, so that the flips survive fresh samples); the best is kept.

The kept point is measured on ``n`` fresh samples with the seed :func:`thresholded_evaluation_seed` ``(seed)``
(independent of the certificate's, the attack's, the selection's and the top-k measurement's noise): the set
``{i : on_count_i / n > q}``. A label that the certificate says is on (or off) at R but is measured off (on)
there is a certificate failure (probability at most alpha per input) or Monte Carlo error on a near tie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import special

from multiguard.certificates import thresholded as _thresholded
from multiguard.common.validation import check_float, check_int, check_interval
from multiguard.evaluation.attack import _project, attack_in_chunks
from multiguard.evaluation.attacks.apgd import _apgd, attack_inputs
from multiguard.sampling.smoothed import MultiGuard
from multiguard.sampling.soft import attack_noise

__all__ = ["ThresholdedAttackResult", "attack_thresholded", "soft_on_scores", "thresholded_evaluation_seed"]

_STEP_OFFSET = 1 << 21  # the attack noise's step ids: apart from pgd's and apgd-targeted's
_SELECTION_TAG = 0x7E5D
_MEASURE_TAG = 0x7E5E


def _seed_of(seed: int, *tags: int) -> int:
    return int(np.random.SeedSequence([int(seed), *tags]).generate_state(1, np.uint32)[0]) >> 1


def thresholded_evaluation_seed(seed: int) -> int:
    """The seed of the fresh samples that measure a thresholded attack's point (differs from ``seed``, from
    :func:`~multiguard.common.seeds.attack_evaluation_seed` and from the attack's streams)."""
    return _seed_of(seed, _MEASURE_TAG)


@dataclass(frozen=True, eq=False)
class ThresholdedAttackResult:
    """What :func:`attack_thresholded` found for N inputs at one radius.

    Attributes:
        deltas: float ``(N, *input_shape)`` on the CPU, ``||deltas[i]||_2 <= radius``, in ``input_range``.
        on_counts: int64 ``(N, c)``: per-label on-counts of ``n`` fresh samples at ``x + delta``.
        predicted: bool ``(N, c)``: the smoothed thresholded set there, ``on_counts / n > q``.
        labels: bool ``(N, c)`` true labels.
    """

    deltas: torch.Tensor
    on_counts: np.ndarray
    predicted: np.ndarray
    labels: np.ndarray
    radius: float
    q: float
    n: int

    def metrics(self) -> dict[str, np.ndarray]:
        """Per-input precision, recall, F1 and Hamming accuracy of ``predicted`` (float64 ``(N,)`` each, the
        certificate's definitions: :func:`multiguard.certificates.thresholded.set_metric_bounds`)."""
        return _thresholded.set_metric_bounds(self.predicted, self.predicted, self.labels)


def soft_on_scores(smoother: MultiGuard, x: torch.Tensor, *, samples: int, seed: int, index: np.ndarray,
                   step: int, temperature: float = 1.0) -> torch.Tensor:
    """A differentiable Monte Carlo **estimate** of the on-probabilities ``p_i(x)``: float ``(N, c)``, the mean
    over ``samples`` noisy copies (attack stream ``(seed, index[i], step)``) of ``sigmoid((s_i - tau_i) / T)``.
    Biased and noisy, no guarantee (measure with :meth:`MultiGuard.sample_on_counts`)."""
    return torch.sigmoid(_soft_on_logits(smoother, x, samples=samples, seed=seed, index=index, step=step,
                                         temperature=temperature)).mean(dim=1)


def _soft_on_logits(smoother: MultiGuard, x: torch.Tensor, *, samples: int, seed: int, index: np.ndarray,
                    step: int, temperature: float) -> torch.Tensor:
    """``(s_i - tau_i) / T`` of each noisy copy: float ``(N, samples, c)``."""
    num, shape = x.shape[0], tuple(x.shape[1:])
    tau = torch.as_tensor(smoother._need_thresholds(), device=x.device).clamp(-1e6, 1e6).float()
    noise = torch.stack([attack_noise(seed, int(i), step, (samples, *shape), x.device, x.dtype) for i in index])
    batch = x[:, None] + smoother.sigma * noise
    if smoother.clamp is not None:
        batch = batch.clamp(*smoother.clamp)
    scores = smoother.model(batch.reshape(num * samples, *shape)).float()
    return ((scores - tau) / temperature).reshape(num, samples, -1)


class _Objective:
    """The capped log wrong-side probabilities of the targeted labels and their gradient (fresh EOT noise per
    call)."""

    def __init__(self, smoother: MultiGuard, x: torch.Tensor, index: np.ndarray, mask: np.ndarray, *, q: float,
                 samples: int, seed: int, temperature: float, cap: float) -> None:
        self.smoother, self.x, self.index = smoother, x, index
        self.sign = torch.as_tensor(np.where(mask, -1.0, 1.0), device=x.device, dtype=torch.float32)
        self.ceiling = torch.as_tensor(np.log(np.where(mask, 1.0 - q, q)) + cap, device=x.device,
                                       dtype=torch.float32)
        self.samples, self.seed, self.temperature = samples, seed, temperature
        self.calls = 0

    def __call__(self, delta: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = delta.detach().requires_grad_(True)
        z = _soft_on_logits(self.smoother, self.x + delta, samples=self.samples, seed=self.seed, index=self.index,
                            step=_STEP_OFFSET + self.calls, temperature=self.temperature)
        self.calls += 1
        log_wrong = torch.logsumexp(torch.nn.functional.logsigmoid(self.sign[:, None] * z), dim=1) - np.log(z.shape[1])
        value = (torch.minimum(log_wrong, self.ceiling) * target).sum(dim=1)
        (grad,) = torch.autograd.grad(value.sum(), delta)
        return value.detach(), grad.detach()


def _standing(on_counts: np.ndarray, mask: np.ndarray, n: int, q: float) -> tuple[np.ndarray, np.ndarray]:
    """``(wrong, distance)``: bool ``(B, c)`` decisions that are wrong at these counts, and float ``(B, c)`` how
    far each label is from its cut on the probit scale (0 for the wrong ones)."""
    p = (on_counts + 0.5) / (n + 1.0)
    wrong = (on_counts / n > q) != mask
    distance = np.abs(special.ndtri(p) - special.ndtri(q))
    return wrong, np.where(wrong, 0.0, distance)


def _score(on_counts: np.ndarray, mask: np.ndarray, n: int, q: float) -> np.ndarray:
    """Lower is better for the attacker: minus the wrong decisions, plus in (0, 1] how near its cut the least
    safely wrong label is (a point whose flips survive fresh samples is preferred)."""
    wrong = (on_counts / n > q) != mask
    past = np.abs(special.ndtri((on_counts + 0.5) / (n + 1.0)) - special.ndtri(q))
    safest = np.where(wrong, past, np.inf).min(axis=1)
    return -wrong.sum(axis=1) + np.where(np.isfinite(safest), 1.0 / (1.0 + safest), 1.0)


def _attack_chunk(smoother: MultiGuard, x: torch.Tensor, mask: np.ndarray, index: np.ndarray, init: torch.Tensor,
                  *, radius: float, q: float, steps: int, samples: int, rounds: int, select_n: int, seed: int,
                  temperature: float, cap: float, input_range: tuple[float, float] | None,
                  batch_size: int) -> torch.Tensor:
    """The kept perturbation ``(B, *shape)`` of one chunk of inputs."""
    objective = _Objective(smoother, x, index, mask, q=q, samples=samples, seed=seed, temperature=temperature,
                           cap=cap)
    best = init.clone()
    _project(best, x, radius, input_range)

    def judge(delta: torch.Tensor, round_: int) -> tuple[np.ndarray, np.ndarray]:
        counts = np.asarray(smoother.sample_on_counts(x + delta, select_n, seed=_seed_of(seed, _SELECTION_TAG,
                                                      round_), index=index, batch_size=batch_size))
        return _score(counts, mask, select_n, q), counts

    best_score, counts = judge(best, 0)
    tried = np.zeros_like(mask)
    rows = np.arange(len(mask))
    for rho in range(rounds):
        wrong, distance = _standing(counts, mask, select_n, q)
        open_ = ~wrong & ~tried
        nearest = np.where(open_, distance, np.inf).argmin(axis=1)
        has = open_.any(axis=1)
        target = wrong.copy()
        target[rows[has], nearest[has]] = True
        found = _apgd(objective, best, torch.as_tensor(target, device=x.device, dtype=torch.float32),
                      torch.as_tensor(has, device=x.device, dtype=x.dtype), radius=radius, steps=steps,
                      input_range=input_range)
        score, found_counts = judge(found, rho + 1)
        keep = has & (score < best_score)
        tried[rows[has & ~keep], nearest[has & ~keep]] = True
        best[torch.as_tensor(keep, device=x.device)] = found[torch.as_tensor(keep, device=x.device)]
        best_score, counts = np.where(keep, score, best_score), np.where(keep[:, None], found_counts, counts)
    return best


def attack_thresholded(
    smoother: MultiGuard,
    x: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    *,
    radius: float,
    q: float = _thresholded.DEFAULT_Q,
    steps: int = 30,
    samples: int = 32,
    rounds: int = 3,
    select_n: int = 256,
    n: int = 1000,
    seed: int = 0,
    index: np.ndarray | Sequence[int] | None = None,
    init: torch.Tensor | None = None,
    temperature: float = 1.0,
    cap: float = 0.25,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    eval_seed: int | None = None,
    batch_size: int = 1000,
) -> ThresholdedAttackResult:
    """Attack the per-label decisions of ``smoother``'s thresholded smoothed classifier (module docstring).

    Args:
        smoother: a :class:`MultiGuard` with thresholds (``MultiGuard(..., thresholds=...)``; a ValueError
            naming ``thresholds`` otherwise).
        x: ``(N, *input_shape)`` inputs; labels: ``(N, c)`` boolean masks of the true labels.
        radius: l2 radius R > 0; q: the smoothed classifier's cut in (0, 1).
        steps: APGD steps per round; samples: noisy copies per step (EOT); rounds: greedy rounds, each adding
            the next label nearest its cut; select_n: samples judging each candidate.
        n: fresh samples that measure the kept point (seed ``eval_seed``, default
            :func:`thresholded_evaluation_seed` ``(seed)``); seed: the attack's noise per ``(seed, index)``.
        init: ``(N, *input_shape)`` warm start, projected on this ball; temperature: of the soft decisions
            (in score units); cap: how far past its cut (in log probability of the wrong side) a label stops
            pulling.
        input_range: ``(lo, hi)`` that ``x + delta`` stays in (``None``: none).

    Returns:
        a :class:`ThresholdedAttackResult`: ``predicted`` is the measured set at the kept point, an empirical
        upper bound on how well the smoothed classifier does within R (up to Monte Carlo error).
    """
    smoother._need_thresholds()
    radius = check_float(radius, "radius", 0.0, low_open=True)
    q = check_float(q, "q", 0.0, 1.0, low_open=True, high_open=True)
    steps, samples = check_int(steps, "steps", 1), check_int(samples, "samples", 1)
    rounds, select_n = check_int(rounds, "rounds", 1), check_int(select_n, "select_n", 1)
    n, seed, batch_size = check_int(n, "n", 1), check_int(seed, "seed", 0), check_int(batch_size, "batch_size", 1)
    temperature = check_float(temperature, "temperature", 0.0, low_open=True)
    cap = check_float(cap, "cap", 0.0, low_open=True)
    input_range = check_interval(input_range, "input_range")
    eval_seed = thresholded_evaluation_seed(seed) if eval_seed is None else check_int(eval_seed, "eval_seed", 0)
    x_dev, mask, index_arr, deltas = attack_inputs(smoother, x, labels, index, init, input_range)
    attack_in_chunks(smoother, x_dev, deltas, batch_size=batch_size, samples=samples, attack_chunk=lambda part: (
        _attack_chunk(smoother, x_dev[part], mask[part], index_arr[part], deltas[part], radius=radius, q=q,
                      steps=steps, samples=samples, rounds=rounds, select_n=select_n, seed=seed,
                      temperature=temperature, cap=cap, input_range=input_range, batch_size=batch_size)))
    on_counts = np.asarray(smoother.sample_on_counts(x_dev + deltas, n, seed=eval_seed, index=index_arr,
                                                     batch_size=batch_size)).astype(np.int64)
    return ThresholdedAttackResult(deltas=deltas.detach().cpu(), on_counts=on_counts, predicted=on_counts / n > q,
                                   labels=mask, radius=radius, q=q, n=n)
