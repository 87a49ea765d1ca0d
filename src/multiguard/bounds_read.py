"""How many one-sided bounds a certificate reads, and label probability bounds at the level that makes the union
over all of them at most alpha. Pure NumPy/SciPy; no torch.

A certificate computed from Monte Carlo bounds holds with probability ``1 - alpha`` when every bound it reads
holds; by the union bound it suffices that each of the B bounds it reads fails with probability at most
``alpha / B``. How many it reads depends on the certificate (docs/certificate.md):

- MultiGuard (Theorem 1, with or without the second terms) reads the lower bound of each label of L and the
  upper bound of each label outside L: ``B = c`` (:func:`multiguard_bounds_read`).
- Jia et al.'s per-label baseline certifies each label l of L from its lower bound and the upper bounds of all
  other labels, the other labels of L included: every label of L has both bounds read as soon as
  ``|L| >= 2``, so ``B = c + |L|`` (``c`` when ``|L| <= 1``; :func:`jia_bounds_read`).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from .certify import _as_label_mask
from .validation import check_alpha, check_int

__all__ = ["jia_bounds_read", "label_probability_bounds_reading", "multiguard_bounds_read"]


def _mask(labels: object) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"labels must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    return _as_label_mask(array, np.atleast_2d(array).shape)


def multiguard_bounds_read(labels: object) -> np.ndarray:
    """One-sided bounds MultiGuard's certificate reads per input: ``c`` (the lower bounds of L, the upper
    bounds outside L). int64 ``(N,)``."""
    mask = _mask(labels)
    return np.full(mask.shape[0], mask.shape[1], dtype=np.int64)


def jia_bounds_read(labels: object) -> np.ndarray:
    """One-sided bounds Jia et al.'s per-label certificate reads per input: ``|L|`` lower bounds, the upper
    bounds of the ``c - |L|`` labels outside L, and, when ``|L| >= 2``, the upper bounds of the labels of L too
    (each is another label of L's competitor): ``c + |L|``, or ``c`` when ``|L| <= 1``. int64 ``(N,)``."""
    mask = _mask(labels)
    d = mask.sum(axis=1)
    return np.where(d >= 2, mask.shape[1] + d, mask.shape[1]).astype(np.int64)


def label_probability_bounds_reading(
    counts: object, n: int, alpha: float, bounds_read: object
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds on every label probability, at level ``alpha / bounds_read[i]`` each
    for input i (the bounds of :func:`multiguard.certify.label_probability_bounds`, which is this with
    ``bounds_read = c``).

    ``counts`` ``(N, c)`` (or ``(c,)``): the n samples' top-k' counts; ``bounds_read`` ``(N,)`` (or a scalar):
    how many one-sided bounds the certificate computed from row i reads. Guarantee: for any label set L fixed
    before sampling, the bounds a certificate reads, if it reads at most ``bounds_read[i]`` of them, all hold
    together with probability at least ``1 - alpha``.
    """
    array = np.asarray(counts)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {array.dtype}")
    single = array.ndim == 1
    array = np.atleast_2d(array).astype(np.float64)
    if array.ndim != 2 or array.shape[-1] == 0 or np.isnan(array).any():
        raise ValueError(f"counts must have shape (N, c) or (c,) with c >= 1 and no NaN, got shape {array.shape}")
    n = check_int(n, "n", 1)
    alpha = check_alpha(alpha)
    if (array != np.round(array)).any() or (array < 0).any() or (array > n).any():
        raise ValueError(f"counts must be whole numbers in [0, n] = [0, {n}]")
    read = np.asarray(bounds_read)
    if read.dtype.kind not in "iu" or read.ndim > 1 or (read.ndim == 1 and read.shape[0] != array.shape[0]) or (
        read < 1
    ).any():
        raise ValueError(f"bounds_read must be a positive integer or ({array.shape[0]},) of them, got {bounds_read!r}")
    level = (alpha / np.broadcast_to(read, (array.shape[0],)).astype(np.float64))[:, None]
    positive, below = array > 0, array < n
    lower = stats.beta.ppf(level, np.where(positive, array, 1.0), n - array + 1.0)
    upper = stats.beta.ppf(1.0 - level, array + 1.0, np.where(below, n - array, 1.0))
    lower, upper = np.where(positive, lower, 0.0), np.where(below, upper, 1.0)
    return (lower[0], upper[0]) if single else (lower, upper)
