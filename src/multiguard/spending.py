"""Sequential certification with the error budget spent over the looks by stated weights, a finer schedule of
looks, and a futility test with a margin. Pure NumPy/SciPy; no torch.

Three levers on how many samples sequential certification needs (docs/sequential.md):

- **Spending.** The anytime-valid bounds of :func:`multiguard.certify.anytime_label_probability_bounds` spend
  the error budget alpha equally over the J looks: each of the c bounds a certificate reads is a one-sided
  Clopper-Pearson bound at level ``alpha / (c J)`` at every look. Any weights ``w_1, ..., w_J >= 0`` with
  ``w_1 + ... + w_J <= 1`` do as well: at look j each bound at level ``alpha w_j / c``
  (:func:`spent_label_probability_bounds`). Most inputs that matter are decided at the last looks, so a large
  share of alpha there (:func:`spending_weights`: ``last_share`` at the last look, the rest split equally over
  the earlier ones) buys tighter final bounds for slightly looser early ones.
- **Schedule.** More looks let an input stop closer to the sample size it needs, at the price of a smaller
  share per look; :func:`fine_sample_size_schedule` looks at about 20 % steps (100, 200, 300, 400, 500, 600,
  800, 1000, 1200, 1500, 2000, ...), where the 1-2-5 series of :func:`multiguard.certify.sample_size_schedule`
  steps by 2 to 2.5x.
- **Futility with a margin gamma** (:func:`favourable_counts`, rule ``"margin"``): an input is given up when
  even the remaining samples arriving at the favourable one-sided Clopper-Pearson bound at level ``gamma`` of
  its counts so far (the upper bound for labels of L, the lower bound outside) would not raise its certified
  size at the last look. ``gamma`` near 0 credits implausibly good continuations (``"plausible"`` is
  ``gamma = alpha w_j / c``), ``gamma = 1/2`` about the frequencies seen so far (``"projected"``).

The guarantee does not depend on the futility rule nor on the schedule (it is fixed before sampling), only on
the weights summing to at most 1: see :func:`spent_label_probability_bounds`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import stats

from .certify import (
    SequentialCertificate,
    StoppingDecision,
    _as_float_matrix,
    _as_label_mask,
    _as_looks,
    _as_radius,
    _as_row_sizes,
    _intersection_size_at,
    certified_radii,
    sample_size_schedule,
)
from .seeds import NOISE_BLOCK
from .validation import check_alpha, check_choice, check_float, check_int, invalid

__all__ = [
    "FINE_MANTISSAS",
    "MARGIN_FUTILITY_RULES",
    "SCHEDULES",
    "favourable_counts",
    "fine_sample_size_schedule",
    "look_schedule",
    "spending_weights",
    "spent_label_probability_bounds",
    "spent_sequential_certification",
    "spent_stopping_rule",
]

FINE_MANTISSAS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
"""The steps of :func:`fine_sample_size_schedule` within a decade (about 20 % apart)."""


def fine_sample_size_schedule(n: int, block: int = NOISE_BLOCK) -> np.ndarray:
    """Looks about 20 % apart, in whole noise blocks: ``m 10^e block`` for the mantissas m of
    :data:`FINE_MANTISSAS` where that is a multiple of ``block``, while below ``n``, then ``n`` itself.

    Returns int64 ``(J,)``. With ``block = 100``: ``[100, 200, 300, 400, 500, 600, 800, 1000]`` for n = 1000
    and 18 looks ending ``..., 5000, 6000, 8000, 10000`` for n = 10,000 (``[n]`` when ``n <= block``). Every
    look but the last ends on a noise-block boundary, so no drawn noise is wasted between looks.
    """
    n = check_int(n, "n", 1)
    block = check_int(block, "block", 1)
    sizes: list[int] = []
    scale = block
    while True:
        for mantissa in FINE_MANTISSAS:
            value = mantissa * scale
            size = int(round(value))
            if abs(value - size) > 1e-9 or size % block:
                continue
            if size >= n:
                return np.array([*sizes, n], dtype=np.int64)
            sizes.append(size)
        scale *= 10


SCHEDULES: dict[str, Callable[[int], np.ndarray]] = {
    "1-2-5": sample_size_schedule,
    "fine": fine_sample_size_schedule,
}
"""Schedules of looks by name: ``"1-2-5"`` (:func:`multiguard.certify.sample_size_schedule`, the looks of runs
written before schedules could be chosen) and ``"fine"`` (:func:`fine_sample_size_schedule`)."""


def look_schedule(n: int, schedule: str = "fine") -> np.ndarray:
    """The looks of the schedule named ``schedule`` (one of :data:`SCHEDULES`) up to ``n``: int64 ``(J,)``."""
    return SCHEDULES[check_choice(schedule, "schedule", SCHEDULES)](n)


def spending_weights(num_looks: int, last_share: float | None = None) -> np.ndarray:
    """Shares of the error budget alpha spent at each of ``num_looks`` looks: float64 ``(J,)`` summing to 1.

    ``last_share=None``: equal shares ``1/J`` (the spending of
    :func:`multiguard.certify.anytime_label_probability_bounds`). Otherwise ``last_share`` in (0, 1] at the
    last look and ``(1 - last_share) / (J - 1)`` at each earlier one (all of alpha at the one look when J = 1).
    """
    num_looks = check_int(num_looks, "num_looks", 1)
    if last_share is None:
        return np.full(num_looks, 1.0 / num_looks)
    last_share = check_float(last_share, "last_share", 0.0, 1.0, low_open=True)
    if num_looks == 1:
        return np.ones(1)
    weights = np.full(num_looks, (1.0 - last_share) / (num_looks - 1))
    weights[-1] = last_share
    return weights


def _check_weights(weights: object, num_looks: int) -> np.ndarray:
    """Spending weights as float64 ``(J,)``: finite, >= 0, summing to at most 1 (a sum above 1 would spend
    more than alpha and void the guarantee, so it is refused)."""
    array = np.asarray(weights, dtype=np.float64)
    if array.shape != (num_looks,) or not np.isfinite(array).all() or (array < 0).any():
        raise invalid("weights", f"{num_looks} finite shares >= 0, one per look", weights)
    total = float(array.sum())
    if total > 1.0 + 1e-12:
        raise ValueError(f"weights must sum to at most 1 (they spend alpha over the looks), got a sum of {total:.6g}")
    if total <= 0:
        raise ValueError("weights must not all be 0")
    return array


def _clopper_pearson(counts: np.ndarray, n: np.ndarray, level: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds at ``level`` each; arrays broadcast. Count 0 has lower bound 0 and count
    n upper bound 1 (the closed forms); a level of 0 gives the trivial bounds 0 and 1."""
    positive = counts > 0
    below_n = counts < n
    lower = stats.beta.ppf(level, np.where(positive, counts, 1.0), n - counts + 1.0)
    upper = stats.beta.ppf(1.0 - level, counts + 1.0, np.where(below_n, n - counts, 1.0))
    return np.where(positive, lower, 0.0), np.where(below_n, upper, 1.0)


def _unique_clopper_pearson(counts: np.ndarray, sizes: np.ndarray, levels: np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`_clopper_pearson` of an ``(N, c)`` array with one ``(size, level)`` per row, each distinct count
    evaluated once per distinct ``(size, level)`` (the Beta quantile is the whole cost)."""
    lower, upper = np.zeros(counts.shape), np.ones(counts.shape)
    pairs, group = np.unique(np.stack([sizes.astype(np.float64), levels], axis=1), axis=0, return_inverse=True)
    group = group.ravel()
    for g, (size, level) in enumerate(pairs):
        rows = group == g
        values, inverse = np.unique(counts[rows], return_inverse=True)
        low, up = _clopper_pearson(values, size, level)
        lower[rows] = low[inverse].reshape(-1, counts.shape[1])
        upper[rows] = up[inverse].reshape(-1, counts.shape[1])
    return lower, upper


def spent_label_probability_bounds(
    counts: object, n: object, alpha: float, looks: object, weights: object = None
) -> tuple[np.ndarray, np.ndarray]:
    """Label probability bounds valid at every look of a fixed schedule, with alpha spent by ``weights``.

    ``counts[..., i]`` counts the first ``n`` samples whose top-k' contains label i, where ``n`` (a scalar, or
    one per row of an ``(N, c)`` array) is one of ``looks``. ``weights``: ``(J,)`` shares of alpha, one per
    look, ``>= 0`` and summing to at most 1 (a larger sum is refused); ``None`` is equal shares (then these
    are :func:`multiguard.certify.anytime_label_probability_bounds`). Returns ``(lower, upper)`` float64
    arrays shaped like ``counts``: at look j, the one-sided Clopper-Pearson bounds at level
    ``alpha w_j / c`` each.

    Guarantee: fix a label set L before sampling. With probability at least ``1 - alpha``, at every look at
    once, ``lower_i <= p_i`` for i in L and ``upper_j >= p_j`` for j outside L; so the bounds read at any
    stopping time hold with probability at least ``1 - alpha``. Proof: at look j each of the c bounds a
    certificate reads fails with probability at most ``alpha w_j / c``; a failure at the stopping time lies in
    the union of these J c events, of probability at most ``sum_j c alpha w_j / c = alpha sum_j w_j <= alpha``.
    """
    schedule = _as_looks(looks)
    raw = np.asarray(counts)
    if raw.dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {raw.dtype}")
    array, single = _as_float_matrix(counts, "counts")
    sizes = _as_row_sizes(n, array.shape[0], schedule)
    alpha = check_alpha(alpha)
    shares = spending_weights(schedule.size) if weights is None else _check_weights(weights, schedule.size)
    if (array != np.round(array)).any():
        raise ValueError("counts must be whole numbers")
    if (array < 0).any() or (array > sizes[:, None]).any():
        raise ValueError("counts must lie in [0, n] for the look n of their row")
    if weights is None:  # equal shares, computed as anytime_label_probability_bounds does, to the last bit
        levels = np.full(sizes.shape, alpha / (array.shape[1] * schedule.size))
    else:
        levels = alpha * shares[np.searchsorted(schedule, sizes)] / array.shape[1]
    lower, upper = _unique_clopper_pearson(array, sizes, levels)
    return (lower[0], upper[0]) if single else (lower, upper)


# --------------------------------------------------------------------------------------------- futility

MARGIN_FUTILITY_RULES = ("remaining", "plausible", "projected", "margin")
"""Futility rules of :func:`spent_stopping_rule`: the three of :data:`multiguard.certify.FUTILITY_RULES`
and ``"margin"`` (the remaining samples at the favourable Clopper-Pearson bound at level gamma)."""


def favourable_counts(
    counts: np.ndarray, sizes: np.ndarray, remaining: np.ndarray, mask: np.ndarray, futility: str, *,
    lower: np.ndarray, upper: np.ndarray, margin: float,
) -> np.ndarray:
    """The counts at the last look if the ``remaining`` samples (``(M,)``) arrive as favourably as ``futility``
    allows: each label of L gains ``ceil(m q_i)`` and each outside label ``floor(m q_j)``, float ``(M, c)``.

    ``q`` is 1 for L and 0 outside (``"remaining"``); the current anytime bounds ``upper``/``lower``
    (``"plausible"``); the frequencies so far (``"projected"``); or the one-sided Clopper-Pearson bounds at
    level ``margin`` of the counts so far, upper for L and lower outside (``"margin"``).
    """
    m = remaining[:, None].astype(np.float64)
    if futility == "remaining":
        q_in, q_out = np.ones_like(counts), np.zeros_like(counts)
    elif futility == "plausible":
        q_in, q_out = upper, lower
    elif futility == "projected":
        q_in = q_out = counts / sizes[:, None]
    else:
        q_out, q_in = _unique_clopper_pearson(counts, sizes, np.full(sizes.shape, margin))
    return counts + np.where(mask, np.ceil(m * q_in), np.floor(m * q_out))


def spent_stopping_rule(
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
    weights: object = None,
    futility: str = "margin",
    margin: float = 0.2,
    second_terms: bool = True,
) -> StoppingDecision:
    """Should sampling stop for each input at look ``n``? As :func:`multiguard.certify.sequential_stopping_rule`
    with the bounds of :func:`spent_label_probability_bounds` (``weights``) and the futility rules of
    :data:`MARGIN_FUTILITY_RULES` (``margin`` is gamma, read by ``"margin"`` only).

    An input stops when its certified size e(R) at this look reached ``min(|L|, k)``, when the counts of
    :func:`favourable_counts` at the last look would certify no more than now, or at the last look. The rule
    only chooses the look; the guarantee of the bounds read at the stop is that of
    :func:`spent_label_probability_bounds`, whatever the rule.
    """
    futility = check_choice(futility, "futility", MARGIN_FUTILITY_RULES)
    margin = check_float(margin, "margin", 0.0, 1.0, low_open=True, high_open=True)
    schedule = _as_looks(looks)
    shares = None if weights is None else _check_weights(weights, schedule.size)
    counts_arr, _ = _as_float_matrix(counts, "counts")
    mask = _as_label_mask(labels, counts_arr.shape)
    sizes = _as_row_sizes(n, counts_arr.shape[0], schedule)
    radius_arr, scalar = _as_radius(radius)
    if not scalar:
        raise ValueError(f"radius must be a single number >= 0, got {radius!r}")
    options = dict(k=k, k_prime=k_prime, sigma=sigma, radius=float(radius_arr[0]), second_terms=second_terms)
    lower, upper = spent_label_probability_bounds(counts_arr, sizes, alpha, schedule, shares)
    now = _intersection_size_at(lower, upper, mask, **options)
    settled = now >= np.minimum(mask.sum(axis=1), k)
    last = int(schedule[-1])
    best = now.copy()
    open_rows = ~settled & (sizes < last)
    if open_rows.any():
        favourable = favourable_counts(
            counts_arr[open_rows], sizes[open_rows], last - sizes[open_rows], mask[open_rows], futility,
            lower=lower[open_rows], upper=upper[open_rows], margin=margin,
        )
        best_lower, best_upper = spent_label_probability_bounds(favourable, last, alpha, schedule, shares)
        best[open_rows] = _intersection_size_at(best_lower, best_upper, mask[open_rows], **options)
    stop = settled | (best <= now) | (sizes >= last)
    return StoppingDecision(stop=stop, intersection_size=now, best_possible=best, settled=settled)


def spent_sequential_certification(
    nested_counts: object,
    labels: object,
    *,
    looks: object,
    alpha: float,
    k: int,
    k_prime: int,
    sigma: float,
    radius: float,
    weights: object = None,
    futility: str = "margin",
    margin: float = 0.2,
    second_terms: bool = True,
) -> SequentialCertificate:
    """Replay sequential certification on nested counts ``(N, J, c)`` (``[i, j]``: the first ``looks[j]``
    samples of input i): each input stops at its first look where :func:`spent_stopping_rule` says so, and is
    certified from the bounds of :func:`spent_label_probability_bounds` there. Guarantee: for each input, with
    probability at least ``1 - alpha``, at least e labels of L stay in the smoothed top-k within ``radii[e-1]``.
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
    shares = None if weights is None else _check_weights(weights, schedule.size)
    stop_at = np.full(num, schedule.size - 1)
    active = np.arange(num)
    rule = dict(looks=schedule, alpha=alpha, k=k, k_prime=k_prime, sigma=sigma, radius=radius, weights=shares,
                futility=futility, margin=margin, second_terms=second_terms)
    for j, size in enumerate(schedule):
        if active.size == 0:
            break
        decision = spent_stopping_rule(nested[active, j], int(size), mask[active], **rule)
        stop_at[active[decision.stop]] = j
        active = active[~decision.stop]
    counts = nested[np.arange(num), stop_at].astype(np.int64)
    samples = schedule[stop_at]
    lower, upper = spent_label_probability_bounds(counts, samples, alpha, schedule, shares)
    radii = certified_radii(lower, upper, mask, k=k, k_prime=k_prime, sigma=sigma, second_terms=second_terms)
    return SequentialCertificate(samples=samples, counts=counts, lower=lower, upper=upper, radii=radii,
                                 looks=schedule)

