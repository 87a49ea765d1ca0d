"""A plain-loop transcription of the paper's Theorem 1 and of the Jia et al. baseline, for cross-checks.

Written straight from docs/certificate.md with scalar Python arithmetic (no NumPy in the math), one input, one e', one
radius at a time: slow and obviously right. The tests compare the vectorised ``multiguard.certificates.topk`` against
it, and ``benchmarks/bench_certify.py`` times against it.
"""

from __future__ import annotations

import math
from statistics import NormalDist

_NORMAL = NormalDist()


def phi(x: float) -> float:
    """Standard normal CDF, with Phi(-inf) = 0 and Phi(inf) = 1."""
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def phi_inv(p: float) -> float:
    """Standard normal quantile, with the limits at 0 and 1."""
    if p <= 0.0:
        return -math.inf
    if p >= 1.0:
        return math.inf
    return _NORMAL.inv_cdf(p)


def eq8_holds(lower, upper, labels, *, k, k_prime, sigma, radius, e_prime, second_terms=True) -> bool:
    """Whether Eq. 8 holds for intersection size ``e_prime`` at ``radius`` (one input, Python lists)."""
    c = len(lower)
    a = sorted((lower[i] for i in range(c) if labels[i]), reverse=True)
    b = sorted((upper[j] for j in range(c) if not labels[j]), reverse=True)
    d = len(a)
    if e_prime > min(d, k):
        return False
    eta = d - e_prime + 1
    s = k - e_prime + 1
    if s > c - d:
        return True
    t = radius / sigma
    lhs = phi(phi_inv(a[e_prime - 1]) - t)
    rhs = phi(phi_inv(b[s - 1]) + t)
    if second_terms:
        for u in range(1, eta + 1):
            total = sum(a[e_prime - 1 : e_prime - 1 + u])
            lhs = max(lhs, k_prime / u * phi(phi_inv(min(total / k_prime, 1.0)) - t))
        cap = k_prime - sum(lower[i] for i in range(c) if labels[i])
        for v in range(1, s + 1):
            total = min(sum(b[s - v : s]), cap)
            rhs = min(rhs, k_prime / v * phi(phi_inv(min(max(total, 0.0) / k_prime, 1.0)) + t))
    return lhs > rhs


def intersection_size(lower, upper, labels, *, k, k_prime, sigma, radius, second_terms=True) -> int:
    """e(R): the largest e' for which Eq. 8 holds at ``radius``, or 0."""
    best = 0
    for e_prime in range(1, k + 1):
        if eq8_holds(
            lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma, radius=radius, e_prime=e_prime,
            second_terms=second_terms,
        ):
            best = e_prime
    return best


def _supremum(holds, sigma: float, steps: int = 80) -> float:
    """sup{R >= 0 : holds(R)} for a predicate that holds on an interval starting at 0."""
    if not holds(0.0):
        return 0.0
    hi = sigma
    while holds(hi):
        hi *= 2.0
        if hi > 1e3 * sigma:
            return math.inf
    lo = 0.0
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        if holds(mid):
            lo = mid
        else:
            hi = mid
    return lo


def radius(lower, upper, labels, *, k, k_prime, sigma, e_prime, second_terms=True) -> float:
    """r_e': the supremum of the radii at which Eq. 8 holds for ``e_prime``, by scalar bisection."""
    return _supremum(
        lambda r: eq8_holds(
            lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma, radius=r, e_prime=e_prime,
            second_terms=second_terms,
        ),
        sigma,
    )


def jia_radius(lower, upper, label, *, k, sigma) -> float:
    """Jia et al. (2020) top-k radius of one label with a top-1 base classifier (docs/certificate.md)."""
    c = len(lower)
    p = lower[label]
    others = sorted((upper[j] for j in range(c) if j != label), reverse=True)
    if len(others) < k:
        return math.inf
    o = [min(x, 1.0 - p) for x in others[:k]]
    best = 0.0
    for t in range(1, k + 1):
        s_t = min(sum(o[k - t :]), 1.0 - p)

        def holds(r, s_t=s_t, t=t):
            return phi(phi_inv(p) - r / sigma) > phi(phi_inv(s_t) + r / sigma) / t

        best = max(best, _supremum(holds, sigma))
    return best
