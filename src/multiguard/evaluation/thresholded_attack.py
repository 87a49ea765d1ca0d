"""The thresholded part of ``multiguard attack --threshold``: the thresholded certificate of the attacked inputs,
the attack on their per-label decisions at each radius (:mod:`multiguard.evaluation.attacks.thresholded`), and
the table of ``empirical_thresholded.csv`` with its violations (a step of
:func:`multiguard.evaluation.attack_run.run_attack`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from multiguard.certificates import thresholded as _thresholded
from multiguard.evaluation.attacks.thresholded import attack_thresholded, thresholded_evaluation_seed
from multiguard.evaluation.empirical import AttackParts
from multiguard.sampling.smoothed import MultiGuard

__all__ = ["ThresholdedAttack", "attack_thresholded_at_radii", "certify_thresholded_inputs"]


@dataclass(frozen=True, eq=False)
class ThresholdedAttack:
    """The thresholded attack of N inputs at R radii.

    Attributes:
        predicted: bool ``(N, R, c)``: the measured thresholded set at each input's attacked point.
        on_counts: int64 ``(N, R, c)``: the on-counts behind it (``n`` fresh samples each).
        certificate: the thresholded certificate of the inputs (``None`` without one).
        violations: int64 ``(R,)``: inputs with a label certified on (off) at R measured off (on); ``None``
            without a certificate. violated_labels: int64 ``(R,)``: such labels, over all inputs.
        table: the columns of ``empirical_thresholded.csv``
            (:data:`~multiguard.evaluation.empirical.THRESHOLDED_COLUMNS` but ``num_inputs``), float ``(R,)`` each.
    """

    predicted: np.ndarray
    on_counts: np.ndarray
    certificate: _thresholded.ThresholdedCertificate | None
    violations: np.ndarray | None
    violated_labels: np.ndarray | None
    table: dict[str, np.ndarray]


def certify_thresholded_inputs(smoother: MultiGuard, parts: AttackParts, x: torch.Tensor, indices: np.ndarray, *,
                               n: int, alpha: float, seed: int, q: float, batch_size: int
                               ) -> _thresholded.ThresholdedCertificate:
    """The thresholded certificate of every input from n samples at ``x`` drawn as a certify run with this
    ``seed`` draws its on-counts (or the counts a killed attack saved in ``parts``)."""
    done = parts.load("certified-on")
    if done is None:
        on_counts = np.asarray(smoother.sample_on_counts(x, n, seed=seed, index=indices, batch_size=batch_size))
        parts.save("certified-on", on_counts=on_counts)
    else:
        on_counts = done["on_counts"]
    return _thresholded.certify_thresholded(on_counts, n, alpha=alpha, sigma=smoother.sigma, q=q)


def attack_thresholded_at_radii(smoother: MultiGuard, x: torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                                radii: np.ndarray, *, q: float, options: dict, n: int, seed: int, batch_size: int,
                                log: Callable[[str], None], parts: AttackParts,
                                certificate: _thresholded.ThresholdedCertificate | None) -> ThresholdedAttack:
    """The thresholded attack (``options``: steps, samples, rounds, temperature) on every input at each radius,
    in blocks saved in ``parts`` (a killed attack's blocks are not done again), each radius warm-started from the
    previous one's perturbations; R = 0 is measured, not attacked."""
    num, c = labels.shape
    predicted = np.zeros((num, radii.size, c), dtype=bool)
    on_counts = np.zeros((num, radii.size, c), dtype=np.int64)
    block = max(1, batch_size // max(1, options["samples"]))
    log(f"thresholded attack: {num} inputs x {radii.size} radii, q = {q:g}, {options['rounds']} rounds of "
        f"{options['steps']} steps of {options['samples']} samples, then n = {n} samples to measure")
    previous = torch.zeros(tuple(x.shape), dtype=torch.float32)
    for j, radius in enumerate(radii):
        current = previous.clone()
        for begin in range(0, num, block):
            part = np.arange(begin, min(num, begin + block))
            name = f"t{j:03d}-p{begin:07d}"
            found = parts.load(name)
            if found is None:
                if radius > 0:
                    result = attack_thresholded(smoother, x[part], labels[part], radius=float(radius), q=q, n=n,
                                                seed=seed, index=indices[part], init=previous[part],
                                                batch_size=batch_size, **options)
                    found = {"on_counts": result.on_counts, "deltas": result.deltas.numpy()}
                else:
                    counts = smoother.sample_on_counts(x[part], n, seed=thresholded_evaluation_seed(seed),
                                                       index=indices[part], batch_size=batch_size)
                    found = {"on_counts": np.asarray(counts), "deltas": np.zeros(tuple(x[part].shape), np.float32)}
                parts.save(name, **found)
            on_counts[part, j] = found["on_counts"]
            current[torch.as_tensor(part)] = torch.as_tensor(found["deltas"]).to(current)
        previous = current
        predicted[:, j] = on_counts[:, j] / n > q
        log(f"thresholded attack: R = {radius:g}: mean wrong decisions {(predicted[:, j] != labels).sum(1).mean():.3f}"
            f" per input")
    return _results(predicted, on_counts, labels, radii, certificate)


def _results(predicted: np.ndarray, on_counts: np.ndarray, labels: np.ndarray, radii: np.ndarray,
             certificate: _thresholded.ThresholdedCertificate | None) -> ThresholdedAttack:
    """The empirical and certified means per radius, and the violations."""
    empirical = _thresholded.set_metric_bounds(predicted, predicted, labels)  # (N, R) each
    table = {"radius": radii.astype(np.float64),
             **{name: empirical[name].mean(axis=0) for name in ("precision", "recall", "f1")}}
    violations = violated = None
    if certificate is None:
        table.update({f"certified_{name}": np.full(radii.size, np.nan) for name in ("precision", "recall", "f1")})
        table["violations"] = np.full(radii.size, -1)
    else:
        certified = _thresholded.thresholded_metrics(certificate.on_radius, certificate.off_radius, labels, radii)
        table.update({f"certified_{name}": np.atleast_1d(getattr(certified, name))
                      for name in ("precision", "recall", "f1")})
        certified_on, possibly_on = certificate.sets(radii)  # (N, R, c)
        broken = (certified_on & ~predicted) | (~possibly_on & predicted)
        violations = broken.any(axis=2).sum(axis=0).astype(np.int64)
        violated = broken.sum(axis=(0, 2)).astype(np.int64)
        table["violations"] = violations
    return ThresholdedAttack(predicted=predicted, on_counts=on_counts, certificate=certificate,
                             violations=violations, violated_labels=violated, table=table)
