"""The MultiGuard certificate: label probability bounds, Theorem 1, certified radii, the Jia et al. baseline.

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

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special, stats

from .validation import check_alpha, check_choice, check_int, check_positive

__all__ = [
    "FUTILITY_RULES",
    "CertifiedMetrics",
    "SequentialCertificate",
    "StoppingDecision",
    "anytime_label_probability_bounds",
    "certified_intersection_size",
    "certified_metrics",
    "certified_radii",
    "intersection_size_from_radii",
    "jia_certified_intersection_size",
    "jia_certified_radii",
    "jia_intersection_size_from_radii",
    "label_probability_bounds",
    "sample_size_schedule",
    "sequential_certification",
    "sequential_stopping_rule",
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


def _as_label_mask(labels: object, shape: tuple[int, int]) -> np.ndarray:
    array = np.asarray(labels)
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biuf":
            raise ValueError(f"labels must be a boolean mask, got dtype {array.dtype}")
        if np.isnan(array.astype(np.float64)).any():
            raise ValueError("labels contains NaN")
        if not np.isin(array, (0, 1)).all():
            raise ValueError("labels must be a boolean mask (only 0/1 or True/False values)")
        array = array.astype(bool)
    array = np.atleast_2d(array)
    if array.shape != shape:
        raise ValueError(f"labels has shape {array.shape}, expected {shape} to match the bounds")
    return array


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


def label_probability_bounds(counts: object, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds on every label probability, simultaneous by Bonferroni.

    ``counts[..., i]`` is the number of the ``n`` noisy samples whose top-k' contains label i (so a row sums to
    ``n * k'``; each label's count is Binomial(n, p_i), whatever k'). Returns ``(lower, upper)``, float64 arrays
    of the shape of ``counts``, with ``lower_i = BetaPPF(alpha/c; n_i, n - n_i + 1)`` (0 where ``n_i = 0``) and
    ``upper_i = BetaPPF(1 - alpha/c; n_i + 1, n - n_i)`` (1 where ``n_i = n``).

    Guarantee: each one-sided bound fails with probability at most ``alpha / c``. So for any label set L fixed
    before sampling, with probability at least ``1 - alpha`` over the samples, ``lower_i <= p_i`` for every i
    in L and ``upper_j >= p_j`` for every j outside L, all at once: the c bounds a certificate reads. (All 2c
    one-sided bounds together hold with probability at least ``1 - 2 alpha`` only.)
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
    level = alpha / array.shape[-1]
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


# ------------------------------------------------------------------------------ sequential certification


def sample_size_schedule(n: int, first: int = 100) -> np.ndarray:
    """The nested sample sizes at which counts are stored and sequential certification looks: a 1-2-5 series.

    Returns int64 ``(J,)``: ``first, 2 first, 5 first, 10 first, 20 first, ...`` while below ``n``, then ``n``
    itself (so ``sample_size_schedule(1000) = [100, 200, 500, 1000]`` and ``sample_size_schedule(3000) =
    [100, 200, 500, 1000, 2000, 3000]``; ``[n]`` when ``n <= first``). The default ``first`` is the noise
    block (:data:`multiguard.seeds.NOISE_BLOCK`), so every look but the last ends on a block boundary.
    """
    n = check_int(n, "n", 1)
    first = check_int(first, "first", 1)
    sizes: list[int] = []
    scale = first
    while True:
        for step in (1, 2, 5):
            if step * scale >= n:
                return np.array([*sizes, n], dtype=np.int64)
            sizes.append(step * scale)
        scale *= 10


def _as_looks(looks: object) -> np.ndarray:
    array = np.asarray(looks)
    if array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iu" or (array < 1).any():
        raise ValueError(f"looks must be a non-empty 1-D array of positive sample sizes, got {looks!r}")
    if (np.diff(array) <= 0).any():
        raise ValueError(f"looks must be strictly increasing, got {array.tolist()}")
    return array.astype(np.int64)


def _as_row_sizes(n: object, num_rows: int, looks: np.ndarray) -> np.ndarray:
    """``n`` (a scalar or one per row) as int64 ``(N,)``, each a look of the schedule."""
    array = np.asarray(n)
    if array.dtype.kind not in "iu" or array.ndim > 1 or (array.ndim == 1 and array.shape[0] != num_rows):
        raise ValueError(f"n must be an integer or ({num_rows},) integers, got {n!r}")
    array = np.broadcast_to(array.astype(np.int64), (num_rows,))
    if not np.isin(array, looks).all():
        raise ValueError(f"n must be one of the looks {looks.tolist()}, got {np.unique(array).tolist()}")
    return array


def anytime_label_probability_bounds(
    counts: object, n: object, alpha: float, looks: object
) -> tuple[np.ndarray, np.ndarray]:
    """Label probability bounds valid at every look of a fixed schedule, so under any data-dependent stopping.

    ``counts[..., i]`` counts the first ``n`` samples whose top-k' contains label i, where ``n`` (a scalar, or
    one per row of an ``(N, c)`` array) is one of the sample sizes of ``looks`` (e.g.
    :func:`sample_size_schedule`): the J sizes at which a sequential procedure may look and stop. Returns
    ``(lower, upper)`` float64 arrays shaped like ``counts``: the one-sided Clopper-Pearson bounds of
    :func:`label_probability_bounds` at level ``alpha / (c J)`` each instead of ``alpha / c``.

    Guarantee: fix a label set L before sampling. With probability at least ``1 - alpha`` over the samples, at
    every look of the schedule at once, ``lower_i <= p_i`` for every i in L and ``upper_j >= p_j`` for every j
    outside L. Hence the bounds read at a stopping time tau (any rule that decides from the samples seen so
    far, or anything else, to stop at a look) hold with probability at least ``1 - alpha``, and so does every
    certificate computed from them, at every radius.

    Proof: at a fixed look n_j, each of the c bounds a certificate reads is a one-sided Clopper-Pearson bound
    on a Binomial(n_j, p_i) count at level ``alpha / (c J)``, so it fails with probability at most
    ``alpha / (c J)``. The event that some bound read at tau fails lies in the union, over the J looks and
    the c labels, of the events that that bound fails at that look; by the union bound its probability is at
    most ``J c alpha / (c J) = alpha``.

    Why a union over a fixed schedule and not a confidence sequence valid at every n: at the sizes that
    matter here (J of about 4-8 looks, ``alpha / c`` of 1e-4), the beta-binomial mixture confidence sequence
    (Robbins' method of mixtures with Ville's inequality, Beta(1/2, 1/2) or uniform mixing) gives a lower bound
    below this one for every count (for example with all of 1000 samples in the top-k', 0.9869 against
    0.9889; with 900 of 1000, 0.8451 against 0.8550), because it pays for looking after every sample.
    """
    lows = _as_looks(looks)
    if np.asarray(counts).dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {np.asarray(counts).dtype}")
    array2d, single = _as_float_matrix(counts, "counts")
    sizes = _as_row_sizes(n, array2d.shape[0], lows)
    alpha = check_alpha(alpha)
    # Each distinct count is evaluated once: a look of N inputs holds at most n + 1 distinct counts, and the
    # Beta quantile is the whole cost.
    lower = np.zeros(array2d.shape)
    upper = np.ones(array2d.shape)
    level = alpha / (array2d.shape[1] * lows.size)
    for size in np.unique(sizes):
        rows = sizes == size
        values, inverse = np.unique(array2d[rows], return_inverse=True)
        if (values != np.round(values)).any():
            raise ValueError("counts must be whole numbers")
        if values[0] < 0 or values[-1] > size:
            raise ValueError(f"counts must lie in [0, n] = [0, {size}] for the rows at look n = {size}")
        lower_values, upper_values = _clopper_pearson(values.astype(np.float64), int(size), level)
        lower[rows] = lower_values[inverse].reshape(-1, array2d.shape[1])
        upper[rows] = upper_values[inverse].reshape(-1, array2d.shape[1])
    return (lower[0], upper[0]) if single else (lower, upper)


def _clopper_pearson(counts: np.ndarray, n: int, level: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds at ``level`` each, for float counts in [0, n] (the formulas of
    :func:`label_probability_bounds`, with the level given instead of ``alpha / c``)."""
    positive = counts > 0
    below_n = counts < n
    lower = stats.beta.ppf(level, np.where(positive, counts, 1.0), n - counts + 1.0)
    upper = stats.beta.ppf(1.0 - level, counts + 1.0, np.where(below_n, n - counts, 1.0))
    return np.where(positive, lower, 0.0), np.where(below_n, upper, 1.0)


def _intersection_size_at(
    lower: np.ndarray, upper: np.ndarray, labels: np.ndarray, *, k: int, k_prime: int, sigma: float, radius: float,
    second_terms: bool,
) -> np.ndarray:
    """e(R) at one radius: Eq. 8 evaluated at ``t = R / sigma`` for every e' (no radius search), int64 ``(N,)``.

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


FUTILITY_RULES = ("remaining", "plausible", "projected")
"""When :func:`sequential_stopping_rule` gives up on an input: no outcome of the remaining samples could raise
its certified size (``remaining``), none the samples so far still make plausible could (``plausible``), or the
remaining samples at the frequencies seen so far would not (``projected``)."""


@dataclass(frozen=True)
class StoppingDecision:
    """The sequential stopping rule's verdict for N inputs at their current look.

    ``stop`` bool ``(N,)``; ``intersection_size`` int64 ``(N,)``: e(R) certified now from the anytime bounds;
    ``best_possible`` int64 ``(N,)``: an upper bound on the e(R) any later look could certify; ``settled``
    bool ``(N,)``: e(R) reached min(|L|, k).
    """

    stop: np.ndarray
    intersection_size: np.ndarray
    best_possible: np.ndarray
    settled: np.ndarray


def sequential_stopping_rule(
    counts: object,
    n: object,
    labels: object,
    *,
    looks: object,
    alpha: float,
    k: int,
    k_prime: int,
    sigma: float,
    radius: float,
    second_terms: bool = True,
    futility: str = "remaining",
) -> StoppingDecision:
    """Should sampling stop for each input, given its counts at look ``n`` and a target radius R?

    An input stops when (a) its certified intersection size e(R), from
    :func:`anytime_label_probability_bounds` at this look, reached ``min(|L|, k)`` (nothing left to gain),
    (b) the most favourable outcome of the samples still allowed (up to ``looks[-1]``) cannot raise it, or
    (c) this is the last look. ``futility`` says which outcomes (b) considers:

    - ``"remaining"``: any outcome of the remaining samples. Every label of L is credited with all the m
      remaining samples and every label outside L with none, at the last look: Clopper-Pearson lower bounds
      grow with ``(n_i + m, n + m)`` and upper bounds shrink with n at a fixed count, and e(R) grows with every
      lower bound of L and falls with every upper bound outside L (Theorem 1), so no later look, whatever its
      counts, certifies more than that ``best_possible``. An input that any continuation could improve goes
      on, so e(R) at the stop is at least what these bounds give at the last look on the same samples.
    - ``"plausible"``: the outcomes the samples so far still allow: the remaining samples arrive at the most
      favourable label probabilities inside the current anytime bounds (the upper bound for each label of L,
      the lower bound for each outside label), ``n_i + ceil(m upper_i)`` and ``n_j + floor(m lower_j)`` at the
      last look. It stops inputs that only a continuation the data make implausible could improve, so it
      uses fewer samples and may certify a little less.
    - ``"projected"``: the expected outcome: the remaining samples arrive at the frequencies seen so far,
      ``n_i + ceil(m n_i / n)`` for labels of L and ``n_j + floor(m n_j / n)`` outside. It stops every input
      whose certified size would not grow if the label frequencies stayed as they are: the fewest samples,
      and inputs whose frequencies would have drifted favourably are given up.

    The rule only decides when to stop: the bounds read at the stop are anytime-valid whatever the rule, so
    the guarantee of :func:`anytime_label_probability_bounds` holds for the certificate at the stop, at every
    radius, not only at R.

    Args:
        counts: ``(N, c)`` counts of each label in the top-k' of the first ``n`` samples.
        n: the current look (a scalar or ``(N,)``), one of ``looks``.
        labels: ``(N, c)`` boolean mask of L, fixed before sampling.
        looks: the schedule of sample sizes (strictly increasing); ``looks[-1]`` is the most samples allowed.
        alpha, k, k_prime, sigma, second_terms: as in :func:`certified_radii`; radius: the target R >= 0.
        futility: ``"remaining"``, ``"plausible"`` or ``"projected"``, as above.
    """
    futility = check_choice(futility, "futility", FUTILITY_RULES)
    schedule = _as_looks(looks)
    counts_arr, _ = _as_float_matrix(counts, "counts")
    mask = _as_label_mask(labels, counts_arr.shape)
    sizes = _as_row_sizes(n, counts_arr.shape[0], schedule)
    radius_arr, scalar = _as_radius(radius)
    if not scalar:
        raise ValueError(f"radius must be a single number >= 0, got {radius!r}")
    options = dict(k=k, k_prime=k_prime, sigma=sigma, radius=float(radius_arr[0]), second_terms=second_terms)
    lower, upper = anytime_label_probability_bounds(counts_arr, sizes, alpha, schedule)
    now = _intersection_size_at(lower, upper, mask, **options)
    target = np.minimum(mask.sum(axis=1), k)
    settled = now >= target
    last = int(schedule[-1])
    best = now.copy()
    open_rows = ~settled & (sizes < last)
    if open_rows.any():
        remaining = (last - sizes[open_rows])[:, None]
        if futility == "remaining":
            gain_in, gain_out = remaining, 0
        elif futility == "plausible":
            gain_in = np.ceil(remaining * upper[open_rows])
            gain_out = np.floor(remaining * lower[open_rows])
        else:
            frequency = counts_arr[open_rows] / sizes[open_rows, None]
            gain_in, gain_out = np.ceil(remaining * frequency), np.floor(remaining * frequency)
        favourable = counts_arr[open_rows] + np.where(mask[open_rows], gain_in, gain_out)
        best_lower, best_upper = anytime_label_probability_bounds(favourable, last, alpha, schedule)
        best[open_rows] = _intersection_size_at(best_lower, best_upper, mask[open_rows], **options)
    stop = settled | (best <= now) | (sizes >= last)
    return StoppingDecision(stop=stop, intersection_size=now, best_possible=best, settled=settled)


@dataclass(frozen=True)
class SequentialCertificate:
    """What sequential certification found for N inputs (from :func:`sequential_certification`).

    ``samples`` int64 ``(N,)``: the samples each input used (the look it stopped at); ``counts`` int64
    ``(N, c)``: its counts then; ``lower``, ``upper`` float ``(N, c)``: its anytime-valid bounds then;
    ``radii`` float ``(N, k)``: the certified radius of every e = 1..k from those bounds, valid at every
    radius with probability at least ``1 - alpha`` per input; ``looks`` the schedule.
    """

    samples: np.ndarray
    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    radii: np.ndarray
    looks: np.ndarray


def sequential_certification(
    nested_counts: object,
    labels: object,
    *,
    looks: object,
    alpha: float,
    k: int,
    k_prime: int,
    sigma: float,
    radius: float,
    second_terms: bool = True,
    futility: str = "remaining",
) -> SequentialCertificate:
    """Run sequential certification on counts already drawn at every look: the procedure, replayed exactly.

    ``nested_counts`` is ``(N, J, c)``: ``[i, j]`` counts the first ``looks[j]`` samples of input i (cumulative,
    as :meth:`multiguard.engine.SamplingEngine.count_nested` and the nested counts of a run give them). Each
    input looks at ``looks[0], looks[1], ...`` and stops at the first look where
    :func:`sequential_stopping_rule` (with ``futility``) says so; the counts after that look are never read.
    Sampling those counts look by look (as ``MultiGuard.certify(..., stop_at_radius=R)`` does) with the same
    seed gives the same result with fewer forward passes.

    Guarantee: for each input, with probability at least ``1 - alpha``, at least e labels of L stay in the
    smoothed top-k at every ``x + delta`` with ``||delta||_2 < radii[e-1]``.
    """
    schedule = _as_looks(looks)
    nested = np.asarray(nested_counts)
    if nested.ndim != 3 or nested.shape[1] != schedule.size:
        raise ValueError(
            f"nested_counts must have shape (N, J, c) with J = {schedule.size} looks, got shape {nested.shape}"
        )
    if nested.dtype.kind not in "iu":
        raise ValueError(f"nested_counts must hold integers, got dtype {nested.dtype}")
    num, _, c = nested.shape
    mask = _as_label_mask(labels, (num, c))
    stop_at = np.full(num, schedule.size - 1)
    active = np.arange(num)
    for j, size in enumerate(schedule):
        if active.size == 0:
            break
        decision = sequential_stopping_rule(
            nested[active, j], int(size), mask[active], looks=schedule, alpha=alpha, k=k, k_prime=k_prime,
            sigma=sigma, radius=radius, second_terms=second_terms, futility=futility,
        )
        stop_at[active[decision.stop]] = j
        active = active[~decision.stop]
    counts = nested[np.arange(num), stop_at].astype(np.int64)
    samples = schedule[stop_at]
    lower, upper = anytime_label_probability_bounds(counts, samples, alpha, schedule)
    radii = certified_radii(lower, upper, mask, k=k, k_prime=k_prime, sigma=sigma, second_terms=second_terms)
    return SequentialCertificate(samples=samples, counts=counts, lower=lower, upper=upper, radii=radii,
                                 looks=schedule)
