"""The MultiGuard certificate at a fixed n: label probability bounds, Theorem 1, certified radii, the Jia et al.
baseline. The sequential procedure built on it (looks, anytime bounds, stopping rule) is
:mod:`multiguard.certificates.sequential`.

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

import numpy as np
from scipy import special

from multiguard.certificates.bounds import _as_radius, _check_bounds
from multiguard.common.validation import check_int, check_positive

__all__ = ["certified_intersection_size", "certified_radii", "intersection_size_at", "intersection_size_from_radii"]


# In units of sigma, a radius at which Eq. 8 still holds with finite inputs is impossible: Phi(x - T) with
# x <= 8.3 is below 1e-290 while the right-hand side is at least k'/k * Phi(-8.3 + T) = k'/k. Past T the
# condition can only hold where a bound sits at 0 or 1, and then it holds for every radius.
_T_MAX = 40.0


_ROWS_PER_CHUNK = 2048  # rows per term table in certified_radii (about 2048 x k x (c + k) doubles each)


_LOG_MARGIN = 1e-12  # Eq. 8's strict '>' is taken as 'log LHS > log RHS + 1e-12' (see _largest_radius)


_BISECTION_STEPS = 60  # 40 / 2**60 ~ 3e-17: the radius is exact to the last bits of a double


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
