"""The MultiGuard certificate at a fixed n: label probability bounds, Theorem 1, certified radii, the Jia et al.
baseline. The sequential procedure built on it (looks, anytime bounds, stopping rule) is :mod:`multiguard.sequential`.

Pure NumPy/SciPy; no torch. Everything is batched: ``counts``, ``lower``, ``upper`` and ``labels`` are
``(N, c)`` arrays (a single ``(c,)`` row works too and gives results without the batch axis). ``labels`` is a
boolean mask of the label set L(x), whose size d may differ from row to row.

The guarantee (Jia, Cao, Wang, Gong, NeurIPS 2022, Theorem 1): if ``lower[i] <= p_i`` for every i in L and
``upper[j] >= p_j`` for every j outside L, where ``p_i = Pr(i in top-k'(f(x + eps)))`` with
``eps ~ N(0, sigma^2 I)``, then for every ``delta`` with ``||delta||_2 <= R`` at least ``e(R)`` labels of L are
among the k labels of largest ``p_i(x + delta)``. :func:`label_probability_bounds` gives such bounds from
Monte Carlo counts, all of them together with probability at least ``1 - alpha``.

A whole certified-accuracy curve costs one call: :func:`certified_radii` solves, for every row and every
``e``, for the largest radius at which Eq. 8 holds (one vectorised bisection over the batch), and
:func:`intersection_size_from_radii` reads ``e(R)`` off those radii for any number of radii.

Numerics: ``Phi`` is evaluated in log space (``scipy.special.log_ndtr``), so probabilities 0 and 1 behave as
their limits (``Phi(Phi^-1(0) + t) = 0``, ``Phi(Phi^-1(1) - t) = 1``) and nothing underflows to a tie.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .deprecation import deprecated_names
from .validation import check_alpha, check_int, check_positive

__all__ = [
    "CertifiedMetrics",
    "as_label_mask",
    "certified_intersection_size",
    "certified_metrics",
    "certified_radii",
    "intersection_size_at",
    "intersection_size_from_radii",
    "jia_certified_intersection_size",
    "jia_bounds_read",
    "jia_certified_radii",
    "jia_intersection_size_from_radii",
    "label_probability_bounds",
    "multiguard_bounds_read",
    "trivial_intersection_size",
]

# In units of sigma, a radius at which Eq. 8 still holds with finite inputs is impossible: Phi(x - T) with
# x <= 8.3 is below 1e-290 while the right-hand side is at least k'/k * Phi(-8.3 + T) = k'/k. Past T the
# condition can only hold where a bound sits at 0 or 1, and then it holds for every radius.
_T_MAX = 40.0
_ROWS_PER_CHUNK = 2048  # rows per term table in certified_radii (about 2048 x k x (c + k) doubles each)
_LOG_MARGIN = 1e-12  # Eq. 8's strict '>' is taken as 'log LHS > log RHS + 1e-12' (see _largest_radius)
_BISECTION_STEPS = 60  # 40 / 2**60 ~ 3e-17: the radius is exact to the last bits of a double


# --------------------------------------------------------------------------------------------- validation


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
    array = np.asarray(radius, dtype=np.float64)
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


# ------------------------------------------------------------------------------------------------ bounds


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
    positive = array > 0
    below_n = array < n
    # Beta parameters must stay valid where the closed-form edge applies; those entries are replaced below.
    lower = stats.beta.ppf(level, np.where(positive, array, 1.0), n - array + 1.0)
    upper = stats.beta.ppf(1.0 - level, array + 1.0, np.where(below_n, n - array, 1.0))
    lower = np.where(positive, lower, 0.0)
    upper = np.where(below_n, upper, 1.0)
    return lower, upper


# ------------------------------------------------------------------------------------ the radius solver


def _largest_radius(lhs_x: np.ndarray, lhs_logc: np.ndarray, rhs_y: np.ndarray, rhs_logc: np.ndarray) -> np.ndarray:
    """Largest t >= 0 with max_u c_u Phi(x_u - t) > min_v c'_v Phi(y_v + t), in units of sigma.

    ``lhs_*`` have shape ``(M, U)``, ``rhs_*`` shape ``(M, V)``; an absent term has ``x = -inf`` on the left and
    ``logc = +inf`` on the right. The left side does not increase and the right side does not decrease in t,
    so the set where the condition holds is an interval [0, t*): returns t* (0 where it fails at t = 0, inf
    where it holds for every t). The comparison is made in log space.
    """

    def holds(t: np.ndarray, lx: np.ndarray, lc: np.ndarray, ry: np.ndarray, rc: np.ndarray) -> np.ndarray:
        t = t[:, None]
        left = (lc + special.log_ndtr(lx - t)).max(axis=1)
        right = (rc + special.log_ndtr(ry + t)).min(axis=1)
        # A margin of 1e-12 in log space: where both sides are equal in exact arithmetic (a tie), rounding in
        # Phi(Phi^-1(.)) must not make the condition hold. It shortens radii by about 1e-12 relative.
        return left > right + _LOG_MARGIN

    m = lhs_x.shape[0]
    result = np.zeros(m)
    if m == 0:
        return result
    at_zero = holds(np.zeros(m), lhs_x, lhs_logc, rhs_y, rhs_logc)
    at_max = holds(np.full(m, _T_MAX), lhs_x, lhs_logc, rhs_y, rhs_logc)
    result[at_zero & at_max] = np.inf
    active = np.flatnonzero(at_zero & ~at_max)
    terms = (lhs_x[active], lhs_logc[active], rhs_y[active], rhs_logc[active])
    lo = np.zeros(active.size)  # the condition holds at lo ...
    hi = np.full(active.size, _T_MAX)  # ... and fails at hi
    for _ in range(_BISECTION_STEPS):
        mid = 0.5 * (lo + hi)
        ok = holds(mid, *terms)
        lo = np.where(ok, mid, lo)
        hi = np.where(ok, hi, mid)
    # lo is a point where the condition holds, so the returned radius never overstates; it is 0 only if the
    # true radius is below 40 / 2**60.
    result[active] = lo
    return result


def _sorted_desc(values: np.ndarray, keep: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort each row's kept values in descending order; dropped entries go last as -inf. Returns (sorted, count)."""
    masked = np.where(keep, values, -np.inf)
    return -np.sort(-masked, axis=1), keep.sum(axis=1)


def _terms_of_theorem_1(
    lower: np.ndarray, upper: np.ndarray, labels: np.ndarray, k: int, k_prime: int, second_terms: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lay out the terms of both sides of Eq. 8 for every row and every e' = 1..k.

    Returns ``lhs_x, lhs_logc`` of shape ``(N, k, 1 + U)``, ``rhs_y, rhs_logc`` of shape ``(N, k, 1 + k)``
    (term 0 is the first term; term u / v the u-th / v-th second term), a boolean ``(N, k)`` mask of the e'
    to solve for, and a boolean ``(N, k)`` mask of the e' that hold at every radius (s > c - d).
    """
    num, c = lower.shape
    a, d = _sorted_desc(lower, labels)  # a_1 >= ... >= a_d, then -inf
    b, outside = _sorted_desc(upper, ~labels)  # b_1 >= ... >= b_{c-d}, then -inf
    a = np.where(np.isfinite(a), a, 0.0)
    b = np.where(np.isfinite(b), b, 0.0)
    cum_a = np.concatenate([np.zeros((num, 1)), np.cumsum(a, axis=1)], axis=1)  # cum_a[:, j] = a_1 + .. + a_j
    cum_b = np.concatenate([np.zeros((num, 1)), np.cumsum(b, axis=1)], axis=1)
    cap_b = k_prime - np.where(labels, lower, 0.0).sum(axis=1)  # p_Bv <= k' - sum_{i in L} lower_i

    e = np.arange(1, k + 1)  # e'
    s = k - e + 1
    wanted = e[None, :] <= np.minimum(d, k)[:, None]  # (N, k)
    always = wanted & (s[None, :] > outside[:, None])
    solve = wanted & ~always
    rows = np.arange(num)[:, None]

    # Left side: Phi(Phi^-1(a_e') - t) and (k'/u) Phi(Phi^-1(A_u / k') - t), u = 1..eta, eta = d - e' + 1.
    u_max = max(int(d.max()), 1)
    u = np.arange(1, u_max + 1)
    a_e = a[rows, np.minimum(e - 1, c - 1)[None, :]]  # (N, k)
    end = np.minimum(e[:, None] - 1 + u[None, :], c)  # index of a_{e'+u-1} in cum_a, (k, U)
    sums_a = cum_a[:, end] - cum_a[rows, (e - 1)[None, :]][:, :, None]  # A_u, (N, k, U)
    u_valid = (u[None, None, :] <= (d[:, None] - e[None, :] + 1)[:, :, None]) & second_terms
    lhs_x = np.concatenate(
        [
            special.ndtri(a_e)[:, :, None],
            np.where(u_valid, special.ndtri(np.clip(sums_a / k_prime, 0.0, 1.0)), -np.inf),
        ],
        axis=2,
    )
    lhs_logc = np.broadcast_to(np.concatenate([[0.0], np.log(k_prime / u)]), lhs_x.shape)

    # Right side: Phi(Phi^-1(b_s) + t) and (k'/v) Phi(Phi^-1(B_v / k') + t), v = 1..s,
    # B_v = min(b_{s-v+1} + .. + b_s, k' - sum_{i in L} lower_i).
    v = np.arange(1, k + 1)
    s_idx = np.minimum(s, c)  # b_s lives at column s - 1; s <= c - d wherever it is used
    b_s = b[:, s_idx - 1]  # (N, k)
    start = np.clip(s_idx[:, None] - v[None, :], 0, None)  # (k, V)
    sums_b = cum_b[:, s_idx][:, :, None] - cum_b[:, start]  # (N, k, V)
    sums_b = np.clip(np.minimum(sums_b, cap_b[:, None, None]) / k_prime, 0.0, 1.0)
    v_valid = (v[None, :] <= s[:, None])[None, :, :] & second_terms
    rhs_y = np.concatenate(
        [special.ndtri(b_s)[:, :, None], np.where(v_valid, special.ndtri(sums_b), np.inf)], axis=2
    )
    rhs_logc = np.concatenate(
        [np.zeros((1, k, 1)), np.where(v_valid, np.log(k_prime / v)[None, None, :], np.inf)], axis=2
    )
    rhs_logc = np.broadcast_to(rhs_logc, rhs_y.shape)
    return lhs_x, lhs_logc, rhs_y, rhs_logc, solve, always


# -------------------------------------------------------------------------------------------- MultiGuard


def certified_radii(
    lower: object,
    upper: object,
    labels: object,
    *,
    k: int,
    k_prime: int,
    sigma: float,
    second_terms: bool = True,
) -> np.ndarray:
    """Certified radius of every intersection size e = 1..k (Theorem 1, Eq. 8, with the cap of section 3.3).

    Args:
        lower: ``(N, c)`` lower bounds on the label probabilities (only labels in L are read).
        upper: ``(N, c)`` upper bounds on the label probabilities (only labels outside L are read).
        labels: ``(N, c)`` boolean mask of the label set L(x).
        k: number of labels the smoothed classifier predicts.
        k_prime: number of labels the base classifier predicts (k').
        sigma: standard deviation of the Gaussian noise.
        second_terms: keep the u- and v-terms of both sides of Eq. 8 (``False`` is the paper's ablation).

    Returns:
        ``(N, k)`` float array: entry ``[i, e-1]`` is the supremum of the radii R >= 0 at which Eq. 8 holds
        for e' = e. If the bounds hold, at least e labels of L stay in the smoothed top-k under every
        perturbation of l2 norm below it. 0 where Eq. 8 fails at R = 0 or e > min(d, k); ``inf`` where it
        holds at every R (fewer than k - e + 1 labels lie outside L). A single ``(c,)`` row gives ``(k,)``.
    """
    lower_arr, upper_arr, mask, single = _check_bounds(lower, upper, labels)
    c = lower_arr.shape[1]
    k = check_int(k, "k", 1, c)
    k_prime = check_int(k_prime, "k_prime", 1, c)
    sigma = check_positive(sigma, "sigma")
    t = np.zeros((lower_arr.shape[0], k))
    for start in range(0, lower_arr.shape[0], _ROWS_PER_CHUNK):  # bounds the memory of the term tables
        rows = slice(start, start + _ROWS_PER_CHUNK)
        lhs_x, lhs_logc, rhs_y, rhs_logc, solve, always = _terms_of_theorem_1(
            lower_arr[rows], upper_arr[rows], mask[rows], k, k_prime, bool(second_terms)
        )
        chunk = t[rows]
        chunk[always] = np.inf
        chunk[solve] = _largest_radius(lhs_x[solve], lhs_logc[solve], rhs_y[solve], rhs_logc[solve])
    radii = sigma * t
    return radii[0] if single else radii


def intersection_size_from_radii(radii: object, radius: object) -> np.ndarray:
    """Certified intersection size ``e(R) = max{e : radii[e-1] > R}`` (0 if none) from :func:`certified_radii`.

    ``radii`` is ``(N, k)`` (or ``(k,)``); ``radius`` a scalar or a 1-D array of R values. Returns int64
    ``(N,)`` for a scalar radius and ``(N, len(radius))`` for an array (without the N axis for a single row).
    """
    def largest_e(holds: np.ndarray) -> np.ndarray:
        e = np.arange(1, holds.shape[1] + 1)
        return np.where(holds, e[None, :, None], 0).max(axis=1)

    return _sizes_from_radii(radii, radius, "(N, k) or (k,)", largest_e)


def _sizes_from_radii(
    radii: object, radius: object, shapes: str, size: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Apply ``size`` to the ``(N, m, R)`` table of ``radii > R`` and return int64 sizes shaped like the inputs:
    ``(N,)`` for a scalar radius, ``(N, R)`` for an array, without the N axis for a single row of radii."""
    radii_arr = np.asarray(radii, dtype=np.float64)
    if radii_arr.ndim not in (1, 2) or np.isnan(radii_arr).any():
        raise ValueError(f"radii must be an {shapes} array without NaN, got shape {radii_arr.shape}")
    r, scalar = _as_radius(radius)
    holds = np.atleast_2d(radii_arr)[:, :, None] > r[None, None, :]
    sizes = size(holds).astype(np.int64)
    if scalar:
        sizes = sizes[:, 0]
    return sizes[0] if radii_arr.ndim == 1 else sizes


def certified_intersection_size(
    lower: object,
    upper: object,
    labels: object,
    *,
    k: int,
    k_prime: int,
    sigma: float,
    radius: object,
    second_terms: bool = True,
) -> np.ndarray:
    """Certified intersection size e(R): at least e labels of L are in the smoothed top-k within radius R.

    Same arguments as :func:`certified_radii` plus ``radius`` (a scalar or a 1-D array). Returns int64
    ``(N,)`` for a scalar radius, ``(N, len(radius))`` for an array. Equals the largest e' for which Eq. 8
    holds at R, or 0.
    """
    radii = certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma, second_terms=second_terms)
    return intersection_size_from_radii(radii, radius)


# -------------------------------------------------------------------------------------- Jia et al. (2020)


def jia_certified_radii(
    lower: object, upper: object, labels: object, *, k: int, sigma: float, k_prime: int = 1
) -> np.ndarray:
    """Jia et al. (ICLR 2020) top-k certified radius of each label of L separately (the paper's baseline).

    For label l in L, with p = lower_l and o_1 >= ... >= o_k the k largest upper bounds among all other labels
    (each capped at 1 - p), l stays in the smoothed top-k within radius max_t r_t, where r_t is the largest R
    with ``Phi(Phi^-1(p) - R/sigma) > Phi(Phi^-1(S_t) + R/sigma) / t`` and
    ``S_t = min(o_{k-t+1} + ... + o_k, 1 - p)``. The certificate assumes a base classifier that predicts one
    label (k' = 1): any other ``k_prime`` is rejected.

    Returns ``(N, c)`` radii (``(c,)`` for one row): 0 for labels outside L and where the condition fails at
    R = 0, ``inf`` when fewer than k other labels exist (the label is always in the top-k).
    """
    lower_arr, upper_arr, mask, single = _check_bounds(lower, upper, labels)
    num, c = lower_arr.shape
    k = check_int(k, "k", 1, c)
    sigma = check_positive(sigma, "sigma")
    if k_prime != 1:
        raise ValueError(f"k_prime must be 1 for the Jia et al. baseline (a top-1 base classifier), got {k_prime}")
    radii = np.zeros((num, c))
    if k >= c:  # fewer than k other labels: every label is always among the top k
        radii[mask] = np.inf
        return radii[0] if single else radii
    rows, cols = np.nonzero(mask)
    p = lower_arr[rows, cols]
    # The k largest upper bounds of the other labels: the k + 1 largest of the row, minus the label itself.
    order = np.argsort(-upper_arr, axis=1, kind="stable")[:, : k + 1]  # (N, k+1)
    top = np.take_along_axis(upper_arr, order, axis=1)[rows]  # (M, k+1)
    is_self = order[rows] == cols[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)  # column to leave out
    keep = np.arange(k + 1)[None, :] != drop[:, None]
    others = top[keep].reshape(-1, k)  # o_1 >= ... >= o_k
    others = np.minimum(others, (1.0 - p)[:, None])
    tails = np.cumsum(others[:, ::-1], axis=1)  # tails[:, t-1] = o_{k-t+1} + ... + o_k
    s_t = np.minimum(tails, (1.0 - p)[:, None])
    t = np.arange(1, k + 1)
    lhs_x = special.ndtri(p)[:, None]
    t_units = _largest_radius(
        lhs_x, np.zeros_like(lhs_x), special.ndtri(np.clip(s_t, 0.0, 1.0)), np.broadcast_to(-np.log(t), s_t.shape)
    )
    radii[rows, cols] = sigma * t_units
    return radii[0] if single else radii


def jia_intersection_size_from_radii(radii: object, radius: object) -> np.ndarray:
    """Number of labels whose Jia et al. radius exceeds R, from :func:`jia_certified_radii`'s ``(N, c)`` output.

    Returns int64 ``(N,)`` for a scalar radius and ``(N, len(radius))`` for a 1-D array.
    """
    return _sizes_from_radii(radii, radius, "(N, c) or (c,)", lambda holds: holds.sum(axis=1))


def jia_certified_intersection_size(
    lower: object, upper: object, labels: object, *, k: int, sigma: float, radius: object, k_prime: int = 1
) -> np.ndarray:
    """e_Jia(R): the number of labels of L whose Jia et al. radius exceeds R. Shapes as
    :func:`certified_intersection_size`."""
    radii = jia_certified_radii(lower, upper, labels, k=k, sigma=sigma, k_prime=k_prime)
    return jia_intersection_size_from_radii(radii, radius)


# ------------------------------------------------------------------------------------------------ metrics


@dataclass(frozen=True)
class CertifiedMetrics:
    """Certified top-k precision, recall and F1, averaged over inputs, one value per radius.

    ``precision``, ``recall`` and ``f1`` are float arrays of shape ``(R,)`` (or floats for a ``(N,)`` sizes
    array). Inputs with an empty label set count as recall 0 and F1 0; there are ``num_empty`` of them among
    ``num_inputs``.
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_inputs: int
    num_empty: int


def trivial_intersection_size(labels: object, k: int) -> np.ndarray:
    """What any top-k keeps of L by counting alone: int64 ``(N,)`` (or a scalar for one ``(c,)`` mask).

    k labels out of c leave out c - k of them, so at least ``|L| - (c - k)`` labels of L are in *every*
    top-k, whatever the classifier and the perturbation. A certified size ``e <= max(0, |L| - (c - k))``
    (which Theorem 1 certifies at every radius) says nothing about the model: keep k well below c.
    """
    array = np.asarray(labels)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"labels must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    mask = _as_label_mask(array, np.atleast_2d(array).shape)
    num_classes = mask.shape[1]
    k = check_int(k, "k", 1, num_classes)
    sizes = np.maximum(0, mask.sum(axis=1) - (num_classes - k)).astype(np.int64)
    return sizes[0] if array.ndim == 1 else sizes


def certified_metrics(sizes: object, labels: object, k: int) -> CertifiedMetrics:
    """Mean certified top-k precision e/k, recall e/|L| and F1 2e/(|L| + k) over inputs (section 4.1).

    ``sizes`` is ``(N,)`` or ``(N, R)`` certified intersection sizes (e.g. from
    :func:`certified_intersection_size`), ``labels`` the ``(N, c)`` masks of L. The mean is over inputs, as
    the paper defines it.
    """
    sizes_arr = np.asarray(sizes)
    if sizes_arr.dtype.kind not in "biu":
        if sizes_arr.dtype.kind != "f" or (sizes_arr != np.round(sizes_arr)).any():
            raise ValueError("sizes must be whole numbers")
    sizes_arr = sizes_arr.astype(np.float64)
    if sizes_arr.ndim not in (1, 2):
        raise ValueError(f"sizes must have shape (N,) or (N, R), got {sizes_arr.shape}")
    mask = np.asarray(labels)
    if mask.ndim != 2 or mask.shape[0] != sizes_arr.shape[0]:
        raise ValueError(f"labels must have shape (N, c) with N = {sizes_arr.shape[0]}, got {mask.shape}")
    mask = _as_label_mask(mask, mask.shape)
    k = check_int(k, "k", 1, mask.shape[1])
    if sizes_arr.shape[0] == 0:
        raise ValueError("sizes must hold at least one input")
    d = mask.sum(axis=1).astype(np.float64)
    if (sizes_arr < 0).any() or (sizes_arr > np.minimum(d, k).reshape((-1,) + (1,) * (sizes_arr.ndim - 1))).any():
        raise ValueError("sizes must lie in [0, min(|L|, k)] for each input")
    d_b = d.reshape((-1,) + (1,) * (sizes_arr.ndim - 1))
    precision = sizes_arr / k
    recall = np.divide(sizes_arr, d_b, out=np.zeros_like(sizes_arr), where=d_b > 0)
    f1 = 2.0 * sizes_arr / (d_b + k)
    return CertifiedMetrics(
        precision=precision.mean(axis=0),
        recall=recall.mean(axis=0),
        f1=f1.mean(axis=0),
        num_inputs=int(sizes_arr.shape[0]),
        num_empty=int((d == 0).sum()),
    )


# ------------------------------------------------------------------------------- one radius, no search


def intersection_size_at(
    lower: np.ndarray, upper: np.ndarray, labels: np.ndarray, *, k: int, k_prime: int, sigma: float, radius: float,
    second_terms: bool = True,
) -> np.ndarray:
    """e(R) at one radius ``R`` for ``(N, c)`` bounds and a boolean ``(N, c)`` label mask: Eq. 8 evaluated at
    ``t = R / sigma`` for every e' (no radius search), int64 ``(N,)``.

    The condition holds exactly on ``[0, r_e')``, so this is ``max{e' : r_e' > R}``, the value
    :func:`certified_intersection_size` gives up to its bisection (which places r_e' within 1e-16 of the
    supremum, from below).
    """
    c = lower.shape[1]
    k = check_int(k, "k", 1, c)
    k_prime = check_int(k_prime, "k_prime", 1, c)
    t = radius / check_positive(sigma, "sigma")
    holds = np.zeros((lower.shape[0], k), dtype=bool)
    for start in range(0, lower.shape[0], _ROWS_PER_CHUNK):
        rows = slice(start, start + _ROWS_PER_CHUNK)
        lhs_x, lhs_logc, rhs_y, rhs_logc, solve, always = _terms_of_theorem_1(
            lower[rows], upper[rows], labels[rows], k, k_prime, bool(second_terms)
        )
        left = (lhs_logc[solve] + special.log_ndtr(lhs_x[solve] - t)).max(axis=1)
        right = (rhs_logc[solve] + special.log_ndtr(rhs_y[solve] + t)).min(axis=1)
        chunk = holds[rows]
        chunk[always] = True
        chunk[solve] = left > right + _LOG_MARGIN
    e = np.arange(1, k + 1)
    return np.where(holds, e[None, :], 0).max(axis=1).astype(np.int64)


def _sequential(name: str) -> object:
    # Named by string, as registry targets are: the sequential procedure builds on this module, not the reverse.
    return getattr(importlib.import_module("multiguard.sequential"), name)


# The sequential procedure moved to multiguard.sequential.
__getattr__ = deprecated_names(__name__, {
    name: (f"multiguard.sequential.{name}", lambda name=name: _sequential(name))
    for name in ("FUTILITY_RULES", "SequentialCertificate", "StoppingDecision", "anytime_label_probability_bounds",
                 "sample_size_schedule", "sequential_certification", "sequential_stopping_rule")
})
