"""Anytime-valid label probability bounds tuned to the sample sizes a procedure reaches: a discrete mixture of
simple likelihood ratios per candidate value, and the confidence sequence it gives. NumPy/SciPy only, no torch.

For a label whose indicator "label i in the base classifier's top-k' of sample s" is Bernoulli(p), s = 1, 2, ...,
a candidate value m and an alternative q, the likelihood ratio of Bernoulli(q) against Bernoulli(m) after n
samples of which S had the label, ``(q / m)^S ((1 - q) / (1 - m))^(n - S)``, is a test martingale under p = m for
any q fixed before sampling (the wealth of a bettor who stakes a constant fraction on the coin). This module
mixes J of them for each m, with fixed weights ``w_j`` (summing to at most 1):

    W_n(m) = sum_j w_j (q_j(m) / m)^S ((1 - q_j(m)) / (1 - m))^(n - S)

where the alternatives ``q_j(m) > m`` solve ``KL(q_j || m) = T_j / n_j`` for a geometric grid of *tuning
sizes* ``n_j = N, N/2, N/4, ...`` down to :data:`SMALLEST_TUNING_SIZE` (N the most samples the procedure
allows, its last look) and ``T_j = log(1 / a) + log(1 / w_j)``: the component j alone crosses ``1 / a`` after
about n_j samples at the smallest distance a test at that size can resolve (the Chernoff tuning), and the
mixture pays ``log(1 / w_j)`` for not knowing in advance which size an input stops at. The weights put
:data:`HEAD_WEIGHT` on N and spread the rest equally. Each q_j depends only on m, a and the grid (never on the
samples), so W_n(m) is a test martingale under p = m (a mixture with fixed weights of test martingales), and
Ville's inequality gives ``P(sup_n W_n(p) >= 1 / a) <= a``.

The lower end of the confidence sequence at n is ``L_n = inf {m in [0, S / n] : W_n(m) < 1 / a}``: if
``L_n > p`` then p < S / n was refuted (``W_n(p) >= 1 / a``), so the lower end passes p at some n with
probability at most a, whatever the stopping rule. The upper end is the same construction on ``1 - p``
(``U_n(S) = 1 - L_n(n - S)``, exact by symmetry).

Monotonicity (why a bisection finds L_n): on ``0 < m < s = S / n`` every component's log likelihood ratio
``f(m) = S log(q / m) + (n - S) log((1 - q) / (1 - m))``, with ``q = q_j(m)``, is strictly decreasing. With
``c = T_j / n_j`` fixed, implicit differentiation of ``KL(q || m) = c`` gives ``q'(m) = (q - m) / (m (1 - m)
(logit q - logit m)) = xi (1 - xi) / (m (1 - m))`` for some xi in (m, q) (the mean value theorem on logit), so

    m (1 - m) f'(m) = -(S - n m) + (S - n q) xi (1 - xi) / (q (1 - q)).

Write r = xi (1 - xi) / (q (1 - q)) > 0. Where q >= s the second term is <= 0 and the first < 0. Where q < s,
the right side divided by n is ``(r - 1) s - r q + m``, linear in s on (q, 1]: at s = q it is ``m - q < 0``,
and at s = 1 it is ``r (1 - q) - (1 - m) = xi (1 - xi) / q - (1 - m) < 0`` (xi < q and 1 - xi < 1 - m), so it
is negative on the whole segment. Where ``KL(1 || m) = -log m <= c`` the alternative is q = 1 (the root would
lie beyond 1): the component is ``m^-n`` (S = n, decreasing) or 0 (S < n); q_j(m) is continuous in m, so f
stays non-increasing across that switch. A sum of non-increasing functions is non-increasing, so ``{m <= s :
W_n(m) < 1 / a}`` is an interval ending at s (where every component is ``exp(-n KL(s || q)) <= 1``, so
``W_n(s) <= 1 < 1 / a``), and a bisection that keeps its refuted end returns a value at most L_n.

The computation: for each level and N, the alternatives are solved once on a fixed grid of m (dense in logit,
:data:`_GRID_SIZE` points); each distinct (count, n) is bracketed by a bisection over that grid's indices, then
refined by bisection in m with the alternatives solved by Newton steps inside their bracket (q_j increases
with m). The end returned is always a refuted point (or 0), so it is never above a non-refuted m.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from multiguard.common.validation import check_alpha, check_int

__all__ = [
    "HEAD_WEIGHT",
    "SMALLEST_TUNING_SIZE",
    "tuned_confidence_sequence",
    "tuned_cp_label_probability_bounds",
    "tuned_label_probability_bounds",
    "tuned_log_wealth",
    "tuning_sizes",
    "tuning_weights",
]

HEAD_WEIGHT = 0.5
"""The weight of the component tuned to the most samples N (the rest is spread equally over the smaller sizes)."""
SMALLEST_TUNING_SIZE = 100
"""The smallest tuning size of the grid ``N, N/2, N/4, ...`` (one noise block: the first look)."""

_GRID_SIZE = 4097  # points of the m grid, uniform in logit on [-_LOGIT_SPAN, _LOGIT_SPAN]
_LOGIT_SPAN = 46.0  # m from about 1e-20 to 1 - 1e-20
_REFINE_STEPS = 34  # bisection steps inside one grid cell (a cell is < 0.03 in logit: below 1e-11 of it after)
_NEWTON_STEPS = 4  # Newton steps for q_j(m) inside its bracket [q_j(m_a), q_j(m_b)] (it shrinks with m's)


def tuning_sizes(last: int, smallest: int = SMALLEST_TUNING_SIZE) -> np.ndarray:
    """The tuning sizes ``last, last / 2, last / 4, ...`` while at least ``smallest`` (``[last]`` when ``last``
    is smaller): float64 ``(J,)``. ``tuning_sizes(10_000)`` has 7 (down to 156.25), ``tuning_sizes(1000)`` 4."""
    last = check_int(last, "last", 1)
    smallest = check_int(smallest, "smallest", 1)
    sizes = [float(last)]
    while sizes[-1] / 2 >= smallest:
        sizes.append(sizes[-1] / 2)
    return np.array(sizes)


def tuning_weights(num: int, head: float = HEAD_WEIGHT) -> np.ndarray:
    """The mixture weights of ``num`` tuning sizes: ``head`` on the first (the most samples), ``(1 - head) /
    (num - 1)`` on each other (all on one size when ``num`` is 1): float64 ``(J,)``, summing to 1."""
    num = check_int(num, "num", 1)
    if not 0.0 < head <= 1.0:
        raise ValueError(f"head must be a weight in (0, 1], got {head!r}")
    if num == 1:
        return np.ones(1)
    return np.array([head] + [(1.0 - head) / (num - 1)] * (num - 1))


def _kl(q: np.ndarray, m: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(q) || Bernoulli(m)), exact at q in {0, 1}."""
    from scipy import special

    return (special.xlogy(q, q) - special.xlogy(q, m) + special.xlog1py(1.0 - q, -q)
            - special.xlog1py(1.0 - q, -m))


def _alternatives_by_bisection(m: np.ndarray, budget: np.ndarray) -> np.ndarray:
    """q > m with ``KL(q || m) = budget`` (1 where even q = 1 is not that far), by 100 halvings: ``m`` and
    ``budget`` broadcast."""
    m, budget = np.broadcast_arrays(np.asarray(m, dtype=np.float64), np.asarray(budget, dtype=np.float64))
    low, high = m.copy(), np.ones_like(m)
    for _ in range(100):
        middle = 0.5 * (low + high)
        far = _kl(middle, m) >= budget
        high = np.where(far, middle, high)
        low = np.where(far, low, middle)
    return np.where(-np.log(m) <= budget, 1.0, high)


@lru_cache(maxsize=64)
def _grid(level: float, last: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(m (G,), q (G, J), budgets (J,), log weights (J,))`` for one level and last look."""
    sizes = tuning_sizes(last)
    weights = tuning_weights(sizes.size)
    budgets = (np.log(1.0 / level) + np.log(1.0 / weights)) / sizes
    from scipy import special

    m = special.expit(np.linspace(-_LOGIT_SPAN, _LOGIT_SPAN, _GRID_SIZE))
    q = _alternatives_by_bisection(m[:, None], budgets[None, :])
    return m, q, budgets, np.log(weights)


def _log_wealth_given(m: np.ndarray, q: np.ndarray, successes: np.ndarray, failures: np.ndarray,
                      log_weights: np.ndarray) -> np.ndarray:
    """log W_n(m) from the alternatives ``q`` ``(..., J)`` at ``m`` ``(...)``."""
    from scipy import special

    m = m[..., None]
    s, f = successes[..., None], failures[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (special.xlogy(s, q) - special.xlogy(s, m) + special.xlog1py(f, -q) - special.xlog1py(f, -m))
    return special.logsumexp(log_weights + ratio, axis=-1)


def tuned_log_wealth(m: object, successes: object, n: object, level: float, last: int) -> np.ndarray:
    """log W_n(m) of the lower end's mixture (module docstring) at level ``level`` tuned to ``last``: float64
    of the broadcast shape of ``m`` (in (0, 1)), ``successes`` S and ``n`` (counts, 0 <= S <= n). The
    alternatives are solved by bisection (slow, exact: the reference the bounds are tested against)."""
    level = check_alpha(level)
    _, _, budgets, log_weights = _grid(level, int(last))
    m, successes, n = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (m, successes, n)))
    q = _alternatives_by_bisection(m[..., None], budgets)
    return _log_wealth_given(m, q, successes, n - successes, log_weights)


def _lower_ends(successes: np.ndarray, n: np.ndarray, level: float, last: int) -> np.ndarray:
    """The lower ends L_n for 1-D float arrays of counts and sizes (module docstring): each a refuted m, or 0."""
    grid_m, grid_q, budgets, log_weights = _grid(level, last)
    threshold = np.log(1.0 / level)
    lower = np.zeros(successes.shape)
    work = np.flatnonzero(successes > 0)  # S = 0: the end is 0, exactly
    if work.size == 0:
        return lower
    s, f = successes[work], n[work] - successes[work]
    centre = s / n[work]
    # Bisection over the candidates grid_m[0..top] and then S / n itself (index top + 1, never refuted: W <= 1
    # there); ``low`` stays refuted (-1: m = 0, refuted as S > 0), ``high`` not refuted.
    top = np.searchsorted(grid_m, centre, side="left") - 1  # the last grid point below S / n
    low, high = np.full(work.size, -1), top + 1
    while (high - low > 1).any():
        middle = (low + high) // 2
        probe = np.clip(middle, 0, grid_m.size - 1)
        refuted = _log_wealth_given(grid_m[probe], grid_q[probe], s, f, log_weights) >= threshold
        step = high - low > 1
        low = np.where(step & refuted, middle, low)
        high = np.where(step & ~refuted, middle, high)
    out = np.where(low >= 0, grid_m[np.maximum(low, 0)], 0.0)
    into = np.where(high <= top, grid_m[np.clip(high, 0, grid_m.size - 1)], centre)
    q_out = np.where((low >= 0)[:, None], grid_q[np.maximum(low, 0)], 0.0)
    at_centre = high > top  # the kept end is S / n itself, between grid points top and top + 1
    q_into = grid_q[np.clip(high, 0, grid_m.size - 1)]
    if at_centre.any():
        rows = np.flatnonzero(at_centre)
        q_into[rows] = _newton_alternatives(centre[rows], budgets, grid_q[np.maximum(top[rows], 0)],
                                            grid_q[np.minimum(top[rows] + 1, grid_m.size - 1)], steps=12)
    for _ in range(_REFINE_STEPS):  # bisection in m inside the cell, keeping the refuted end
        middle = 0.5 * (out + into)
        q = _newton_alternatives(middle, budgets, q_out, q_into)
        refuted = _log_wealth_given(middle, q, s, f, log_weights) >= threshold
        out = np.where(refuted, middle, out)
        into = np.where(refuted, into, middle)
        q_out = np.where(refuted[:, None], q, q_out)
        q_into = np.where(refuted[:, None], q_into, q)
    lower[work] = out
    return lower


def _newton_alternatives(m: np.ndarray, budgets: np.ndarray, q_low: np.ndarray, q_high: np.ndarray,
                         steps: int = 0) -> np.ndarray:
    """q_j(m) ``(M, J)`` by safeguarded Newton steps on ``KL(q || m) = budget_j`` (convex, increasing in q > m)
    inside ``[max(q_low, m), q_high]`` (the alternatives at the ends of m's bracket: q_j increases with m); 1
    where ``-log m <= budget_j``. Converges to float precision in the few steps a grid cell needs."""
    from scipy import special

    m2 = m[:, None]
    lo, hi = np.maximum(q_low, m2), np.array(q_high, dtype=np.float64)
    q = 0.5 * (lo + hi)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for _ in range(steps or _NEWTON_STEPS):
            gap = _kl(q, m2) - budgets
            lo = np.where(gap < 0, q, lo)
            hi = np.where(gap >= 0, q, hi)
            step = q - gap / (special.logit(q) - special.logit(m2))
            q = np.where(np.isfinite(step) & (step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
    return np.where(-np.log(m2) <= budgets, 1.0, q)


def tuned_confidence_sequence(counts: object, n: object, level: object, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Both ends of the tuned mixture confidence sequence at ``level``, tuned to ``last`` samples, vectorised.

    ``counts`` (any shape, whole numbers in [0, n]) after ``n`` samples (broadcasting to ``counts``), ``level``
    in (0, 1) (broadcasting too), ``last`` the most samples the procedure allows (the grid's largest tuning size;
    the sequence is valid at every n, also beyond it). Returns ``(lower, upper)`` float64 of ``counts``' shape:
    ``lower = 0`` exactly at count 0, ``upper = 1`` exactly at count n.

    Guarantee (Ville's inequality, module docstring): for a label with probability p, with probability at least
    ``1 - level`` over its samples, ``lower <= p`` at every n at once (and separately ``upper >= p``); each end
    returned is a refuted candidate (below every m the sequence keeps), so rounding only widens it.
    """
    last = check_int(last, "last", 1)
    counts = np.asarray(counts, dtype=np.float64)
    shape = counts.shape
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), shape).ravel()
    levels = np.broadcast_to(np.asarray(level, dtype=np.float64), shape).ravel()
    flat = counts.ravel()
    if ((flat < 0) | (flat > n) | (flat != np.round(flat))).any():
        raise ValueError("counts must be whole numbers in [0, n]")
    lower, upper = np.zeros(flat.shape), np.ones(flat.shape)
    for value in np.unique(levels):
        rows = levels == value
        level_value = check_alpha(float(value))
        lower[rows] = _lower_ends(flat[rows], n[rows], level_value, last)
        upper[rows] = 1.0 - _lower_ends(n[rows] - flat[rows], n[rows], level_value, last)
    return lower.reshape(shape), upper.reshape(shape)


def tuned_label_probability_bounds(counts: object, n: object, alpha: float, last: int,
                                   bounds_read: object = None) -> tuple[np.ndarray, np.ndarray]:
    """The label probability bounds of a certificate from the tuned confidence sequences: ``(lower, upper)``
    float64 shaped like ``counts`` ``(N, c)`` (or ``(c,)``), each end at level ``alpha / B`` (B the bounds the
    certificate reads, ``bounds_read`` as in
    :func:`multiguard.certificates.betting.betting_label_probability_bounds`), tuned to ``last`` (the last look);
    ``n`` a scalar or one per row.

    Guarantee: fix L before sampling. With probability at least ``1 - alpha``, at every n at once,
    ``lower_i <= p_i`` for every i in L and ``upper_j >= p_j`` for every j outside L (each of the B one-sided ends
    fails at some n with probability at most ``alpha / B``, :func:`tuned_confidence_sequence`; union over the B
    labels), so under any stopping rule. Each distinct (count, n, B) is solved once.
    """
    from multiguard.certificates.betting import _checked

    array2d, single, sizes, read = _checked(counts, n, bounds_read)
    alpha = check_alpha(alpha)
    whole = array2d.astype(np.int64)
    top_n, top_b = int(sizes.max()) + 1, int(read.max()) + 1
    keys = (whole * top_n + sizes[:, None]) * top_b + read[:, None]
    unique, inverse = np.unique(keys, return_inverse=True)
    b, rest = unique % top_b, unique // top_b
    low, up = tuned_confidence_sequence(rest // top_n, rest % top_n, alpha / b, last)
    lower = low[inverse.ravel()].reshape(array2d.shape)
    upper = up[inverse.ravel()].reshape(array2d.shape)
    return (lower[0], upper[0]) if single else (lower, upper)


def tuned_cp_label_probability_bounds(counts: object, n: object, alpha: float, last: int, share: float | None,
                                      bounds_read: object = None) -> tuple[np.ndarray, np.ndarray]:
    """The tuned sequences at every look plus one Clopper-Pearson bound at the last look: as
    :func:`multiguard.certificates.betting.betting_cp_label_probability_bounds` with the tuned sequence
    (:func:`tuned_label_probability_bounds`, at ``(1 - w) alpha / B``) in place of the beta-binomial one, and
    the fixed-n Clopper-Pearson bound at ``w alpha / B`` read at ``n = last`` where better (w = ``share``,
    ``None``: :data:`multiguard.certificates.betting.DEFAULT_CP_SHARE`). Shapes and guarantee as there (the proof
    reads the same: the sequence fails at some n with probability at most ``(1 - w) alpha / B``, the last look's
    bound at most ``w alpha / B``)."""
    from multiguard.certificates.betting import _checked, check_cp_share
    from multiguard.certificates.bounds import clopper_pearson

    w = check_cp_share(share)
    array2d, single, sizes, read = _checked(counts, n, bounds_read)
    alpha = check_alpha(alpha)
    if (sizes > last).any():
        raise ValueError(f"n must be at most the last look {last}, got {int(sizes.max())}")
    if w < 1.0:
        lower, upper = tuned_label_probability_bounds(array2d, sizes, alpha * (1.0 - w), last, read)
    else:
        lower, upper = np.zeros(array2d.shape), np.ones(array2d.shape)
    for b in np.unique(read[sizes == last]):
        rows = (sizes == last) & (read == b)
        cp_lower, cp_upper = clopper_pearson(array2d[rows], last, alpha * w / float(b))
        lower[rows] = np.maximum(lower[rows], cp_lower)
        upper[rows] = np.minimum(upper[rows], cp_upper)
    return (lower[0], upper[0]) if single else (lower, upper)
