"""Sequential certification: sample each input look by look and stop once its certificate at a target radius
is settled. The schedule of looks, label probability bounds valid at every look (so under any stopping rule),
the stopping rule with its futility rules, and the exact replay of the procedure on stored nested counts. The
fixed-n certificate these build on is :mod:`multiguard.certificates.topk`. No torch; SciPy loads on first use, so that
the command line can list :data:`FUTILITY_RULES` without it.

A futility rule says, for the inputs still open at a look, which outcome of the remaining samples the rule
considers most favourable; :func:`sequential_stopping_rule` stops an input when even that outcome cannot raise
its certified intersection size. A rule is one registered function (its name is then a ``--futility`` choice
and a :class:`multiguard.certificates.stop_rule.StopRule` value)::

    from multiguard.certificates.sequential import FUTILITY_RULES

    @FUTILITY_RULES.register("optimistic-half", help="half the remaining samples favourable")
    def optimistic_half(counts, n, lower, upper, remaining):
        return np.ceil(remaining / 2), 0

It gets, for the open rows, ``counts`` ``(M, c)`` at look ``n`` ``(M, 1)``, their anytime bounds ``lower``,
``upper`` ``(M, c)`` and the ``remaining`` samples ``(M, 1)``, and returns the extra counts credited to the
labels of L and to the labels outside L (arrays broadcasting to ``(M, c)``). A rule with a setting declares
it (``record=FutilityRecord(parameters=("margin",))`` in the registration: it is then called with ``margin=``
gamma, ``--futility-margin`` on the command line). Any rule is sound: it only decides when to stop, and the
bounds read at the stop are anytime-valid.

The looks come from a schedule of :data:`SCHEDULES` (``fine``, the default: about 20 % apart; ``1-2-5``, the
looks of runs written before schedules existed), and alpha is spent over them by :func:`spending_weights`
(the default: three quarters at the last look, the rest in equal shares; ``None``: equal shares, as older
runs): at look j each bound read is at level ``alpha w_j / c``, and the weights sum to at most 1, so the bounds
read at any stopping time hold with probability ``1 - alpha``. The defaults (:data:`DEFAULT_FUTILITY`,
:data:`DEFAULT_SCHEDULE`, :data:`DEFAULT_SPENDING`, :data:`DEFAULT_MARGIN`) are those of
:class:`multiguard.certificates.stop_rule.StopRule`; docs/sequential.md says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from multiguard.certificates.anytime import BOUNDS, DEFAULT_SPENDING, BoundsRecord, bounds_family, spending_weights
from multiguard.common.registry import Registry
from multiguard.common.seeds import NOISE_BLOCK
from multiguard.common.validation import check_alpha, check_choice, check_float, check_int

__all__ = [
    "BOUNDS",
    "DEFAULT_BOUNDS",
    "BoundsRecord",
    "DEFAULT_FUTILITY",
    "DEFAULT_MARGIN",
    "DEFAULT_SCHEDULE",
    "DEFAULT_SPENDING",
    "FINE_MANTISSAS",
    "FUTILITY_RULES",
    "SCHEDULES",
    "FutilityRecord",
    "SequentialCertificate",
    "StoppingDecision",
    "anytime_label_probability_bounds",
    "bounds_family",
    "fine_sample_size_schedule",
    "futility_rule",
    "look_schedule",
    "sample_size_schedule",
    "sample_until_stopped",
    "sequential_certification",
    "sequential_stopping_rule",
    "spending_weights",
]

DEFAULT_FUTILITY = "margin"
"""The futility rule of a sequential run unless another is asked for (docs/sequential.md says why)."""
DEFAULT_SCHEDULE = "fine"
"""The schedule of looks (:data:`SCHEDULES`) unless another is asked for."""
DEFAULT_MARGIN = 0.2
"""gamma of the ``margin`` futility rule unless another is asked for."""
DEFAULT_BOUNDS = "union"
"""The bounds unless others are asked for (docs/sequential.md: ``betting`` did not win the benchmark)."""


@dataclass(frozen=True)
class FutilityRecord:
    """What a futility rule takes besides the counts.

    Attributes:
        parameters: the keyword parameters the rule is called with, by name, among the stopping rule's values
            (``("margin",)``: ``margin=`` gamma, :data:`DEFAULT_MARGIN` unless ``--futility-margin`` says).
    """

    parameters: tuple[str, ...] = ()


FUTILITY_RULES: Registry[Callable[..., tuple[np.ndarray, np.ndarray | int]], FutilityRecord] = Registry(
    "futility rule", argument="--futility", record=FutilityRecord)
"""When :func:`sequential_stopping_rule` gives up on an input (see the module's docstring for how to add one):
no outcome of the remaining samples could raise its certified size (``remaining``), none the samples so far
still make plausible could (``plausible``), or the remaining samples at the frequencies seen so far would not
(``projected``)."""


@FUTILITY_RULES.register("remaining", help="any outcome of the remaining samples (the most samples)")
def _remaining(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray,
               remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
    """Every label of L gets all remaining samples, every label outside L none."""
    return remaining, 0


@FUTILITY_RULES.register("plausible", help="the outcomes the anytime bounds still allow")
def _plausible(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray,
               remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The remaining samples arrive at the upper bound for labels of L and the lower bound outside L."""
    return np.ceil(remaining * upper), np.floor(remaining * lower)


@FUTILITY_RULES.register("projected", help="the remaining samples at the frequencies seen so far (the fewest)")
def _projected(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray,
               remaining: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The remaining samples arrive at the label frequencies seen so far."""
    frequency = counts / n
    return np.ceil(remaining * frequency), np.floor(remaining * frequency)


@FUTILITY_RULES.register("margin", help="the remaining samples at the favourable one-sided Clopper-Pearson bound at "
                         "level gamma (--futility-margin) of the counts so far (the default)",
                         record=FutilityRecord(parameters=("margin",)))
def _margin(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray, remaining: np.ndarray, *,
            margin: float) -> tuple[np.ndarray, np.ndarray]:
    """The remaining samples arrive at the one-sided Clopper-Pearson bound at level ``margin`` (gamma) of the
    counts so far: the upper bound for labels of L, the lower bound outside. gamma near 0 credits implausibly
    good continuations (``plausible`` is gamma = the anytime level), gamma = 1/2 about the frequencies so far
    (``projected``)."""
    from multiguard.certificates.bounds import clopper_pearson

    low, up = clopper_pearson(counts, n, margin)
    return np.ceil(remaining * up), np.floor(remaining * low)


def futility_rule(name: str) -> Callable[..., tuple[np.ndarray, np.ndarray | int]]:
    """The futility rule registered as ``name`` (ValueError naming ``futility`` and the choices otherwise)."""
    return FUTILITY_RULES.get(check_choice(name, "futility", FUTILITY_RULES.names()))


def _futility_gains(name: str, margin: float, *args: np.ndarray) -> tuple[np.ndarray, np.ndarray | int]:
    """Call the futility rule ``name`` with the parameters its record declares (:class:`FutilityRecord`)."""
    entry = FUTILITY_RULES.entry(name)
    values = {"margin": margin}
    return entry.load()(*args, **{key: values[key] for key in entry.record.parameters})


def sample_size_schedule(n: int, first: int = 100) -> np.ndarray:
    """The nested sample sizes at which counts are stored and sequential certification looks: a 1-2-5 series.

    Returns int64 ``(J,)``: ``first, 2 first, 5 first, 10 first, 20 first, ...`` while below ``n``, then ``n``
    itself (so ``sample_size_schedule(1000) = [100, 200, 500, 1000]`` and ``sample_size_schedule(3000) =
    [100, 200, 500, 1000, 2000, 3000]``; ``[n]`` when ``n <= first``). The default ``first`` is the noise
    block (:data:`multiguard.common.seeds.NOISE_BLOCK`), so every look but the last ends on a block boundary.
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


FINE_MANTISSAS = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0)
"""The steps of :func:`fine_sample_size_schedule` within a decade (about 20 % apart)."""


def fine_sample_size_schedule(n: int, block: int = NOISE_BLOCK) -> np.ndarray:
    """Looks about 20 % apart in whole noise blocks: ``m 10^e block`` for the mantissas m of
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


SCHEDULES: Registry[Callable[[int], np.ndarray], None] = Registry("schedule", argument="--schedule")
"""Schedules of looks by name: a function ``n -> int64 (J,)`` of strictly increasing sizes ending at n."""
SCHEDULES.register("1-2-5", sample_size_schedule,
                   help="100, 200, 500, 1000, 2000, ... (the looks of runs written before schedules existed)")
SCHEDULES.register("every-block", lambda n: np.array([*range(NOISE_BLOCK, n, NOISE_BLOCK), n], dtype=np.int64),
                   help="after every noise block: 100, 200, 300, ... (for --bounds betting and betting-cp)")
SCHEDULES.register("fine", fine_sample_size_schedule,
                   help="100, 200, 300, 400, 500, 600, 800, 1000, 1200, 1500, 2000, ... (about 20 %% apart; "
                   "the default)")


def look_schedule(n: int, schedule: str = DEFAULT_SCHEDULE) -> np.ndarray:
    """The looks of the schedule registered as ``schedule`` (:data:`SCHEDULES`) up to ``n``: int64 ``(J,)``."""
    return _as_looks(SCHEDULES.get(check_choice(schedule, "schedule", SCHEDULES.names()))(n))


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
    counts: object, n: object, alpha: float, looks: object, spending: object = None, bounds_read: object = None,
    bounds: str = "union",
) -> tuple[np.ndarray, np.ndarray]:
    """Label probability bounds valid at every look of a fixed schedule, so under any data-dependent stopping.

    ``bounds="betting"``: the confidence sequences of
    :func:`multiguard.certificates.betting.betting_label_probability_bounds` instead (each bound at
    ``alpha / B``, valid at every n; ``spending`` is not read). ``"betting-cp"``: those at ``(1 - w) alpha / B``
    and, at ``looks[-1]``, the better of them and Clopper-Pearson at ``w alpha / B`` (w = ``spending``; ``None``:
    1/2; :func:`multiguard.certificates.betting.betting_cp_label_probability_bounds`, with the proof).
    ``"tuned"`` and ``"tuned-cp"``: the same with the mixture sequences of :mod:`multiguard.certificates.tuned`,
    tuned to the sizes up to ``looks[-1]``. ``bounds`` is a name of :data:`BOUNDS` (a family registered there is
    called with ``(counts (N, c), n (N,), alpha, looks, spending, bounds_read)``). ``"union"`` (the default):

    ``spending`` (:func:`spending_weights`: ``None`` for equal shares, a share of alpha at the last look, or J
    weights summing to at most 1) says how alpha is spent over the looks: at look j each bound is at level
    ``alpha w_j / B`` instead of ``alpha / (B J)``, where B is the number of one-sided bounds the certificate
    reads (``bounds_read``, one per row or a scalar; default c:
    :func:`multiguard.certificates.bounds.multiguard_bounds_read`).
    The proof below holds with ``sum_j B alpha w_j / B = alpha sum_j w_j <= alpha`` in place of ``alpha``.

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

    The confidence sequences are looser than these bounds at the sizes that matter here (docs/sequential.md).
    """
    from multiguard.certificates import bounds as _bounds  # SciPy loads here, on first use
    lows = _as_looks(looks)
    if np.asarray(counts).dtype.kind not in "biuf":
        raise ValueError(f"counts must be numeric, got dtype {np.asarray(counts).dtype}")
    array2d, single = _bounds._as_float_matrix(counts, "counts")
    sizes = _as_row_sizes(n, array2d.shape[0], lows)
    alpha = check_alpha(alpha)
    lower, upper = BOUNDS.get(check_choice(bounds, "bounds", BOUNDS.names()))(array2d, sizes, alpha, lows, spending,
                                                                              bounds_read)
    return (lower[0], upper[0]) if single else (lower, upper)


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
    futility: str = DEFAULT_FUTILITY,
    spending: object = DEFAULT_SPENDING,
    margin: float = DEFAULT_MARGIN,
    bounds: str = DEFAULT_BOUNDS,
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
    - ``"margin"`` (the default): the remaining samples arrive at the favourable one-sided Clopper-Pearson
      bound at level ``margin`` (gamma) of the counts so far: ``n_i + ceil(m U_i)`` for labels of L and
      ``n_j + floor(m L_j)`` outside. gamma tunes between ``plausible`` (gamma = the anytime level) and
      ``projected`` (about gamma = 1/2); 0.2 gives up only inputs that a continuation less likely than about
      one in five would save.

    The bounds (now and at the last look) spend alpha by ``spending`` (:func:`spending_weights`), or are those
    of ``bounds`` (:func:`anytime_label_probability_bounds`): with ``"betting-cp"`` the favourable continuation
    is judged at the last look by the better of the sequences and the last look's Clopper-Pearson bound.

    The rule only decides when to stop: the bounds read at the stop are anytime-valid whatever the rule, so
    the guarantee of :func:`anytime_label_probability_bounds` holds for the certificate at the stop, at every
    radius, not only at R.

    Args:
        counts: ``(N, c)`` counts of each label in the top-k' of the first ``n`` samples.
        n: the current look (a scalar or ``(N,)``), one of ``looks``.
        labels: ``(N, c)`` boolean mask of L, fixed before sampling.
        looks: the schedule of sample sizes (strictly increasing); ``looks[-1]`` is the most samples allowed.
        alpha, k, k_prime, sigma, second_terms: as in :func:`certified_radii`; radius: the target R >= 0.
        futility: a name of :data:`FUTILITY_RULES` (``"margin"``, ``"remaining"``, ``"plausible"``,
            ``"projected"``, as above); margin: gamma, read by the rules that declare it (``"margin"``).
        spending: how alpha is spent over the looks (:func:`spending_weights`).
    """
    futility_rule(futility)
    margin = check_float(margin, "margin", 0.0, 1.0, low_open=True, high_open=True)
    from multiguard.certificates import bounds as _bounds  # SciPy loads here, on first use
    from multiguard.certificates import topk as _topk
    schedule = _as_looks(looks)
    counts_arr, _ = _bounds._as_float_matrix(counts, "counts")
    mask = _bounds._as_label_mask(labels, counts_arr.shape)
    sizes = _as_row_sizes(n, counts_arr.shape[0], schedule)
    radius_arr, scalar = _bounds._as_radius(radius)
    if not scalar:
        raise ValueError(f"radius must be a single number >= 0, got {radius!r}")
    options = dict(k=k, k_prime=k_prime, sigma=sigma, radius=float(radius_arr[0]), second_terms=second_terms)
    lower, upper = anytime_label_probability_bounds(counts_arr, sizes, alpha, schedule, spending, bounds=bounds)
    now = _topk.intersection_size_at(lower, upper, mask, **options)
    target = np.minimum(mask.sum(axis=1), k)
    settled = now >= target
    last = int(schedule[-1])
    best = now.copy()
    open_rows = ~settled & (sizes < last)
    if open_rows.any():
        remaining = (last - sizes[open_rows])[:, None]
        gain_in, gain_out = _futility_gains(futility, margin, counts_arr[open_rows], sizes[open_rows, None],
                                            lower[open_rows], upper[open_rows], remaining)
        favourable = counts_arr[open_rows] + np.where(mask[open_rows], gain_in, gain_out)
        best_lower, best_upper = anytime_label_probability_bounds(favourable, last, alpha, schedule, spending,
                                                                  bounds=bounds)
        best[open_rows] = _topk.intersection_size_at(best_lower, best_upper, mask[open_rows], **options)
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
    futility: str = DEFAULT_FUTILITY,
    spending: object = DEFAULT_SPENDING,
    margin: float = DEFAULT_MARGIN,
    bounds: str = DEFAULT_BOUNDS,
) -> SequentialCertificate:
    """Run sequential certification on counts already drawn at every look: the procedure, replayed exactly.

    ``nested_counts`` is ``(N, J, c)``: ``[i, j]`` counts the first ``looks[j]`` samples of input i (cumulative,
    as :meth:`multiguard.sampling.engine.SamplingEngine.count_nested` and the nested counts of a run give them). Each
    input looks at ``looks[0], looks[1], ...`` and stops at the first look where
    :func:`sequential_stopping_rule` (with ``futility``) says so; the counts after that look are never read.
    Sampling those counts look by look (as ``MultiGuard.certify(..., stop_rule=StopRule(radius=R))`` does) with the same
    seed gives the same result with fewer forward passes.

    Guarantee: for each input, with probability at least ``1 - alpha``, at least e labels of L stay in the
    smoothed top-k at every ``x + delta`` with ``||delta||_2 < radii[e-1]``.
    """
    from multiguard.certificates import bounds as _bounds  # SciPy loads here, on first use
    from multiguard.certificates import topk as _topk
    schedule = _as_looks(looks)
    nested = np.asarray(nested_counts)
    if nested.ndim != 3 or nested.shape[1] != schedule.size:
        raise ValueError(
            f"nested_counts must have shape (N, J, c) with J = {schedule.size} looks, got shape {nested.shape}"
        )
    if nested.dtype.kind not in "iu":
        raise ValueError(f"nested_counts must hold integers, got dtype {nested.dtype}")
    num, _, c = nested.shape
    mask = _bounds._as_label_mask(labels, (num, c))
    stop_at = np.full(num, schedule.size - 1)
    active = np.arange(num)
    for j, size in enumerate(schedule):
        if active.size == 0:
            break
        decision = sequential_stopping_rule(
            nested[active, j], int(size), mask[active], looks=schedule, alpha=alpha, k=k, k_prime=k_prime,
            sigma=sigma, radius=radius, second_terms=second_terms, futility=futility, spending=spending,
            margin=margin, bounds=bounds,
        )
        stop_at[active[decision.stop]] = j
        active = active[~decision.stop]
    counts = nested[np.arange(num), stop_at].astype(np.int64)
    samples = schedule[stop_at]
    lower, upper = anytime_label_probability_bounds(counts, samples, alpha, schedule, spending, bounds=bounds)
    radii = _topk.certified_radii(lower, upper, mask, k=k, k_prime=k_prime, sigma=sigma,
                                    second_terms=second_terms)
    return SequentialCertificate(samples=samples, counts=counts, lower=lower, upper=upper, radii=radii,
                                 looks=schedule)


def sample_until_stopped(
    count: Callable[[np.ndarray, int, int], np.ndarray],
    labels: np.ndarray,
    n: int,
    *,
    num_k: int,
    alpha: float,
    k: int,
    k_prime: int,
    sigma: float,
    radius: float,
    second_terms: bool = True,
    futility: str = DEFAULT_FUTILITY,
    schedule: str = DEFAULT_SCHEDULE,
    spending: object = DEFAULT_SPENDING,
    margin: float = DEFAULT_MARGIN,
    bounds: str = DEFAULT_BOUNDS,
) -> tuple[np.ndarray, np.ndarray]:
    """The sequential procedure driving a sampler: look by look at the looks of ``schedule`` up to n
    (:func:`look_schedule`), sample the inputs still going and stop each where :func:`sequential_stopping_rule`
    says so (with ``futility``, ``spending``, ``margin``).

    ``count(rows, done, size)`` returns int64 ``(len(rows), num_k, c)`` counts of samples ``done..size-1`` of
    the inputs ``rows`` (continuing their sample streams, so the counts are those of one long call);
    ``labels`` is the ``(N, c)`` mask of L. The rule reads the counts of ``k_prime`` (column ``k_prime - 1``).
    Returns ``(counts (N, num_k, c), samples (N,))``: each input's counts at the look it stopped at, and that
    look.
    """
    futility_rule(futility)  # before any sample is drawn
    looks = look_schedule(n, schedule)
    spending_weights(looks.size, spending)  # checked before any sample is drawn
    check_float(margin, "margin", 0.0, 1.0, low_open=True, high_open=True)
    if bounds_family(bounds).spending == "share":
        from multiguard.certificates.betting import check_cp_share
        check_cp_share(spending)
    num_inputs, num_classes = labels.shape
    counts = np.zeros((num_inputs, num_k, num_classes), dtype=np.int64)
    samples = np.full(num_inputs, n, dtype=np.int64)
    active = np.arange(num_inputs)
    done = 0
    for size in looks.tolist():
        if active.size == 0:
            break
        counts[active] += count(active, done, size)
        done = size
        decision = sequential_stopping_rule(
            counts[active, k_prime - 1], size, labels[active], looks=looks, alpha=alpha, k=k, k_prime=k_prime,
            sigma=sigma, radius=radius, second_terms=second_terms, futility=futility, spending=spending,
            margin=margin, bounds=bounds,
        )
        samples[active[decision.stop]] = size
        active = active[~decision.stop]
    return counts, samples
