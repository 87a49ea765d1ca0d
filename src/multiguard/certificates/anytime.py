"""The families of anytime label probability bounds a sequential run reads (:data:`BOUNDS`, ``--bounds``) and how
alpha is spent over the looks of a schedule (:func:`spending_weights`). No torch; SciPy loads on first use.
:mod:`multiguard.certificates.sequential` re-exports every name here; its
:func:`~multiguard.certificates.sequential.anytime_label_probability_bounds` checks the arguments and calls the
family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from multiguard.common.registry import Registry
from multiguard.common.validation import check_choice, check_float, check_int

__all__ = ["BOUNDS", "DEFAULT_SPENDING", "BoundsRecord", "bounds_family", "spending_weights"]

DEFAULT_SPENDING = 0.75
"""The share of alpha spent at the last look (the rest split equally over the earlier looks), unless another is
asked for; ``None`` spends equal shares (the spending of runs written before spending could be chosen)."""


def spending_weights(num_looks: int, spending: object = DEFAULT_SPENDING) -> np.ndarray:
    """The shares of alpha spent at each of ``num_looks`` looks: float64 ``(J,)``, each >= 0, summing to at most 1.

    ``spending``: ``None`` for equal shares ``1/J``; a number in (0, 1] for that share at the last look and
    ``(1 - share) / (J - 1)`` at each earlier one (all of alpha at a single look); or a sequence of J weights,
    returned as they are after checking them (a sum above 1 would spend more than alpha and is refused).
    """
    num_looks = check_int(num_looks, "num_looks", 1)
    if spending is None:
        return np.full(num_looks, 1.0 / num_looks)
    if np.ndim(spending) == 0:
        share = check_float(spending, "spending", 0.0, 1.0, low_open=True)
        if num_looks == 1:
            return np.ones(1)
        weights = np.full(num_looks, (1.0 - share) / (num_looks - 1))
        weights[-1] = share
        return weights
    weights = np.asarray(spending, dtype=np.float64)
    if weights.shape != (num_looks,) or not np.isfinite(weights).all() or (weights < 0).any():
        raise ValueError(f"spending must be None, a share in (0, 1], or {num_looks} finite weights >= 0 (one per "
                         f"look), got {spending!r}")
    if weights.sum() > 1.0 + 1e-12:
        raise ValueError(f"spending weights must sum to at most 1 (they spend alpha over the looks), got a sum of "
                         f"{weights.sum():.6g}")
    if weights.sum() <= 0:
        raise ValueError("spending weights must not all be 0")
    return weights


@dataclass(frozen=True)
class BoundsRecord:
    """What a family of anytime bounds (:data:`BOUNDS`) reads besides the counts, for its readers.

    Attributes:
        spending: how it reads the stopping rule's ``spending``: ``"looks"`` (alpha spent over the looks,
            :func:`spending_weights`), ``"share"`` (the share w of each bound's alpha at the last look's
            Clopper-Pearson bound, checked by :func:`multiguard.certificates.betting.check_cp_share` before any
            sample is drawn; ``None``: 1/2) or ``"unused"``.
        anytime: valid at every n, so looks cost nothing: given without ``--schedule`` over a rule of ``union``,
            the command line looks after every noise block (``every-block``).
        last_look: reads ``looks[-1]`` (the most samples the procedure allows: a Clopper-Pearson bound there, or
            the sizes its sequences are tuned to).
        report: the report's sentence for it, ``{share:g}`` replaced by the share (``""``: the spending's).
    """

    spending: str = "unused"
    anytime: bool = True
    last_look: bool = False
    report: str = ""

    def __post_init__(self) -> None:
        if self.spending not in ("looks", "share", "unused"):
            raise ValueError(f"spending must be 'looks', 'share' or 'unused', got {self.spending!r}")


BOUNDS: Registry[Callable[..., tuple[np.ndarray, np.ndarray]], BoundsRecord] = Registry(
    "anytime bounds", argument="--bounds", record=BoundsRecord)
"""The families of anytime bounds a sequential run reads, by name (``--bounds``, ``StopRule.bounds``). A family
is ``f(counts (N, c) float64, n (N,) int64, alpha, looks (J,) int64, spending, bounds_read) -> (lower, upper)``
each ``(N, c)`` float64: label probability bounds that hold, for a label set L fixed before sampling, at every
look at once with probability at least ``1 - alpha`` (``bounds_read`` B one-sided bounds per row, as
:func:`multiguard.certificates.bounds.label_probability_bounds`); its :class:`BoundsRecord` says what else it
reads. :func:`multiguard.certificates.sequential.anytime_label_probability_bounds` checks the arguments and
calls it."""


def _union_bounds(array2d: np.ndarray, sizes: np.ndarray, alpha: float, lows: np.ndarray, spending: object,
                  bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson at each look's share of alpha (the proof: that of
    :func:`multiguard.certificates.sequential.anytime_label_probability_bounds`)."""
    from multiguard.certificates import bounds as _bounds

    c = array2d.shape[1]
    read = _bounds._as_bounds_read(bounds_read, array2d.shape)
    if spending is None:  # equal shares, as runs written before spending existed computed them, to the last bit
        look_levels = None
    else:
        look_levels = alpha * spending_weights(lows.size, spending)
    # Each distinct count is evaluated once per (look, B): a look of N inputs holds at most n + 1 distinct counts,
    # and the Beta quantile is the whole cost.
    lower = np.zeros(array2d.shape)
    upper = np.ones(array2d.shape)
    for size in np.unique(sizes):
        for b in np.unique(read[sizes == size]):
            rows = (sizes == size) & (read == b)
            if look_levels is None:
                level = alpha / (c * lows.size) if b == c else alpha / (float(b) * lows.size)
            else:
                level = look_levels[np.searchsorted(lows, size)] / float(b)
            values, inverse = np.unique(array2d[rows], return_inverse=True)
            if (values != np.round(values)).any():
                raise ValueError("counts must be whole numbers")
            if values[0] < 0 or values[-1] > size:
                raise ValueError(f"counts must lie in [0, n] = [0, {size}] for the rows at look n = {size}")
            lower_values, upper_values = _bounds.clopper_pearson(values.astype(np.float64), int(size), level)
            lower[rows] = lower_values[inverse.ravel()].reshape(-1, c)
            upper[rows] = upper_values[inverse.ravel()].reshape(-1, c)
    return lower, upper


BOUNDS.register("union", _union_bounds, help="Clopper-Pearson at each look's share of alpha (the union over a fixed "
                "schedule of looks; the default)", record=BoundsRecord(spending="looks", anytime=False))


@BOUNDS.register("betting", help="beta-binomial mixture confidence sequences, valid at every n (no alpha spent on "
                 "looks)", record=BoundsRecord(report="betting bounds: beta-binomial mixture confidence sequences, "
                                               "no alpha spent on looks"))
def _betting_bounds(array2d: np.ndarray, sizes: np.ndarray, alpha: float, lows: np.ndarray, spending: object,
                    bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    from multiguard.certificates import betting as _betting

    return _betting.betting_label_probability_bounds(array2d, sizes, alpha, bounds_read)


@BOUNDS.register("betting-cp", help="those sequences at 1 - spending of each bound's alpha; at the last look, the "
                 "better of them and Clopper-Pearson at spending", record=BoundsRecord(
                     spending="share", last_look=True, report="betting-cp bounds: beta-binomial mixture confidence "
                     "sequences, and at the last look Clopper-Pearson at {share:g} of alpha"))
def _betting_cp_bounds(array2d: np.ndarray, sizes: np.ndarray, alpha: float, lows: np.ndarray, spending: object,
                       bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    from multiguard.certificates import betting as _betting

    return _betting.betting_cp_label_probability_bounds(array2d, sizes, alpha, int(lows[-1]), spending, bounds_read)


@BOUNDS.register("tuned", help="mixtures of likelihood ratios tuned to the sample sizes up to the last look, valid "
                 "at every n", record=BoundsRecord(last_look=True, report="tuned bounds: mixture confidence "
                                                   "sequences tuned to the sizes up to the last look, no alpha "
                                                   "spent on looks"))
def _tuned_bounds(array2d: np.ndarray, sizes: np.ndarray, alpha: float, lows: np.ndarray, spending: object,
                  bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    from multiguard.certificates import tuned as _tuned

    return _tuned.tuned_label_probability_bounds(array2d, sizes, alpha, int(lows[-1]), bounds_read)


@BOUNDS.register("tuned-cp", help="those tuned sequences at 1 - spending of each bound's alpha; at the last look, "
                 "the better of them and Clopper-Pearson at spending", record=BoundsRecord(
                     spending="share", last_look=True, report="tuned-cp bounds: mixture confidence sequences tuned "
                     "to the sizes up to the last look, and at the last look Clopper-Pearson at {share:g} of alpha"))
def _tuned_cp_bounds(array2d: np.ndarray, sizes: np.ndarray, alpha: float, lows: np.ndarray, spending: object,
                     bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    from multiguard.certificates import tuned as _tuned

    return _tuned.tuned_cp_label_probability_bounds(array2d, sizes, alpha, int(lows[-1]), spending, bounds_read)


def bounds_family(name: str) -> BoundsRecord:
    """The record of the anytime bounds registered as ``name`` (ValueError naming ``bounds`` and the choices)."""
    return BOUNDS.record(check_choice(name, "bounds", BOUNDS.names()))
