"""Anytime-valid label probability bounds by betting: the beta-binomial (Krichevsky-Trofimov) mixture martingale
and the confidence sequence it gives. NumPy/SciPy only, no torch.

For a label whose indicator "label i in the base classifier's top-k' of sample s" is Bernoulli(p), s = 1, 2, ...,
and a candidate value p0, the mixture of the likelihood ratios of Bernoulli(q) against Bernoulli(p0) over
q ~ Beta(1/2, 1/2) (the Krichevsky-Trofimov prior) after n samples of which S had the label is, in closed form,

    M_n(p0) = B(1/2 + S, 1/2 + n - S) / B(1/2, 1/2) / (p0^S (1 - p0)^(n - S))

(B the Beta function, ``scipy.special.betaln`` in logs). Under p = p0 it is a nonnegative martingale with
M_0 = 1 (a test martingale: the wealth of a bettor who bets on the coin with the mixture's predictive
probabilities, Robbins' method of mixtures), so Ville's inequality gives P(sup_n M_n(p) >= 1/a) <= a. The
confidence sequence C_n = {p0 : M_n(p0) < 1/a} therefore contains p at every n at once with probability at least
1 - a, and its ends hold at any stopping time, whatever the rule (Waudby-Smith and Ramdas, "Estimating means of
bounded random variables by betting", JRSS-B 2023, give this construction for bounded means; Voracek, "Treatment
of statistical estimation problems in randomized smoothing for adversarial robustness", NeurIPS 2024, uses this
mixture test for randomized smoothing). log M_n(p0) is convex in p0 with its minimum at S / n, where it is <= 0,
so C_n is an interval around S / n and each end is the one root of log M_n(p0) = log(1/a) on its side; bisection
finds it, and the end returned is the bracket end outside C_n's interior side (so the interval returned contains
C_n: rounding only makes it wider).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from multiguard.common.validation import check_alpha

__all__ = [
    "DEFAULT_CP_SHARE",
    "KT_PRIOR",
    "betting_confidence_sequence",
    "betting_cp_label_probability_bounds",
    "betting_label_probability_bounds",
    "check_cp_share",
    "ends_per_distinct_count",
    "log_wealth",
    "with_last_look_clopper_pearson",
]

KT_PRIOR = 0.5
"""Both parameters of the Beta mixing prior (Beta(1/2, 1/2), the Krichevsky-Trofimov prior)."""

DEFAULT_CP_SHARE = 0.5
"""The share w of each bound's alpha that :func:`betting_cp_label_probability_bounds` spends on the fixed-n
Clopper-Pearson bound at the last look when ``share`` is ``None`` (equal shares between the two bounds)."""

_BISECTION_STEPS = 60  # halves the bracket 60 times: below 1e-18, under float64 resolution of p


def log_wealth(p0: object, successes: object, n: object, mixture: np.ndarray | None = None) -> np.ndarray:
    """log M_n(p0) of the beta-binomial mixture martingale (module docstring), broadcast over the arguments.

    ``successes`` S and ``n`` are counts (0 <= S <= n); ``p0`` in [0, 1]. Returns float64 of the broadcast shape;
    ``+inf`` where p0 is 0 with S > 0 or 1 with S < n (such a p0 is refuted by one sample). ``mixture``: the
    log marginal likelihood ``log B(1/2 + S, 1/2 + n - S) - log B(1/2, 1/2)`` if already computed.
    """
    from scipy import special

    p0, successes, n = (np.asarray(v, dtype=np.float64) for v in (p0, successes, n))
    failures = n - successes
    if mixture is None:
        mixture = special.betaln(KT_PRIOR + successes, KT_PRIOR + failures) - special.betaln(KT_PRIOR, KT_PRIOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        likelihood = special.xlogy(successes, p0) + special.xlog1py(failures, -p0)
    return mixture - likelihood


def betting_confidence_sequence(counts: object, n: object, level: object) -> tuple[np.ndarray, np.ndarray]:
    """Both ends of the beta-binomial mixture confidence sequence at ``level`` for every count, vectorised.

    ``counts`` (any shape, whole numbers in [0, n]) are label counts after ``n`` samples (a scalar or an array
    broadcasting to ``counts``); ``level`` (in (0, 1), broadcasting too) is the error probability a of each
    sequence. Returns ``(lower, upper)`` float64 arrays of ``counts``' shape.

    Guarantee (Ville's inequality, module docstring): for a label with probability p, with probability at least
    ``1 - level`` over its samples, ``lower <= p <= upper`` at every n at once; so a one-sided end read at a
    stopping time, whatever the rule, fails with probability at most ``level``. A certificate reading c such ends
    (c labels, one end each) at ``level = alpha / c`` holds with probability at least ``1 - alpha`` by the union
    bound over the c labels (not over the looks: there is nothing to pay for looking after every sample).
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = np.broadcast_to(np.asarray(n, dtype=np.float64), counts.shape)
    level = np.broadcast_to(np.asarray(level, dtype=np.float64), counts.shape)
    for value in np.unique(level):
        check_alpha(float(value))
    if ((counts < 0) | (counts > n) | (counts != np.round(counts))).any():
        raise ValueError("counts must be whole numbers in [0, n]")
    from scipy import special

    threshold = -np.log(level)
    mixture = special.betaln(KT_PRIOR + counts, KT_PRIOR + n - counts) - special.betaln(KT_PRIOR, KT_PRIOR)
    centre = np.where(n > 0, counts / np.where(n > 0, n, 1.0), 0.5)
    lower = _crossing(counts, n, mixture, threshold, np.zeros_like(centre), centre)
    upper = _crossing(counts, n, mixture, threshold, np.ones_like(centre), centre)
    return lower, upper


def _crossing(counts: np.ndarray, n: np.ndarray, mixture: np.ndarray, threshold: np.ndarray, outside: np.ndarray,
              inside: np.ndarray) -> np.ndarray:
    """Bisection for the end of C_n between ``outside`` (0 for the lower end, 1 for the upper) and ``inside`` (S/n,
    in C_n): the bracket keeps log M >= threshold at its ``outside`` end; returns that end (so the end returned is
    never inside C_n's interior, and the interval returned contains C_n). Where log M at ``outside`` is already
    below the threshold, C_n reaches ``outside`` and that is returned."""
    out = outside.copy()
    into = inside.copy()
    reaches = log_wealth(out, counts, n, mixture) < threshold
    for _ in range(_BISECTION_STEPS):
        middle = 0.5 * (out + into)
        refuted = log_wealth(middle, counts, n, mixture) >= threshold
        out = np.where(refuted, middle, out)
        into = np.where(refuted, into, middle)
    return np.where(reaches, outside, out)


def betting_label_probability_bounds(counts: object, n: object, alpha: float,
                                     bounds_read: object = None) -> tuple[np.ndarray, np.ndarray]:
    """The label probability bounds of a certificate from the confidence sequences: ``(lower, upper)`` float64
    shaped like ``counts`` ``(N, c)`` (or ``(c,)``), each label's ends at level ``alpha / B`` (B the bounds the
    certificate reads: ``bounds_read``, one per row or a scalar, default c, as in
    :func:`multiguard.certificates.bounds.label_probability_bounds`); ``n`` a scalar or one per row.

    Guarantee: fix L before sampling. With probability at least ``1 - alpha``, at every n at once,
    ``lower_i <= p_i`` for every i in L and ``upper_j >= p_j`` for every j outside L (each of the B one-sided
    ends fails at some n with probability at most ``alpha / B``, :func:`betting_confidence_sequence`; union over
    the B labels). So the bounds read at any stopping time, and every certificate from them, at every radius,
    hold with probability at least ``1 - alpha``: no share of alpha is spent on looks.
    """
    array2d, single, sizes, read = _checked(counts, n, bounds_read)
    alpha = check_alpha(alpha)
    lower, upper = ends_per_distinct_count(array2d, sizes, read, alpha, betting_confidence_sequence)
    return (lower[0], upper[0]) if single else (lower, upper)


def betting_cp_label_probability_bounds(counts: object, n: object, alpha: float, last: int, share: float | None,
                                        bounds_read: object = None) -> tuple[np.ndarray, np.ndarray]:
    """Betting at every look plus one Clopper-Pearson bound at the last look: ``(lower, upper)`` float64 shaped
    like ``counts`` ``(N, c)`` (or ``(c,)``), ``n`` a scalar or one per row (each at most ``last``).

    Each of the B one-sided bounds the certificate reads (``bounds_read``, as in
    :func:`betting_label_probability_bounds`) has level ``alpha_b = alpha / B``, split in two: ``(1 - w) alpha_b``
    for the end of the label's confidence sequence (:func:`betting_confidence_sequence`, valid at every n) and
    ``w alpha_b`` for the one-sided fixed-n Clopper-Pearson bound on the first ``last`` samples, ``last`` the
    most samples the procedure allows (the last look of its schedule, fixed before sampling). w is ``share``
    (in (0, 1]; ``None``: :data:`DEFAULT_CP_SHARE`). A row at ``n < last`` reads the sequence's end; a row at
    ``n = last`` reads the better of the two (the larger lower end, the smaller upper end). At ``w = 1`` the
    sequence gets no alpha and reads [0, 1].

    Guarantee: fix L before sampling. With probability at least ``1 - alpha``, at every n up to ``last`` at once,
    ``lower_i <= p_i`` for every i in L and ``upper_j >= p_j`` for every j outside L; so under any stopping rule.
    Proof, for one bound (a lower one; an upper one is the same): let E_CS be the event that the sequence's end
    at level ``(1 - w) alpha_b`` passes p at some n (probability at most ``(1 - w) alpha_b``, Ville's inequality)
    and E_CP the event that the Clopper-Pearson bound at level ``w alpha_b`` computed from the first ``last``
    samples of the label's sample sequence passes p (at most ``w alpha_b``: a fixed-n bound at a fixed n). E_CP
    is an event of the sample sequence, defined whether or not a procedure reaches ``last``. The bound read at a
    stopping time tau fails only if the sequence's end fails at tau (in E_CS) or tau = ``last`` and the
    Clopper-Pearson end fails (in E_CP): probability at most ``(1 - w) alpha_b + w alpha_b = alpha_b``, whatever
    tau. The union over the B bounds gives ``alpha``.
    """
    w = check_cp_share(share)
    array2d, single, sizes, read = _checked(counts, n, bounds_read)
    lower, upper = with_last_look_clopper_pearson(betting_label_probability_bounds, array2d, sizes, read,
                                                  check_alpha(alpha), last, w)
    return (lower[0], upper[0]) if single else (lower, upper)


SequenceBounds = Callable[[np.ndarray, np.ndarray, float, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""A family's label probability bounds from its confidence sequences alone: ``(counts (N, c), n (N,), alpha,
bounds_read (N,)) -> (lower, upper)``, each end at ``alpha / B`` and valid at every n."""


def with_last_look_clopper_pearson(sequence_bounds: SequenceBounds, array2d: np.ndarray, sizes: np.ndarray,
                                   read: np.ndarray, alpha: float, last: int, w: float
                                   ) -> tuple[np.ndarray, np.ndarray]:
    """The ``-cp`` construction of :func:`betting_cp_label_probability_bounds` for any family of sequences:
    ``sequence_bounds`` at ``(1 - w) alpha`` at every n (``[0, 1]`` at ``w = 1``) and, at ``n = last``, the better
    of them and the fixed-n Clopper-Pearson bound at ``w alpha / B``. ``array2d`` ``(N, c)`` counts, ``sizes``
    ``(N,)`` (each at most ``last``), ``read`` ``(N,)`` the bounds read, ``w`` a checked share in (0, 1]; returns
    ``(lower, upper)`` ``(N, c)``. The proof is :func:`betting_cp_label_probability_bounds`'s, whatever the
    sequences, as long as each end of theirs fails at some n with probability at most its level."""
    from multiguard.certificates.bounds import clopper_pearson

    if (sizes > last).any():
        raise ValueError(f"n must be at most the last look {last}, got {int(sizes.max())}")
    if w < 1.0:
        lower, upper = sequence_bounds(array2d, sizes, alpha * (1.0 - w), read)
    else:
        lower, upper = np.zeros(array2d.shape), np.ones(array2d.shape)
    for b in np.unique(read[sizes == last]):
        rows = (sizes == last) & (read == b)
        cp_lower, cp_upper = clopper_pearson(array2d[rows], last, alpha * w / float(b))
        lower[rows] = np.maximum(lower[rows], cp_lower)
        upper[rows] = np.minimum(upper[rows], cp_upper)
    return lower, upper


def ends_per_distinct_count(array2d: np.ndarray, sizes: np.ndarray, read: np.ndarray, alpha: float,
                            sequence: Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
                            ) -> tuple[np.ndarray, np.ndarray]:
    """Both ends of a family's sequences for every count of ``array2d`` ``(N, c)`` (``sizes`` ``(N,)`` samples,
    ``read`` ``(N,)`` bounds read), each at level ``alpha / B``: ``sequence(counts, n, level) -> (lower, upper)``
    (vectorised) is called once on the distinct ``(count, n, B)`` (a look of many inputs holds few distinct
    counts) and its ends spread back to ``(N, c)``."""
    whole = array2d.astype(np.int64)
    top_n, top_b = int(sizes.max()) + 1, int(read.max()) + 1
    keys = (whole * top_n + sizes[:, None]) * top_b + read[:, None]  # one integer per (count, n, B)
    unique, inverse = np.unique(keys, return_inverse=True)
    b, rest = unique % top_b, unique // top_b
    low, up = sequence(rest // top_n, rest % top_n, alpha / b)
    return low[inverse.ravel()].reshape(array2d.shape), up[inverse.ravel()].reshape(array2d.shape)


def check_cp_share(share: object) -> float:
    """``share`` as the w of :func:`betting_cp_label_probability_bounds`: a number in (0, 1], ``None`` for
    :data:`DEFAULT_CP_SHARE`; anything else (J spending weights among them) is a ``ValueError`` naming
    ``spending``, the setting that carries it."""
    if share is None:
        return DEFAULT_CP_SHARE
    value = float(share) if np.ndim(share) == 0 and not isinstance(share, (str, bool)) else float("nan")
    if not 0.0 < value <= 1.0:
        raise ValueError(f"spending must be a share in (0, 1] (of alpha, for the last look's Clopper-Pearson bound) "
                         f"or None with bounds betting-cp, got {share!r}")
    return value


def _checked(counts: object, n: object, bounds_read: object) -> tuple[np.ndarray, bool, np.ndarray, np.ndarray]:
    """``counts`` as float64 ``(N, c)`` (and whether it was one row), ``n`` as ``(N,)`` integers and the bounds
    read ``(N,)``; the counts whole numbers in [0, n]."""
    from multiguard.certificates import bounds as _bounds

    array2d, single = _bounds._as_float_matrix(counts, "counts")
    sizes = np.asarray(n)
    if sizes.dtype.kind not in "iu" or sizes.ndim > 1 or (sizes.ndim == 1 and sizes.shape[0] != array2d.shape[0]):
        raise ValueError(f"n must be an integer or ({array2d.shape[0]},) integers, got {n!r}")
    sizes = np.broadcast_to(sizes, (array2d.shape[0],))
    read = _bounds._as_bounds_read(bounds_read, array2d.shape)
    if ((array2d < 0) | (array2d > sizes[:, None]) | (array2d != np.round(array2d))).any():
        raise ValueError("counts must be whole numbers in [0, n]")
    return array2d, single, sizes, read
