"""Certification methods: the one place a method is added (its name, label, line style, help text, and the
function that turns label probability bounds into certified intersection sizes). No torch.

The report computes every method's curves through :attr:`CertificationMethod.sizes`; the command line reads
its ``--methods`` choices and help from :data:`METHODS`. SciPy loads only when a method first computes, so
reading the registry (``multiguard --help``) stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["METHODS", "CertificationMethod", "register_method"]

SizesFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int, float, np.ndarray], np.ndarray]
"""``sizes(lower, upper, labels, k, k_prime, sigma, radius) -> int64 (N, len(radius))``: certified
intersection sizes at each radius from bounds ``(N, c)`` and label masks ``(N, c)``."""


@dataclass(frozen=True)
class CertificationMethod:
    """A way to certify from stored counts.

    Attributes:
        name: the identifier on the command line and in ``curves.csv``.
        label: the name in plots and tables.
        linestyle: matplotlib line style of its curves.
        description: one sentence for ``--help`` and ``summary.md``.
        k_prime_one_only: the method certifies a base classifier with k' = 1 only (skipped for other k').
        sizes: see :data:`SizesFunction`.
        color: matplotlib colour of its curves where the settings do not vary.
    """

    name: str
    label: str
    linestyle: str
    description: str
    k_prime_one_only: bool
    sizes: SizesFunction
    color: str = "C2"


def _multiguard_sizes(second_terms: bool) -> SizesFunction:
    def sizes(lower, upper, labels, k, k_prime, sigma, radius):  # noqa: ANN001, ANN202 - see SizesFunction
        from . import certify

        radii = certify.certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma,
                                        second_terms=second_terms)
        return certify.intersection_size_from_radii(radii, radius)

    return sizes


def _jia_sizes(lower, upper, labels, k, k_prime, sigma, radius):  # noqa: ANN001, ANN202 - see SizesFunction
    from . import certify

    return certify.jia_intersection_size_from_radii(
        certify.jia_certified_radii(lower, upper, labels, k=k, sigma=sigma), radius
    )


METHODS: dict[str, CertificationMethod] = {}
"""Every known method by name, in the order reports list them."""


def register_method(method: CertificationMethod) -> CertificationMethod:
    """Add ``method`` to :data:`METHODS` (its name must be new); returns it."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already registered")
    METHODS[method.name] = method
    return method


register_method(CertificationMethod(
    "multiguard", "MultiGuard", "-",
    "Theorem 1 of the MultiGuard paper: both terms of each side of Eq. 8.",
    False, _multiguard_sizes(True), color="C3",
))
register_method(CertificationMethod(
    "multiguard-first-terms", "MultiGuard, first terms only", "--",
    "the paper's ablation: Theorem 1 without the u- and v-sums, i.e. each label bounded on its own.",
    False, _multiguard_sizes(False), color="C1",
))
register_method(CertificationMethod(
    "jia", "Jia et al.", ":",
    "the baseline: Jia et al.'s (ICLR 2020) top-k certificate applied to each label separately (k' = 1 only).",
    True, _jia_sizes, color="C0",
))
