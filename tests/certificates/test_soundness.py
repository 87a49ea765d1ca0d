"""Soundness of the certificate against ground truth, not against another transcription of the same formulas.

Two kinds of evidence (docs/soundness.md quotes the figures these tests print with ``pytest -s``):

* Exact. Base classifiers with linear scores ``s(z) = W z + b`` on 1-D and 2-D inputs have smoothed label
  probabilities ``p_i(x) = Pr(i in top-k'(W (x + eps) + b))`` that we compute to ~1e-12 for any point: the
  top-k' set is constant on the cells of the arrangement of the lines ``s_i = s_j``, so ``p_i`` is a sum of
  Gaussian measures of intervals (1-D, normal CDFs) or of convex polygons (2-D, Owen's T function). With the
  exact probabilities used as both the lower and the upper bounds, every certified radius ``r_e`` must be a
  radius inside which no perturbation pushes the smoothed top-k below ``e`` labels of L; we search the ball
  densely for a perturbation that does (ties in the smoothed top-k counted against the certificate). Deliberately
  broken certificates (sigma doubled, bounds inflated) are caught by the same search, so the check has teeth.
* Statistical. With a simulated top-k' base classifier of known label probabilities, the Clopper-Pearson bounds
  of :func:`label_probability_bounds` fail at most as often as alpha allows, for k' = 1 and k' > 1; the
  paper's code's binomial n (the sum of the counts, n * k') fails far more often when k' > 1.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from multiguard.certificates.bounds import label_probability_bounds
from multiguard.certificates.topk import certified_intersection_size, certified_radii

SHRINK = 1.0 - 1e-6  # points strictly inside the certified radius: |delta| <= SHRINK * r_e
SLACK = {1: 1e-12, 2: 1e-9}  # bounds p -/+ SLACK: above the integrators' rounding error (1-D, 2-D)


# ----------------------------------------------------------------------------------- the smoothed classifier


def top_k_prime(scores: np.ndarray, k_prime: int) -> np.ndarray:
    """Boolean ``(P, c)`` membership of the base classifier's top-k' (ties by index) for ``(P, c)`` scores."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k_prime]
    member = np.zeros(scores.shape, dtype=bool)
    np.put_along_axis(member, order, True, axis=1)
    return member


def arrangement_1d(w: np.ndarray, b: np.ndarray, k_prime: int) -> tuple[np.ndarray, np.ndarray]:
    """Cells of the line z where the top-k' of ``w z + b`` is constant: ``(edges (m+1,), member (m, c))``."""
    i, j = np.triu_indices(w.size, 1)
    slope = w[i] - w[j]
    cuts = np.unique((b[j] - b[i])[slope != 0] / slope[slope != 0])
    edges = np.concatenate([[-np.inf], cuts, [np.inf]])
    if cuts.size:
        inner = 0.5 * (cuts[1:] + cuts[:-1])
        points = np.concatenate([[cuts[0] - 1.0], inner, [cuts[-1] + 1.0]])
    else:
        points = np.zeros(1)
    member = top_k_prime(points[:, None] * w[None, :] + b[None, :], k_prime)
    return edges, member.astype(np.float64)


def probabilities_1d(edges: np.ndarray, member: np.ndarray, centres: np.ndarray, sigma: float) -> np.ndarray:
    """Exact ``p_i(centre)`` for every centre: ``(P, c)``, each row summing to k'."""
    z = (edges[None, :] - centres[:, None]) / sigma
    lo, hi = z[:, :-1], z[:, 1:]
    # Upper tails through the survival function, so that small masses keep their relative precision.
    mass = np.where(lo > 0, special.ndtr(-lo) - special.ndtr(-hi), special.ndtr(hi) - special.ndtr(lo))
    return mass @ member


def _clip(poly: np.ndarray, normal: np.ndarray, offset: float) -> np.ndarray:
    """The part of a convex polygon ``(V, 2)`` where ``normal . z + offset >= 0`` (Sutherland-Hodgman)."""
    side = poly @ normal + offset
    out = []
    for idx in range(len(poly)):
        a, b = poly[idx], poly[(idx + 1) % len(poly)]
        sa, sb = side[idx], side[(idx + 1) % len(poly)]
        if sa >= 0:
            out.append(a)
        if (sa >= 0) != (sb >= 0):
            out.append(a + (b - a) * (sa / (sa - sb)))
    return np.array(out).reshape(-1, 2)


def _area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def arrangement_2d(
    weights: np.ndarray, b: np.ndarray, k_prime: int, centre: np.ndarray, half_width: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells of the plane where the top-k' of ``weights @ z + b`` is constant, clipped to a square box.

    Returns the edges of every cell, counter-clockwise, as ``starts (E, 2)``, ``ends (E, 2)``, the cell of each
    edge ``(E,)`` and the top-k' membership of each cell ``(cells, c)``.
    """
    box = centre + half_width * np.array([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]])
    cells = [box]
    for i, j in zip(*np.triu_indices(b.size, 1), strict=True):
        normal, offset = weights[i] - weights[j], b[i] - b[j]
        if not normal.any():
            continue
        split = []
        for poly in cells:
            for sign in (1.0, -1.0):
                part = _clip(poly, sign * normal, sign * offset)
                if len(part) >= 3 and _area(part) > 1e-12:
                    split.append(part)
        cells = split
    centroids = np.array([poly.mean(axis=0) for poly in cells])
    member = top_k_prime(centroids @ weights.T + b[None, :], k_prime).astype(np.float64)
    starts = np.concatenate(cells)
    ends = np.concatenate([np.roll(poly, -1, axis=0) for poly in cells])
    owner = np.concatenate([np.full(len(poly), idx) for idx, poly in enumerate(cells)])
    keep = np.linalg.norm(ends - starts, axis=1) > 1e-13  # clipping can repeat a vertex: no measure there
    return starts[keep], ends[keep], owner[keep], member


def _right_triangle(h: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Signed standard-normal measure of the triangle (0, F, F + s u), F the foot of a line at distance h."""
    safe_h = np.where(h > 0, h, 1.0)
    a = np.abs(s) / safe_h
    value = np.arctan(a) / (2 * np.pi) - special.owens_t(safe_h, a)
    return np.where(h > 0, np.sign(s) * value, 0.0)


def probabilities_2d(arrangement: tuple, centres: np.ndarray, sigma: float) -> np.ndarray:
    """Exact ``p_i(centre)`` for ``(P, 2)`` centres, from :func:`arrangement_2d`'s cells: ``(P, c)``.

    Each polygon's Gaussian measure is the signed sum over its edges of the measures of the triangles
    (centre, start, end), each the difference of two right triangles with a vertex at the centre:
    ``arctan(a) / 2 pi - T(h, a)``, with T Owen's function.
    """
    starts, ends, owner, member = arrangement
    a = (starts[None, :, :] - centres[:, None, :]) / sigma  # (P, E, 2)
    e = (ends[None, :, :] - centres[:, None, :]) / sigma
    direction = ends - starts
    unit = direction / np.linalg.norm(direction, axis=1, keepdims=True)  # (E, 2)
    cross = a[..., 0] * unit[None, :, 1] - a[..., 1] * unit[None, :, 0]  # cross(start, u)
    s_start = (a * unit[None]).sum(axis=2)
    s_end = (e * unit[None]).sum(axis=2)
    h = np.abs(cross)
    signed = np.sign(cross) * (_right_triangle(h, s_end) - _right_triangle(h, s_start))  # (P, E)
    cell_mass = np.zeros((centres.shape[0], member.shape[0]))
    np.add.at(cell_mass.T, owner, signed.T)
    return cell_mass @ member


# --------------------------------------------------------------------------------------- the adversary's view


def margins(p: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(P, k)``: column e-1 is a_(e) - b_(k-e+1), the e-th largest p in L minus the (k-e+1)-th largest outside.

    At least e labels of L are in the top-k of p, whichever way ties are broken, iff that margin is > 0
    (``+inf`` when fewer than k - e + 1 labels lie outside L; ``-inf`` when e > |L|).
    """
    inside = -np.sort(-np.where(labels[None, :], p, -np.inf), axis=1)
    outside = -np.sort(-np.where(labels[None, :], -np.inf, p), axis=1)
    c = p.shape[1]
    e = np.arange(1, k + 1)
    s = k - e + 1
    d = int(labels.sum())
    outside_count = c - d
    with np.errstate(invalid="ignore"):
        result = inside[:, e - 1] - outside[:, s - 1]
    result[:, s > outside_count] = np.inf
    result[:, e > d] = -np.inf
    return result


def worst_intersection(p: np.ndarray, labels: np.ndarray, k: int, tol: float = 1e-12) -> np.ndarray:
    """``(P,)`` smallest |L ∩ top-k(p)| over all tie-breaks (values within ``tol`` of the k-th count as tied)."""
    kth = -np.sort(-p, axis=1)[:, k - 1 : k]
    above = p > kth + tol
    tied = np.abs(p - kth) <= tol
    slots = k - above.sum(axis=1)
    spoilers = (tied & ~labels[None, :]).sum(axis=1)
    return (above & labels[None, :]).sum(axis=1) + np.maximum(0, slots - spoilers)


# ------------------------------------------------------------------------------------------- random problems


def random_problem(rng: np.random.Generator, dim: int) -> dict:
    """A linear base classifier, a point, a label set and (k, k', sigma) with a good chance of a certificate."""
    c = int(rng.integers(2, 7 if dim == 1 else 6))
    k_prime = int(rng.integers(1, min(c - 1, 3) + 1)) if c > 2 else 1
    k = int(rng.integers(1, c))  # k = c certifies everything at every radius: nothing to test
    if rng.random() < 0.15:  # Cohen's setting, where the certificate is exactly tight in 1-D
        c, k, k_prime = 2, 1, 1
    sigma = float(rng.choice([0.25, 0.5, 1.0]))
    scale = float(rng.choice([0.5, 1.0, 3.0]))
    weights = rng.normal(size=(c, dim)) * scale
    b = rng.normal(size=c) * scale
    x = rng.normal(size=dim) * sigma
    return dict(c=c, k=k, k_prime=k_prime, sigma=sigma, weights=weights, b=b, x=x)


def choose_labels(rng: np.random.Generator, p: np.ndarray) -> np.ndarray:
    c = p.size
    d = int(rng.integers(1, c))
    labels = np.zeros(c, dtype=bool)
    if rng.random() < 0.7:  # the labels the smoothed classifier ranks first: nonzero certificates
        labels[np.argsort(-p - 1e-9 * rng.random(c))[:d]] = True
    else:
        labels[rng.choice(c, size=d, replace=False)] = True
    return labels


def certificate(p: np.ndarray, labels: np.ndarray, problem: dict, *, slack: float, sigma_factor: float = 1.0,
                inflate: float = 0.0) -> np.ndarray:
    """Certified radii ``(k,)`` from the exact probabilities as both bounds (optionally deliberately broken).

    ``slack`` covers the integrator's rounding: the bounds are ``p - slack`` and ``p + slack``, so that a
    probability of 1 - 1e-20 that rounds to 1.0 is not passed on as a lower bound of exactly 1.
    """
    lower = np.clip(p - slack + inflate, 0.0, 1.0)
    upper = np.clip(p + slack - inflate, 0.0, 1.0)
    return certified_radii(lower, upper, labels, k=problem["k"], k_prime=problem["k_prime"],
                           sigma=problem["sigma"] * sigma_factor)


def break_radii(offsets: np.ndarray, p: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """``(k,)``: per e, the smallest ||delta|| among ``offsets (P, dim)`` with margin <= 0 (inf if none)."""
    norms = np.linalg.norm(offsets, axis=1)
    bad = margins(p, labels, k) <= 0
    return np.where(bad, norms[:, None], np.inf).min(axis=0)


# ---------------------------------------------------------------------------------------------- the tests


def test_exact_probabilities_are_exact() -> None:
    """The integrators against each other, against Monte Carlo, and against sum_i p_i = k'."""
    rng = np.random.default_rng(7)
    for _ in range(5):
        c, k_prime, sigma = 5, 2, 0.5
        w, b = rng.normal(size=c), rng.normal(size=c)
        centres = rng.normal(size=4)
        p1 = probabilities_1d(*arrangement_1d(w, b, k_prime), centres, sigma)
        assert np.allclose(p1.sum(axis=1), k_prime, atol=1e-12)
        # The same classifier as a 2-D one that ignores the second coordinate.
        weights = np.stack([w, np.zeros(c)], axis=1)
        arr = arrangement_2d(weights, b, k_prime, np.zeros(2), 30.0)
        p2 = probabilities_2d(arr, np.stack([centres, rng.normal(size=4)], axis=1), sigma)
        assert np.abs(p2 - p1).max() < 1e-10
        # A genuinely 2-D classifier against 400,000 Monte Carlo samples.
        weights = rng.normal(size=(c, 2))
        arr = arrangement_2d(weights, b, k_prime, np.zeros(2), 30.0)
        centre = rng.normal(size=2) * 0.3
        p2 = probabilities_2d(arr, centre[None], sigma)[0]
        assert abs(p2.sum() - k_prime) < 1e-10
        z = centre + sigma * rng.normal(size=(400_000, 2))
        mc = top_k_prime(z @ weights.T + b, k_prime).mean(axis=0)
        assert np.abs(mc - p2).max() < 5 * np.sqrt(0.25 / 400_000)


def test_margins_and_worst_intersection_agree() -> None:
    rng = np.random.default_rng(3)
    for _ in range(300):
        c = int(rng.integers(2, 8))
        k = int(rng.integers(1, c + 1))
        p = rng.choice([0.0, 0.1, 0.3, 0.5, 0.9], size=(20, c))  # many exact ties
        labels = rng.random(c) < 0.5
        worst = worst_intersection(p, labels, k)
        from_margins = (margins(p, labels, k) > 0).sum(axis=1)
        assert (worst == from_margins).all()


def _run_exact(dim: int, cases: int, seed: int) -> dict:
    """Search each case's ball for a perturbation that beats its certificate; tally the evidence."""
    rng = np.random.default_rng(seed)
    stats_ = dict(cases=0, radii=0, certified_cases=0, violations=[], min_margin=np.inf, ratios=[],
                  r_checks=0, r_nonzero=0, caught_sigma=0, caught_inflate=0)
    for _ in range(cases):
        problem = random_problem(rng, dim)
        sigma, k = problem["sigma"], problem["k"]
        if dim == 1:
            arr = arrangement_1d(problem["weights"][:, 0], problem["b"], problem["k_prime"])

            def prob(offsets, arr=arr, problem=problem):
                return probabilities_1d(*arr, problem["x"][0] + offsets[:, 0], problem["sigma"])
        else:
            arr = arrangement_2d(problem["weights"], problem["b"], problem["k_prime"], problem["x"], 14.0 * sigma)

            def prob(offsets, arr=arr, problem=problem):
                return probabilities_2d(arr, problem["x"][None, :] + offsets, problem["sigma"])

        p = prob(np.zeros((1, dim)))[0]
        labels = choose_labels(rng, p)
        slack = SLACK[dim]
        radii = certificate(p, labels, problem, slack=slack)
        broken_sigma = certificate(p, labels, problem, slack=slack, sigma_factor=2.0)
        broken_inflate = certificate(p, labels, problem, slack=slack, inflate=0.03)
        stats_["cases"] += 1
        finite = radii[np.isfinite(radii) & (radii > 0)]
        stats_["certified_cases"] += finite.size > 0
        reach = np.concatenate([finite, broken_sigma[np.isfinite(broken_sigma)],
                                broken_inflate[np.isfinite(broken_inflate)], [sigma]])
        far = min(3.0 * reach.max(), 6.0 * sigma)
        if dim == 1:
            inner = [r * SHRINK * np.linspace(-1.0, 1.0, 801) for r in finite]
            offsets = np.concatenate([np.linspace(-far, far, 4001), *inner])[:, None]
        else:
            angles = np.linspace(0.0, 2 * np.pi, 120, endpoint=False)
            ring = np.stack([np.cos(angles), np.sin(angles)], axis=1)
            inner = [r * f * ring for r in finite for f in (0.25, 0.5, 0.75, SHRINK)]
            outer = [f * far * ring for f in np.linspace(0.05, 1.0, 12)]
            offsets = np.concatenate([np.zeros((1, 2)), *inner, *outer])
        p_all = prob(offsets)
        if dim == 2 and finite.size:  # refine around the worst direction on each certified sphere
            m = margins(p_all, labels, k)
            norms = np.linalg.norm(offsets, axis=1)
            extra = []
            for e_idx in np.flatnonzero(np.isfinite(radii) & (radii > 0)):
                r = radii[e_idx] * SHRINK
                on = np.flatnonzero(np.abs(norms - r) < 1e-12 * max(r, 1.0))
                if on.size == 0:
                    continue
                worst = offsets[on[np.argmin(m[on, e_idx])]]
                theta = np.arctan2(worst[1], worst[0]) + np.linspace(-0.06, 0.06, 41)
                extra.append(r * np.stack([np.cos(theta), np.sin(theta)], axis=1))
            if extra:
                extra = np.concatenate(extra)
                offsets = np.concatenate([offsets, extra])
                p_all = np.concatenate([p_all, prob(extra)])
        norms = np.linalg.norm(offsets, axis=1)
        m = margins(p_all, labels, k)
        broke = break_radii(offsets, p_all, labels, k)
        for e_idx in np.flatnonzero(np.isfinite(radii) & (radii > 0)):
            stats_["radii"] += 1
            inside = norms <= radii[e_idx] * SHRINK
            stats_["min_margin"] = min(stats_["min_margin"], float(m[inside, e_idx].min()))
            if broke[e_idx] <= radii[e_idx] * SHRINK:
                stats_["violations"].append((problem, labels, radii, e_idx + 1, broke[e_idx]))
            stats_["ratios"].append(radii[e_idx] / broke[e_idx])
        stats_["caught_sigma"] += bool((broke < broken_sigma * SHRINK).any())
        stats_["caught_inflate"] += bool((broke < broken_inflate * SHRINK).any())

        # The certified size at a random radius, against the worst intersection over the ball (the definition).
        radius = float(rng.choice([rng.uniform(0, 2 * sigma), (finite.max() if finite.size else sigma)
                                   * rng.uniform(0.5, SHRINK)]))
        size = int(certified_intersection_size(np.clip(p - slack, 0, 1), np.clip(p + slack, 0, 1), labels, k=k,
                                               k_prime=problem["k_prime"], sigma=sigma, radius=radius))
        ball = norms <= radius
        worst = int(worst_intersection(p_all[ball], labels, k).min())
        stats_["r_checks"] += 1
        stats_["r_nonzero"] += size > 0 and radius > 0
        if worst < size:
            stats_["violations"].append((problem, labels, radius, size, worst))
    return stats_


def _report(name: str, s: dict) -> None:
    ratios = np.array(s["ratios"])
    found = ratios[ratios > 0]  # a break was found within the searched distance
    print(
        f"\n[soundness] {name}: {s['cases']} cases, {s['radii']} finite nonzero certified radii "
        f"({s['certified_cases']} cases certify something at R > 0); violations {len(s['violations'])}; "
        f"min margin a_e - b_s inside the certified ball {s['min_margin']:.3e}; "
        f"certified / empirical break radius where a break was found ({found.size}): max {found.max():.6f}, "
        f"median {np.median(found):.4f}, share >= 0.99: {(found >= 0.99).mean():.3f}; random-R checks {s['r_checks']} "
        f"({s['r_nonzero']} with e > 0 at R > 0); broken certificates caught: "
        f"sigma x2 in {s['caught_sigma']} cases, bounds +/-0.03 in {s['caught_inflate']} cases"
    )


@pytest.mark.parametrize("seed", range(4))
def test_exact_1d_certificates_hold_and_are_tight(seed: int) -> None:
    s = _run_exact(dim=1, cases=500, seed=1000 + seed)
    _report(f"1-D seed {seed}", s)
    assert not s["violations"], s["violations"][:3]
    assert s["min_margin"] > 0
    assert s["certified_cases"] >= 0.4 * s["cases"]  # the check has something to check
    assert s["r_nonzero"] >= 0.3 * s["r_checks"]
    ratios = np.array(s["ratios"])
    assert ratios.max() <= 1.0
    assert (ratios >= 0.99).sum() > 0.05 * ratios.size  # tight cases exist, so an overstated radius would show
    assert s["caught_sigma"] >= 0.2 * s["certified_cases"]
    assert s["caught_inflate"] >= 0.2 * s["certified_cases"]


@pytest.mark.parametrize("seed", range(2))
def test_exact_2d_certificates_hold(seed: int) -> None:
    s = _run_exact(dim=2, cases=80, seed=2000 + seed)
    _report(f"2-D seed {seed}", s)
    assert not s["violations"], s["violations"][:3]
    assert s["min_margin"] > 0
    assert s["certified_cases"] >= 0.4 * s["cases"]
    assert np.array(s["ratios"]).max() <= 1.0
    assert s["caught_sigma"] > 0 and s["caught_inflate"] > 0


# --------------------------------------------------------------------------------------------- statistics


def simulated_counts(rng: np.random.Generator, c: int, k_prime: int, n: int, trials: int,
                     num_sets: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """A top-k' base classifier that returns one of ``num_sets`` fixed k'-sets with known probabilities.

    Returns ``(p (c,), counts (trials, c))``: p_i exactly, and ``trials`` independent count vectors of n samples
    each (every label's count is Binomial(n, p_i); every row sums to n * k').
    """
    sets = np.zeros((num_sets, c))
    for row in range(num_sets):
        sets[row, rng.choice(c, size=k_prime, replace=False)] = 1.0
    weights = rng.dirichlet(np.full(num_sets, 0.7))
    p = weights @ sets
    draws = rng.multinomial(n, weights, size=trials)
    counts = (draws @ sets).astype(np.int64)
    return p, counts


def failure_rates(lower: np.ndarray, upper: np.ndarray, p: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(rate at which a certificate for L fails: some lower_i > p_i, i in L, or upper_j < p_j, j not in L;
    rate at which any of the 2c one-sided bounds fails)."""
    low_bad = lower > p[None, :]
    up_bad = upper < p[None, :]
    used = np.where(labels[None, :], low_bad, up_bad).any(axis=1)
    every = (low_bad | up_bad).any(axis=1)
    return float(used.mean()), float(every.mean())


def allowed(rate: float, trials: int) -> float:
    """Largest failure fraction consistent with a true rate <= ``rate`` (one-sided binomial test at 1e-6)."""
    return stats.binom.ppf(1 - 1e-6, trials, rate) / trials


@pytest.mark.parametrize("k_prime", [1, 2, 4])
@pytest.mark.parametrize("alpha", [0.001, 0.05])
def test_bounds_fail_at_most_alpha_and_the_papers_n_does_not(k_prime: int, alpha: float) -> None:
    rng = np.random.default_rng(10 * k_prime + int(alpha * 1000))
    c, n, trials = 8, 1000, 20_000
    p, counts = simulated_counts(rng, c, k_prime, n, trials)
    assert np.allclose(p.sum(), k_prime) and (counts.sum(axis=1) == n * k_prime).all()
    labels = np.zeros(c, dtype=bool)
    labels[np.argsort(-p)[: c // 2]] = True  # L chosen before sampling, as ground truth is

    lower, upper = label_probability_bounds(counts, n, alpha)
    used, every = failure_rates(lower, upper, p, labels)
    # The paper's code: the binomial n of each label taken as the sum of the counts (n * k').
    wrong_lower, wrong_upper = label_probability_bounds(counts, n * k_prime, alpha)
    wrong_used, wrong_every = failure_rates(wrong_lower, wrong_upper, p, labels)
    print(f"\n[soundness] bounds k'={k_prime} alpha={alpha} c={c} n={n} trials={trials}: certificate's union "
          f"{used:.5f} (allowed {allowed(alpha, trials):.5f}), all 2c bounds {every:.5f}; with n = sum of counts: "
          f"{wrong_used:.5f} / {wrong_every:.5f}")
    assert used <= allowed(alpha, trials)
    assert every <= allowed(min(2 * alpha, 1.0), trials)  # all 2c one-sided bounds: Bonferroni gives 2 alpha
    if k_prime == 1:
        assert wrong_used == used  # n * k' = n: the same bounds
    else:
        assert wrong_used > allowed(alpha, trials)  # caught


def test_the_statistical_check_has_teeth() -> None:
    """Bounds at the level alpha instead of alpha / c (no Bonferroni) fail visibly more often than alpha."""
    rng = np.random.default_rng(5)
    c, n, trials, alpha = 8, 1000, 20_000, 0.05
    p, counts = simulated_counts(rng, c, 2, n, trials)
    labels = np.zeros(c, dtype=bool)
    labels[np.argsort(-p)[:4]] = True
    lower, upper = label_probability_bounds(counts, n, alpha * c)  # each side at alpha, not alpha / c
    used, _ = failure_rates(lower, upper, p, labels)
    assert used > allowed(alpha, trials)


# ------------------------------------------------------------------------------ findings reported upstream


def test_all_2c_one_sided_bounds_hold_with_one_minus_two_alpha_not_one_minus_alpha() -> None:
    # label_probability_bounds' docstring promises the c bounds a certificate reads with 1 - alpha, and all 2c
    # one-sided bounds only with 1 - 2 alpha: check both statements and that the stronger claim would be false.
    rng = np.random.default_rng(10 * 4 + 50)
    c, n, trials, alpha = 8, 1000, 20_000, 0.05
    p, counts = simulated_counts(rng, c, 4, n, trials)
    lower, upper = label_probability_bounds(counts, n, alpha)
    used, every = failure_rates(lower, upper, p, np.zeros(c, dtype=bool))
    assert used <= allowed(alpha, trials)
    assert every <= allowed(2 * alpha, trials)


def test_an_exact_tie_is_not_certified() -> None:
    p = np.array([0.6, 0.6, 0.5, 0.3])  # k' = 2; label 0 (in L) ties label 1 (outside) for the top-1
    labels = np.array([True, False, True, False])
    assert certified_radii(p, p, labels, k=1, k_prime=2, sigma=0.5)[0] == 0.0
