"""The thresholded certificate: per-label decisions, variable-size predicted sets, certified precision and recall.

Pure NumPy/SciPy; no torch. Shapes: ``on_counts``, ``lower``, ``upper``, ``on_radius``, ``off_radius`` and
``labels`` are ``(N, c)`` (a single ``(c,)`` row gives results without the batch axis); a radius grid is
``(R,)`` (a scalar gives results without the radius axis).

The classifier (docs/certificate.md, "The thresholded certificate"):

* Base decision: label i is *on* for an input z when the model's score for i exceeds its threshold,
  ``s_i(z) > tau_i``. The thresholds belong to the base classifier, like sigma and the sampling mode.
* Smoothed decision: ``p_i(x) = Pr(s_i(x + eps) > tau_i)``, ``eps ~ N(0, sigma^2 I)``; the smoothed classifier
  predicts the set ``{i : p_i(x) > q}`` (``q = 1/2`` by default; a smaller q trades precision for recall).

The certificate, per label, from bounds ``lower_i <= p_i(x) <= upper_i``:

* certified on within ``r_on = sigma (Phi^-1(lower_i) - Phi^-1(q))``: ``p_i(x + delta) > q`` for every
  ``||delta||_2 < r_on``;
* certified off within ``r_off = sigma (Phi^-1(q) - Phi^-1(upper_i))``: ``p_i(x + delta) < q`` for every
  ``||delta||_2 < r_off``;
* undecided otherwise (the smoothed classifier abstains on that label: the certificate promises nothing).

Both follow from the fact that ``delta -> Phi^-1(p_i(x + delta))`` is ``1 / sigma``-Lipschitz for any function
with values in [0, 1] (Salman et al. 2019, Lemma 2; Cohen et al. 2019, Theorem 1 in its binary form), so
``Phi(Phi^-1(lower_i) - ||delta|| / sigma) <= p_i(x + delta) <= Phi(Phi^-1(upper_i) + ||delta|| / sigma)``.

The radii here are clipped at 0 (0: not certified at any radius), and "certified at R" means radius > R, so a
certificate at R covers every perturbation of norm <= R. At radius R the labels certified on form ``A_R`` and
the labels not certified off form ``B_R``; every set the smoothed classifier predicts at ``x + delta``,
``||delta|| <= R``, lies between them: ``A_R`` inside it, it inside ``B_R``. :func:`set_metric_bounds` turns
that into certified precision, recall, F1 and Hamming accuracy (the worst set between ``A_R`` and ``B_R``).

Simultaneity (why both sides at ``alpha / (2c)``): which side of a label the certificate reads (on or off)
is decided by the same counts that bound it, so a one-sided bound per label at ``alpha / c`` would not do:
for a label with ``p_i`` near q either side may be read, and each can fail. :func:`on_probability_bounds`
gives every label both one-sided Clopper-Pearson bounds at ``alpha / (2c)`` each (a two-sided interval at
``1 - alpha / c``): by the union bound over the 2c one-sided events, all ``lower_i <= p_i <= upper_i`` hold
together with probability at least ``1 - alpha``, and then every statement the certificate makes, for every
label, every radius and every q, is true. The alternative (separate selection samples choose each label's side,
then one bound at ``alpha / c``, as Cohen et al. do for a top-1 class) spends samples on the selection, cannot
share one forward pass with the top-k' counts, and gains little: at n = 1000, c = 10, alpha = 0.001 a label on
in all 1000 samples gets ``r_on = 2.332 sigma`` here against ``2.359 sigma`` (Clopper-Pearson at 5e-5 against
1e-4), on in 900 of them ``1.073 sigma`` against ``1.082 sigma``: about 1 %.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import special

from multiguard.certificates.bounds import label_probability_bounds
from multiguard.certificates.sequential import (
    DEFAULT_MARGIN,
    _as_looks,
    _as_row_sizes,
    _futility_gains,
    anytime_label_probability_bounds,
    futility_rule,
    spending_weights,
)
from multiguard.common.validation import check_alpha, check_float, check_positive, invalid

__all__ = [
    "DEFAULT_Q",
    "ThresholdedCertificate",
    "ThresholdedMetrics",
    "ThresholdedStoppingDecision",
    "anytime_on_probability_bounds",
    "certified_f1_thresholds",
    "certified_label_radii",
    "certified_sets",
    "certify_thresholded",
    "f1_best_thresholds",
    "label_status",
    "on_probability_bounds",
    "sequential_thresholded_certification",
    "set_metric_bounds",
    "thresholded_metrics",
    "thresholded_stopping_rule",
]

DEFAULT_Q = 0.5
"""The smoothed classifier's default cut: a label is predicted when it is on in more than half the noise."""

ON, UNDECIDED, OFF = 1, 0, -1
"""Values of :func:`label_status`."""


# --------------------------------------------------------------------------------------------- validation


def _as_matrix(value: object, name: str, *, low: float | None = None, high: float | None = None
               ) -> tuple[np.ndarray, bool]:
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise invalid(name, "a numeric array", f"dtype {array.dtype}")
    array = array.astype(np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise invalid(name, "an array of shape (N, c) or (c,) with c >= 1", f"shape {array.shape}")
    if np.isnan(array).any():
        raise invalid(name, "free of NaN", "an array containing NaN")
    if (low is not None and (array < low).any()) or (high is not None and (array > high).any()):
        raise invalid(name, f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}",
                      f"values from {array.min():g} to {array.max():g}")
    return np.atleast_2d(array), array.ndim == 1


def _as_mask(value: object, name: str, shape: tuple[int, ...]) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype != np.bool_:
        if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
            raise invalid(name, "a boolean mask (True/False or 0/1)", f"dtype {array.dtype}")
        array = array.astype(bool)
    if array.shape != shape:
        raise invalid(name, f"a mask of shape {shape}", f"shape {array.shape}")
    return array


def _as_radius(radius: object) -> tuple[np.ndarray, bool]:
    array = np.asarray(radius, dtype=np.float64)
    if array.ndim > 1 or np.isnan(array).any() or (array < 0).any():
        raise invalid("radius", "a number >= 0 or a 1-D array of them", radius)
    return np.atleast_1d(array), array.ndim == 0


def _check_q(q: object) -> float:
    return check_float(q, "q", 0.0, 1.0, low_open=True, high_open=True)


# ------------------------------------------------------------------------------------------------ bounds


def on_probability_bounds(on_counts: object, n: int, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Bounds on every label's on-probability that hold for all labels at once with probability >= 1 - alpha.

    ``on_counts[..., i]`` is how many of ``n`` noisy samples had label i on (score above its threshold), a
    Binomial(n, p_i) count. Returns float64 ``(lower, upper)`` shaped like ``on_counts``: the one-sided
    Clopper-Pearson bounds at level ``alpha / (2c)`` each (lower 0 where the count is 0, upper 1 where it is n).

    Guarantee: with probability at least ``1 - alpha`` over the samples, ``lower_i <= p_i <= upper_i`` for
    every label i at once (union bound over 2c one-sided events of probability ``alpha / (2c)`` each). Both
    sides are needed because the certificate reads a side chosen from these same counts (module docstring).
    """
    alpha = check_alpha(alpha)
    return label_probability_bounds(on_counts, n, alpha / 2.0)


def anytime_on_probability_bounds(on_counts: object, n: object, alpha: float, looks: object,
                                  spending: object = None, bounds: str = "union") -> tuple[np.ndarray, np.ndarray]:
    """:func:`on_probability_bounds` valid at every look of a fixed schedule, so under any stopping rule.

    ``n`` (a scalar or one per row) is the look each row's counts were taken at, one of ``looks`` (J sizes).
    ``spending`` says how alpha is spent over the looks (:func:`multiguard.certificates.sequential.spending_weights`:
    ``None`` for equal shares, a share of alpha at the last look, or J weights summing to at most 1); a
    sequential run passes the looks and spending its stopping rule used. At look j both one-sided bounds are at
    level ``alpha w_j / (2c)`` (``alpha / (2 c J)`` with equal shares): with probability at least
    ``1 - alpha sum_j w_j >= 1 - alpha``, at every look at once, ``lower_i <= p_i <= upper_i`` for every label
    (union bound over the 2c events of each look, and over the looks), so the bounds read at any data-dependent
    stopping look hold with that probability. ``bounds="betting"``: both ends of each label's beta-binomial
    mixture confidence sequence at ``alpha / (2c)`` (:mod:`multiguard.certificates.betting`), valid at every n,
    so at every look at once with probability at least ``1 - alpha``; ``spending`` is not read. ``"betting-cp"``:
    those sequences at ``(1 - w) alpha / (2c)`` and at the last look the better of them and Clopper-Pearson at
    ``w alpha / (2c)`` (w = ``spending``; :func:`multiguard.certificates.betting.betting_cp_label_probability_bounds`);
    ``"tuned"``, ``"tuned-cp"``: the same with :mod:`multiguard.certificates.tuned`'s sequences (any name of
    :data:`multiguard.certificates.sequential.BOUNDS`).
    """
    alpha = check_alpha(alpha)
    return anytime_label_probability_bounds(on_counts, n, alpha / 2.0, looks, spending, bounds=bounds)


# ------------------------------------------------------------------------------------------- certificate


def certified_label_radii(lower: object, upper: object, *, sigma: float, q: float = DEFAULT_Q
                          ) -> tuple[np.ndarray, np.ndarray]:
    """Per-label certified-on and certified-off radii from on-probability bounds: float64 ``(N, c)`` each.

    ``on_radius = max(0, sigma (Phi^-1(lower) - Phi^-1(q)))`` and ``off_radius = max(0, sigma (Phi^-1(q) -
    Phi^-1(upper)))``; ``Phi^-1(1) = inf`` and ``Phi^-1(0) = -inf`` give infinite radii at the edges
    (``scipy.special.ndtri``), never NaN. If the bounds hold, label i is in the smoothed set at every
    ``x + delta`` with ``||delta|| < on_radius[i]`` and out of it at every one with ``||delta|| < off_radius[i]``.
    At most one of the two is positive (they need ``lower > q`` and ``upper < q``).
    """
    lower_arr, single = _as_matrix(lower, "lower", low=0.0, high=1.0)
    upper_arr, _ = _as_matrix(upper, "upper", low=0.0, high=1.0)
    if upper_arr.shape != lower_arr.shape:
        raise invalid("upper", f"an array of the shape of lower {lower_arr.shape}", f"shape {upper_arr.shape}")
    if (lower_arr > upper_arr).any():
        raise invalid("lower", "<= upper for every label", "a lower bound above its upper bound")
    sigma = check_positive(sigma, "sigma")
    z_q = float(special.ndtri(_check_q(q)))
    on, off = _on_radius(lower_arr, sigma, z_q), _off_radius(upper_arr, sigma, z_q)
    return (on[0], off[0]) if single else (on, off)


def _on_radius(lower: np.ndarray, sigma: float, z_q: float) -> np.ndarray:
    on = sigma * (special.ndtri(lower) - z_q)
    return np.where(on > 0, on, 0.0)  # also -inf (lower = 0) -> 0


def _off_radius(upper: np.ndarray, sigma: float, z_q: float) -> np.ndarray:
    off = sigma * (z_q - special.ndtri(upper))
    return np.where(off > 0, off, 0.0)


def _radii_pair(on_radius: object, off_radius: object) -> tuple[np.ndarray, np.ndarray, bool]:
    on, single = _as_matrix(on_radius, "on_radius", low=0.0)
    off, _ = _as_matrix(off_radius, "off_radius", low=0.0)
    if off.shape != on.shape:
        raise invalid("off_radius", f"an array of the shape of on_radius {on.shape}", f"shape {off.shape}")
    if ((on > 0) & (off > 0)).any():
        raise invalid("on_radius", "zero wherever off_radius is positive (a label is on or off, not both)",
                      "a label certified both on and off")
    return on, off, single


def _shape_output(array: np.ndarray, single: bool, scalar: bool) -> np.ndarray:
    """``array`` is ``(N, R, ...)``: drop the radius axis for a scalar radius and the batch axis for one row."""
    if scalar:
        array = array[:, 0]
    return array[0] if single else array


def certified_sets(on_radius: object, off_radius: object, radius: object) -> tuple[np.ndarray, np.ndarray]:
    """``(certified_on, possibly_on)``: boolean ``(N, R, c)`` masks of A_R (on_radius > R) and B_R (not
    off_radius > R). ``A_R`` is inside ``B_R``; every set the smoothed classifier predicts within radius R lies
    between them (if the bounds behind the radii hold)."""
    on, off, single = _radii_pair(on_radius, off_radius)
    radii, scalar = _as_radius(radius)
    certified_on = on[:, None, :] > radii[None, :, None]
    possibly_on = ~(off[:, None, :] > radii[None, :, None])
    return _shape_output(certified_on, single, scalar), _shape_output(possibly_on, single, scalar)


def label_status(on_radius: object, off_radius: object, radius: object = 0.0) -> np.ndarray:
    """int8 ``(N, R, c)``: ``ON`` (1) certified on at R, ``OFF`` (-1) certified off at R, ``UNDECIDED`` (0)."""
    certified_on, possibly_on = certified_sets(on_radius, off_radius, radius)
    return np.where(certified_on, ON, np.where(possibly_on, UNDECIDED, OFF)).astype(np.int8)


# ----------------------------------------------------------------------------------------------- metrics


def set_metric_bounds(certified_on: object, possibly_on: object, labels: object) -> dict[str, np.ndarray]:
    """Certified precision, recall, F1 and Hamming accuracy: the least each takes over every predicted set S
    with ``certified_on <= S <= possibly_on`` (as masks), against the true labels Y.

    ``certified_on`` and ``possibly_on`` are boolean ``(N, ..., c)`` (e.g. ``(N, R, c)`` from
    :func:`certified_sets`), ``labels`` ``(N, c)``. Returns float64 arrays of shape ``(N, ...)`` under the keys
    ``precision``, ``recall``, ``f1``, ``hamming``.

    Definitions, for one S and Y: precision ``|S & Y| / |S|``, recall ``|S & Y| / |Y|``, F1
    ``2 |S & Y| / (|S| + |Y|)``, Hamming accuracy ``1 - |S ^ Y| / c``. Empty-set convention: a ratio whose
    denominator is 0 is 1 when S and Y are both empty (the prediction is exactly right) and 0 otherwise (an
    empty prediction has precision 0 on an input with labels; any prediction has recall 0 on one without).

    The worst sets, with ``A = certified_on``, ``U = possibly_on - A`` (the undecided labels): recall is least
    at ``S = A``; precision and F1 at ``S = A + (U - Y)`` (every undecided false label in, every undecided
    true one out: adding a true label never lowers either, adding a false one never raises them); Hamming
    accuracy at ``S = A + (U - Y)`` too (every undecided label wrong).
    """
    a = np.asarray(certified_on)
    b = np.asarray(possibly_on)
    if a.dtype != np.bool_ or b.dtype != np.bool_ or a.shape != b.shape or a.ndim < 2:
        raise invalid("certified_on", "a boolean array of shape (N, ..., c) matching possibly_on",
                      f"{a.dtype} {a.shape} and {b.dtype} {b.shape}")
    if (a & ~b).any():
        raise invalid("certified_on", "inside possibly_on", "a label certified on but not possibly on")
    y = _as_mask(labels, "labels", (a.shape[0], a.shape[-1]))
    y = y.reshape((a.shape[0],) + (1,) * (a.ndim - 2) + (a.shape[-1],))
    c = a.shape[-1]
    true_positives = (a & y).sum(axis=-1).astype(np.float64)
    worst_size = (a | (b & ~y)).sum(axis=-1).astype(np.float64)  # |A + (U - Y)|
    size_b = b.sum(axis=-1)
    d = np.broadcast_to(y.sum(axis=-1), true_positives.shape).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(worst_size > 0, true_positives / worst_size, np.where(d == 0, 1.0, 0.0))
        recall = np.where(d > 0, true_positives / d, np.where(size_b == 0, 1.0, 0.0))
        f1 = np.where(worst_size + d > 0, 2.0 * true_positives / (worst_size + d), 1.0)
    wrong = (a & ~y).sum(axis=-1) + (b & ~a).sum(axis=-1) + (y & ~b).sum(axis=-1)
    hamming = 1.0 - wrong / c
    # worst_size == 0 with d == 0: A, U - Y and Y are empty, so B is empty and S = Y = {} is the only choice
    # (precision 1). With d > 0 it means A is empty, and S = A = {} gives precision 0.
    return {"precision": precision, "recall": recall, "f1": f1, "hamming": hamming}


@dataclass(frozen=True)
class ThresholdedMetrics:
    """Certified precision, recall, F1 and Hamming accuracy of the thresholded certificate, mean over inputs.

    Each field is float64 ``(R,)`` (a float for a scalar radius). ``certified_on``, ``undecided``: the mean
    number of labels per input certified on and undecided at R. ``num_empty``: inputs without true labels
    (they count by the empty-set convention of :func:`set_metric_bounds`).
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    hamming: np.ndarray
    certified_on: np.ndarray
    undecided: np.ndarray
    num_inputs: int
    num_empty: int


def thresholded_metrics(on_radius: object, off_radius: object, labels: object, radius: object
                        ) -> ThresholdedMetrics:
    """Mean certified metrics over inputs at each radius (:func:`set_metric_bounds` on :func:`certified_sets`).

    ``on_radius``, ``off_radius``, ``labels``: ``(N, c)``; ``radius``: a number or ``(R,)``. Each input's
    figure holds with the probability its bounds hold (at least ``1 - alpha``); the mean is over inputs, as
    MultiGuard's top-k metrics are.
    """
    on, off, _ = _radii_pair(on_radius, off_radius)
    radii, scalar = _as_radius(radius)
    if on.shape[0] == 0:
        raise invalid("on_radius", "at least one input", "no rows")
    mask = _as_mask(np.atleast_2d(np.asarray(labels)), "labels", on.shape)
    certified_on, possibly_on = certified_sets(on, off, radii)
    bounds = set_metric_bounds(certified_on, possibly_on, mask)

    def mean(values: np.ndarray) -> np.ndarray:
        result = values.mean(axis=0)
        return result[0] if scalar else result

    return ThresholdedMetrics(
        precision=mean(bounds["precision"]),
        recall=mean(bounds["recall"]),
        f1=mean(bounds["f1"]),
        hamming=mean(bounds["hamming"]),
        certified_on=mean(certified_on.sum(axis=-1).astype(np.float64)),
        undecided=mean((possibly_on & ~certified_on).sum(axis=-1).astype(np.float64)),
        num_inputs=int(on.shape[0]),
        num_empty=int((mask.sum(axis=1) == 0).sum()),
    )


@dataclass(frozen=True)
class ThresholdedCertificate:
    """The thresholded certificate of N inputs (from :func:`certify_thresholded`).

    ``on_counts`` int64 ``(N, c)``; ``n`` the samples behind them (an int, or int64 ``(N,)`` after sequential
    stopping); ``lower``, ``upper``, ``on_radius``, ``off_radius`` float64 ``(N, c)``; ``sigma``, ``q``,
    ``alpha``. With probability at least ``1 - alpha`` per input, every label's statement holds: in the
    smoothed set within ``on_radius``, out of it within ``off_radius``.
    """

    on_counts: np.ndarray
    n: int | np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    on_radius: np.ndarray
    off_radius: np.ndarray
    sigma: float
    q: float
    alpha: float

    def sets(self, radius: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(A_R, B_R)`` boolean masks, see :func:`certified_sets`."""
        return certified_sets(self.on_radius, self.off_radius, radius)

    def status(self, radius: float | np.ndarray = 0.0) -> np.ndarray:
        """int8 ON / UNDECIDED / OFF per label, see :func:`label_status`."""
        return label_status(self.on_radius, self.off_radius, radius)

    def metrics(self, labels: object, radius: float | np.ndarray) -> ThresholdedMetrics:
        """Mean certified precision, recall, F1, Hamming accuracy against ``labels`` ``(N, c)``."""
        return thresholded_metrics(self.on_radius, self.off_radius, labels, radius)


def certify_thresholded(on_counts: object, n: object, *, alpha: float, sigma: float, q: float = DEFAULT_Q,
                        looks: object = None, spending: object = None, bounds: str = "union"
                        ) -> ThresholdedCertificate:
    """Bounds (:func:`on_probability_bounds`) and per-label radii (:func:`certified_label_radii`) in one call.

    With ``looks`` (the schedule of a sequential procedure), ``n`` is each row's look (a scalar or ``(N,)``) and
    the bounds are the anytime-valid ones (:func:`anytime_on_probability_bounds`), spending alpha over the looks
    by ``spending`` (``None``: equal shares). Pass the looks and spending of the stopping rule that chose each
    row's look, so the bounds are those valid at its stopping time; ``spending`` without ``looks`` is refused.
    ``bounds``: a name of :data:`multiguard.certificates.sequential.BOUNDS` (``"union"``, ``"betting"``, ...), as
    the rule read them
    (:func:`anytime_on_probability_bounds`)."""
    if looks is None:
        if spending is not None:
            raise invalid("spending", "None for a fixed-n certificate (it spends alpha over looks)", spending)
        lower, upper = on_probability_bounds(on_counts, n, alpha)
    else:
        lower, upper = anytime_on_probability_bounds(on_counts, n, alpha, looks, spending, bounds)
        n = np.broadcast_to(np.asarray(n, dtype=np.int64), np.atleast_2d(np.asarray(on_counts)).shape[:1]).copy()
    on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
    return ThresholdedCertificate(
        on_counts=np.asarray(on_counts).astype(np.int64), n=n, lower=lower, upper=upper, on_radius=on,
        off_radius=off, sigma=float(sigma), q=float(q), alpha=float(alpha),
    )


# ------------------------------------------------------------------------------------------ thresholds


def f1_best_thresholds(scores: object, labels: object, *, default: float = 0.0) -> np.ndarray:
    """Per-label thresholds that maximise each label's F1 on held-out scores: float64 ``(c,)``.

    ``scores`` float ``(M, c)`` (e.g. the model's logits on noisy validation images, disjoint from the inputs
    to be certified), ``labels`` ``(M, c)`` their true labels. For each label, among the cuts between
    consecutive distinct scores, the one with the highest F1 of "score > tau" (ties: the cut nearest
    ``default``); a label with no positive example keeps ``default``. The cut between scores a < b is
    ``(a + b) / 2``, so the rule is the same for ">" and ">=".
    """
    score_arr, _ = _as_matrix(scores, "scores")
    if not np.isfinite(score_arr).all():
        raise invalid("scores", "finite", "an array with inf")
    mask = _as_mask(np.atleast_2d(np.asarray(labels)), "labels", score_arr.shape)
    default = check_float(default, "default")
    thresholds = np.full(score_arr.shape[1], default)
    for label in range(score_arr.shape[1]):
        positive = mask[:, label]
        if not positive.any():
            continue
        values = np.unique(score_arr[:, label])
        cuts = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2.0])
        order = np.argsort(score_arr[:, label], kind="stable")
        sorted_scores = score_arr[order, label]
        sorted_pos = positive[order].astype(np.int64)
        # predicted on = score > cut: the samples from searchsorted(cut, 'right') onwards
        start = np.searchsorted(sorted_scores, cuts, side="right")
        pos_after = np.concatenate([np.cumsum(sorted_pos[::-1])[::-1], [0]])
        true_positives = pos_after[start]
        predicted = sorted_scores.size - start
        f1 = 2.0 * true_positives / (predicted + positive.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        thresholds[label] = cuts[best[np.argmin(np.abs(cuts[best] - default))]]
    return thresholds


def certified_f1_thresholds(candidates: object, on_counts: object, n: int, labels: object, *, alpha: float,
                            sigma: float, q: float = DEFAULT_Q, radii: object = (0.0, 0.25, 0.5, 1.0),
                            default: float = 0.0) -> np.ndarray:
    """Per-label thresholds that maximise each label's certified F1 on held-out inputs: float64 ``(c,)``.

    ``candidates`` float ``(G, c)``: G candidate thresholds per label; ``on_counts`` int ``(M, G, c)``: for each
    of M held-out inputs (disjoint from the inputs to be certified) and each candidate, how many of its n noisy
    samples had the label's score above that candidate; ``labels`` ``(M, c)`` their true labels. For label i
    and candidate g the certificate is computed as it will be (bounds at ``alpha / (2c)``, q, sigma); at each
    radius R of ``radii`` the label's certified F1 over the M inputs is ``2 TP / (2 TP + FP + FN)`` with TP the
    inputs where i is true and certified on, FP those where it is false and not certified off, FN those where it
    is true and not certified on (the worst case of every undecided label, as :func:`set_metric_bounds`
    counts it). The chosen candidate maximises the sum over ``radii``; ties go to the candidate nearest
    ``default``; a label without a positive example keeps ``default``.
    """
    cand, _ = _as_matrix(candidates, "candidates")
    counts = np.asarray(on_counts)
    if counts.ndim != 3 or counts.shape[1:] != cand.shape:
        raise invalid("on_counts", f"an array of shape (M, G, c) = (M, {cand.shape[0]}, {cand.shape[1]})",
                      f"shape {counts.shape}")
    c = cand.shape[1]
    mask = _as_mask(np.atleast_2d(np.asarray(labels)), "labels", (counts.shape[0], c))
    grid, _ = _as_radius(radii)
    default = check_float(default, "default")
    alpha = check_alpha(alpha)
    # Bounds at the certificate's level alpha / (2c), whatever the shape the counts are passed in.
    lower, upper = label_probability_bounds(counts.reshape(-1, c), n, alpha / 2.0)
    on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
    on, off = on.reshape(counts.shape), off.reshape(counts.shape)
    truth = mask[:, None, :]
    score = np.zeros(cand.shape)
    for radius in grid:
        certified_on, possibly_on = on > radius, ~(off > radius)
        tp = (certified_on & truth).sum(axis=0)
        fp = (possibly_on & ~truth).sum(axis=0)
        fn = (~certified_on & truth).sum(axis=0)
        score += np.where(tp > 0, 2.0 * tp / np.maximum(2 * tp + fp + fn, 1), 0.0)
    thresholds = np.full(c, default)
    for label in range(c):
        if not mask[:, label].any():
            continue
        best = np.flatnonzero(score[:, label] >= score[:, label].max() - 1e-12)
        thresholds[label] = cand[best[np.argmin(np.abs(cand[best, label] - default))], label]
    return thresholds


# ------------------------------------------------------------------------------ sequential certification


@dataclass(frozen=True)
class ThresholdedStoppingDecision:
    """The thresholded stopping rule's verdict for N inputs at their current look: ``stop`` bool ``(N,)``;
    ``decided`` int64 ``(N,)`` labels certified on or off at R now; ``decidable`` int64 ``(N,)`` labels some
    later look could still decide (an upper bound, under the futility rule)."""

    stop: np.ndarray
    decided: np.ndarray
    decidable: np.ndarray


def thresholded_stopping_rule(on_counts: object, n: object, *, looks: object, alpha: float, sigma: float,
                              q: float = DEFAULT_Q, radius: float, futility: str = "remaining",
                              spending: object = None, margin: float = DEFAULT_MARGIN, bounds: str = "union"
                              ) -> ThresholdedStoppingDecision:
    """Should sampling stop for each input, given its on-counts at look ``n`` and a target radius R?

    An input stops when every label is decided at R (certified on or off, from
    :func:`anytime_on_probability_bounds` at this look), when no undecided label can be decided at the last look
    by the continuation the ``futility`` rule considers most favourable, or at the last look. The rules are
    those of :data:`multiguard.certificates.sequential.FUTILITY_RULES` (a registered rule works here too): a rule
    returns the
    extra counts it credits to "labels of L" and "labels outside L"; here the first is what a label gets on its
    way to being certified on and the second on its way to being certified off. For an undecided label with
    count n_i after n samples and m left: ``"remaining"``: on in all m (on side), in none (off side);
    ``"plausible"``: ``n_i + ceil(m upper_i)`` and ``n_i + floor(m lower_i)``; ``"projected"``: at the frequency
    seen so far; ``"margin"``: at the one-sided Clopper-Pearson bounds at level ``margin`` of the counts so far.
    Lower bounds grow with the count and upper bounds fall as it shrinks, so ``"remaining"`` never gives up on a
    label a later look could decide. The bounds (now and at the last look) spend alpha over the looks by
    ``spending``, or are the confidence sequences with ``bounds="betting"`` (:func:`anytime_on_probability_bounds`).

    The rule only decides when to stop; the anytime bounds hold at whatever look it stops, so the certificate
    then holds with probability at least ``1 - alpha``, at every radius and for every label.
    """
    futility_rule(futility)
    margin = check_float(margin, "margin", 0.0, 1.0, low_open=True, high_open=True)
    schedule = _as_looks(looks)
    if spending is not None:
        spending_weights(schedule.size, spending)
    counts, _ = _as_matrix(on_counts, "on_counts", low=0.0)
    sizes = _as_row_sizes(n, counts.shape[0], schedule)
    radius_arr, scalar = _as_radius(radius)
    if not scalar:
        raise invalid("radius", "a single number >= 0", radius)
    target = float(radius_arr[0])
    lower, upper = anytime_on_probability_bounds(counts, sizes, alpha, schedule, spending, bounds)
    on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
    decided = (on > target) | (off > target)
    last = int(schedule[-1])
    decidable = decided.copy()
    open_rows = ~decided.all(axis=1) & (sizes < last)
    if open_rows.any():
        remaining = (last - sizes[open_rows])[:, None]
        now = counts[open_rows]
        gain_on, gain_off = _futility_gains(futility, margin, now, sizes[open_rows, None], lower[open_rows],
                                            upper[open_rows], remaining)
        best_on = now + np.clip(gain_on, 0, remaining)
        best_off = now + np.clip(gain_off, 0, remaining)
        on_lower, _ = anytime_on_probability_bounds(best_on, last, alpha, schedule, spending, bounds)
        _, off_upper = anytime_on_probability_bounds(best_off, last, alpha, schedule, spending, bounds)
        z_q = float(special.ndtri(q))
        could_on = _on_radius(on_lower, float(sigma), z_q) > target
        could_off = _off_radius(off_upper, float(sigma), z_q) > target
        decidable[open_rows] |= could_on | could_off
    decided_count = decided.sum(axis=1)
    decidable_count = decidable.sum(axis=1)
    stop = (decided_count == counts.shape[1]) | (decidable_count <= decided_count) | (sizes >= last)
    return ThresholdedStoppingDecision(stop=stop, decided=decided_count.astype(np.int64),
                                       decidable=decidable_count.astype(np.int64))


def sequential_thresholded_certification(nested_on_counts: object, *, looks: object, alpha: float, sigma: float,
                                         q: float = DEFAULT_Q, radius: float, futility: str = "remaining",
                                         spending: object = None, margin: float = DEFAULT_MARGIN,
                                         bounds: str = "union") -> ThresholdedCertificate:
    """Sequential thresholded certification replayed on counts drawn at every look: ``(N, J, c)`` on-counts,
    ``[i, j]`` of the first ``looks[j]`` samples. Each input stops at the first look where
    :func:`thresholded_stopping_rule` (with ``futility``, ``spending``, ``margin``) says so; its certificate
    comes from the anytime bounds there, spending alpha over the looks as the rule did. ``n`` of the result is
    int64 ``(N,)``: the samples each input used."""
    schedule = _as_looks(looks)
    nested = np.asarray(nested_on_counts)
    if nested.ndim != 3 or nested.shape[1] != schedule.size or nested.dtype.kind not in "iu":
        raise invalid("nested_on_counts", f"an integer array of shape (N, J, c) with J = {schedule.size} looks",
                      f"{nested.dtype} of shape {nested.shape}")
    num = nested.shape[0]
    stop_at = np.full(num, schedule.size - 1)
    active = np.arange(num)
    for j, size in enumerate(schedule):
        if active.size == 0:
            break
        decision = thresholded_stopping_rule(nested[active, j], int(size), looks=schedule, alpha=alpha, sigma=sigma,
                                             q=q, radius=radius, futility=futility, spending=spending,
                                             margin=margin, bounds=bounds)
        stop_at[active[decision.stop]] = j
        active = active[~decision.stop]
    counts = nested[np.arange(num), stop_at].astype(np.int64)
    samples = schedule[stop_at]
    lower, upper = anytime_on_probability_bounds(counts, samples, alpha, schedule, spending, bounds)
    on, off = certified_label_radii(lower, upper, sigma=sigma, q=q)
    return ThresholdedCertificate(on_counts=counts, n=samples, lower=lower, upper=upper, on_radius=on,
                                  off_radius=off, sigma=float(sigma), q=float(q), alpha=float(alpha))
