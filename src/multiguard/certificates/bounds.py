"""Per-label probability bounds (Clopper-Pearson, one-sided, from ``scipy.stats``) and the count of one-sided
bounds a certificate reads, which sets the per-bound level of the Bonferroni split. NumPy/SciPy only."""

from __future__ import annotations

import numpy as np
from scipy import stats

from multiguard.common.validation import check_alpha, check_int

__all__ = [
    "as_label_mask", "clopper_pearson", "jia_bounds_read", "label_probability_bounds", "multiguard_bounds_read",
]


def _as_float_matrix(value: object, name: str) -> tuple[np.ndarray, bool]:
    """Return ``value`` as a float64 ``(N, c)`` array and whether it was a single ``(c,)`` row."""
    array = np.asarray(value, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"{name} contains NaN")
    single = array.ndim == 1
    return np.atleast_2d(array), single


def _index_rows(labels: object, num_inputs: int, num_classes: int) -> list | None:
    """The rows of ``labels`` if it is a list of label index lists (one per input; one list for one input)."""
    if not isinstance(labels, (list, tuple)):
        return None
    nested = bool(labels) and all(isinstance(row, (list, tuple, set, range, np.ndarray)) for row in labels)
    rows = list(labels) if nested or num_inputs != 1 else [labels]
    if len(rows) != num_inputs:
        return None
    values = [list(row) for row in rows]
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for row in values for v in row):
        return None
    if all(len(row) == num_classes and set(row) <= {0, 1} for row in values):
        return None  # a 0/1 mask written as lists
    return values


def as_label_mask(labels: object, num_inputs: int, num_classes: int, *, against: str = "x") -> np.ndarray:
    """``labels`` as a bool ``(N, c)`` mask, the one coercion of label sets: an array (or a tensor: anything
    with ``.numpy()``) of bools or of 0 and 1, or label index lists (``[[0, 2], [1]]``: one list per input;
    ``[0, 2]`` for a single input). A list of N rows of length c holding only 0 and 1 is read as a mask, and
    one ``(c,)`` row as one input's mask. ``against`` names what the shape must match, in messages."""
    rows = _index_rows(labels, num_inputs, num_classes)
    if rows is not None:
        mask = np.zeros((num_inputs, num_classes), dtype=bool)
        for i, row in enumerate(rows):
            for j in row:
                if not 0 <= int(j) < num_classes:
                    raise ValueError(f"labels must hold class indices in 0..{num_classes - 1}, got {int(j)} for "
                                     f"input {i}")
                mask[i, int(j)] = True
        return mask
    if hasattr(labels, "detach"):  # a torch tensor (no torch import here)
        labels = labels.detach().cpu().numpy()  # type: ignore[attr-defined]
    array = np.asarray(labels)
    if array.ndim == 1 and num_inputs == 1 and array.shape == (num_classes,):
        array = array[None]  # one input's mask
    if array.shape != (num_inputs, num_classes):
        raise ValueError(f"labels has shape {array.shape}, expected ({num_inputs}, {num_classes}) to match {against}")
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biuf":
            raise ValueError(f"labels must be a boolean mask, got dtype {array.dtype}")
        if np.isnan(array.astype(np.float64)).any():
            raise ValueError("labels contains NaN")
        if not np.isin(array, (0, 1)).all():
            raise ValueError("labels must be a boolean mask (only 0/1 or True/False values)")
        array = array.astype(bool)
    return array


def _as_label_mask(labels: object, shape: tuple[int, int], against: str = "the bounds") -> np.ndarray:
    return as_label_mask(labels, shape[0], shape[1], against=against)


def _check_probabilities(array: np.ndarray, name: str) -> None:
    if (array < 0).any() or (array > 1).any():
        raise ValueError(f"{name} must lie in [0, 1]")


def _as_radius(radius: object) -> tuple[np.ndarray, bool]:
    """Return radii as a 1-D float array and whether a scalar was given."""
    try:
        array = np.asarray(radius, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"radius must be a number or a 1-D array of numbers, got {radius!r}") from None
    if array.ndim > 1:
        raise ValueError(f"radius must be a scalar or a 1-D array, got shape {array.shape}")
    if np.isnan(array).any() or (array < 0).any():
        raise ValueError("radius must be >= 0 and not NaN")
    return np.atleast_1d(array), array.ndim == 0


def _check_bounds(lower: object, upper: object, labels: object) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    lower_arr, single = _as_float_matrix(lower, "lower")
    upper_arr, _ = _as_float_matrix(upper, "upper")
    if upper_arr.shape != lower_arr.shape:
        raise ValueError(f"upper has shape {upper_arr.shape}, expected {lower_arr.shape} to match lower")
    _check_probabilities(lower_arr, "lower")
    _check_probabilities(upper_arr, "upper")
    mask = _as_label_mask(labels, lower_arr.shape)
    return lower_arr, upper_arr, mask, single


def multiguard_bounds_read(labels: object) -> np.ndarray:
    """One-sided bounds MultiGuard's certificate (Theorem 1, with or without the second terms) reads per input:
    the lower bounds of L and the upper bounds outside L, ``c`` in all. int64 ``(N,)`` (``(1,)`` for a
    ``(c,)`` mask)."""
    mask = _mask_of(labels)
    return np.full(mask.shape[0], mask.shape[1], dtype=np.int64)


def jia_bounds_read(labels: object) -> np.ndarray:
    """One-sided bounds Jia et al.'s per-label certificate reads per input: the ``|L|`` lower bounds of L, the
    upper bounds of the labels outside L, and, when ``|L| >= 2``, the upper bounds of the labels of L too (each
    label of L competes with the others): ``c + |L|``, or ``c`` when ``|L| <= 1``. int64 ``(N,)``."""
    mask = _mask_of(labels)
    d = mask.sum(axis=1)
    return np.where(d >= 2, mask.shape[1] + d, mask.shape[1]).astype(np.int64)


def _mask_of(labels: object) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"labels must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    return _as_label_mask(array, np.atleast_2d(array).shape)


def _as_bounds_read(bounds_read: object, shape: tuple[int, int]) -> np.ndarray:
    """``bounds_read`` (None: c; a positive integer; or one per row) as int64 ``(N,)``."""
    if bounds_read is None:
        return np.full(shape[0], shape[1], dtype=np.int64)
    read = np.asarray(bounds_read)
    if (read.dtype.kind not in "iu" or read.ndim > 1 or (read.ndim == 1 and read.shape[0] != shape[0])
            or (read < 1).any()):
        raise ValueError(f"bounds_read must be a positive integer or ({shape[0]},) of them, got {bounds_read!r}")
    return np.broadcast_to(read.astype(np.int64), (shape[0],))


def label_probability_bounds(
    counts: object, n: int, alpha: float, bounds_read: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds on every label probability, simultaneous by Bonferroni.

    ``counts[..., i]`` is the number of the ``n`` noisy samples whose top-k' contains label i (so a row sums to
    ``n * k'``; each label's count is Binomial(n, p_i), whatever k'). Returns ``(lower, upper)``, float64 arrays
    of the shape of ``counts``, with ``lower_i = BetaPPF(alpha/c; n_i, n - n_i + 1)`` (0 where ``n_i = 0``) and
    ``upper_i = BetaPPF(1 - alpha/c; n_i + 1, n - n_i)`` (1 where ``n_i = n``).

    Guarantee: each one-sided bound fails with probability at most ``alpha / c``. So for any label set L fixed
    before sampling, with probability at least ``1 - alpha`` over the samples, ``lower_i <= p_i`` for every i
    in L and ``upper_j >= p_j`` for every j outside L, all at once: the c bounds a certificate reads. (All 2c
    one-sided bounds together hold with probability at least ``1 - 2 alpha`` only.)

    ``bounds_read``: for a certificate that reads B one-sided bounds (one B per row, or a scalar), each bound at
    level ``alpha / B`` instead of ``alpha / c``, so that the B together hold with probability ``1 - alpha``
    (:func:`jia_bounds_read`; ``None`` is c, MultiGuard's :func:`multiguard_bounds_read`).
    """
    array = np.asarray(counts)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"counts must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError("counts contains NaN")
    n = check_int(n, "n", 1)
    alpha = check_alpha(alpha)
    if (array != np.round(array)).any():
        raise ValueError("counts must be whole numbers")
    if (array < 0).any() or (array > n).any():
        raise ValueError(f"counts must lie in [0, n] = [0, {n}]")
    if bounds_read is None:
        level = alpha / array.shape[-1]
    else:
        read = _as_bounds_read(bounds_read, np.atleast_2d(array).shape)
        level = (alpha / read.astype(np.float64))[:, None]
        if array.ndim == 1:
            level = level[0]
    return clopper_pearson(array, n, level)


def clopper_pearson(counts: np.ndarray, n: object, level: object) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds at ``level`` each (broadcast), for counts in [0, n] (float arrays; ``n`` a
    scalar or broadcasting): ``(lower, upper)`` with ``P(lower > p) <= level`` and ``P(upper < p) <= level`` for a
    Binomial(n, p) count; 0 and 1 at the edges (no count: lower 0; all n: upper 1)."""
    positive = counts > 0
    below_n = counts < n
    # Beta parameters must stay valid where the closed-form edge applies; those entries are replaced below.
    lower = stats.beta.ppf(level, np.where(positive, counts, 1.0), n - counts + 1.0)
    upper = stats.beta.ppf(1.0 - level, counts + 1.0, np.where(below_n, n - counts, 1.0))
    return np.where(positive, lower, 0.0), np.where(below_n, upper, 1.0)
