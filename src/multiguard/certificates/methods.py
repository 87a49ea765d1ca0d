"""Certification methods: the one place a method is added (its name, label, line style, help text, and the
function that turns label probability bounds into certified intersection sizes). No torch.

The report computes every method's curves through :attr:`CertificationMethod.sizes`; the command line reads
its ``--methods`` choices and help from :data:`METHODS`. SciPy loads only when a method first computes, so
reading the registry (``multiguard --help``) stays instant.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from multiguard.common.registry import Registry

__all__ = ["METHODS", "CertificationMethod", "default_methods", "register_method"]

SizesFunction = Callable[[np.ndarray, np.ndarray, np.ndarray, int, int, float, np.ndarray], np.ndarray]
"""``sizes(lower, upper, labels, k, k_prime, sigma, radius) -> int64 (N, len(radius))``: certified
intersection sizes at each radius from bounds ``(N, c)`` and label masks ``(N, c)``."""

PerLabelFunction = Callable[..., Any]
"""``per_label(on_counts, samples, looks, labels, sigma, alpha, q, radius, spending=None, bounds="union")`` -> an
object with
``precision``, ``recall``, ``f1`` ``(len(radius),)``, ``num_inputs`` and ``num_empty``: certified metrics of a
classifier that decides each label on its own, from per-label on-counts ``(N, c)`` of ``samples`` ``(N,)`` noisy
copies (``looks``: the schedule of a sequential run, else ``None``; ``spending``: how that run's stopping rule
spent alpha over its looks, :func:`multiguard.certificates.sequential.spending_weights`, ``None`` for equal shares;
``bounds``: the anytime bounds it read, :data:`multiguard.certificates.sequential.BOUNDS`),
label
masks ``(N, c)`` and the cut ``q``."""


@dataclass(frozen=True)
class CertificationMethod:
    """A way to certify from stored counts.

    Attributes:
        name: the identifier on the command line and in ``curves.csv``.
        label: the name in plots and tables.
        linestyle: matplotlib line style of its curves.
        description: one sentence for ``--help`` and ``summary.md``.
        k_prime_one_only: the method certifies a base classifier with k' = 1 only (skipped for other k').
        sizes: see :data:`SizesFunction` (a top-k method: curves per k and k'); ``None`` for a per-label method.
        color: matplotlib colour of its curves where the settings do not vary.
        bounds_read: ``bounds_read(labels (N, c)) -> int64 (N,)``, how many one-sided bounds the certificate
            reads per input; the report computes its bounds at level ``alpha / bounds_read`` each, so that its
            certificates hold at ``1 - alpha``. ``None``: c (a lower bound per label of L, an upper bound per
            label outside L), as MultiGuard's (docs/certificate.md). A top-k method's field only.
        default: reports compute it unless ``--methods`` names others (False: only when named).
        per_label: see :data:`PerLabelFunction`: a method that certifies per-label decisions from a run's
            on-counts (runs certified with thresholds), with curves per cut q instead of per k and k'.
    """

    name: str
    label: str
    linestyle: str
    description: str
    k_prime_one_only: bool
    sizes: SizesFunction | None
    color: str = "C2"
    bounds_read: Callable[[np.ndarray], np.ndarray] | None = None
    default: bool = True
    per_label: PerLabelFunction | None = None

    def __post_init__(self) -> None:
        if (self.sizes is None) == (self.per_label is None):
            raise ValueError(f"method {self.name!r} needs exactly one of sizes (top-k) and per_label")
        if self.per_label is not None and self.bounds_read is not None:
            raise ValueError(f"method {self.name!r}: bounds_read is a top-k method's field (per_label reads its own)")


def _multiguard_sizes(second_terms: bool) -> SizesFunction:
    def sizes(lower, upper, labels, k, k_prime, sigma, radius):  # noqa: ANN001, ANN202 - see SizesFunction
        from multiguard.certificates import topk as _topk

        radii = _topk.certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma,
                                        second_terms=second_terms)
        return _topk.intersection_size_from_radii(radii, radius)

    return sizes


def _jia_sizes(lower, upper, labels, k, k_prime, sigma, radius):  # noqa: ANN001, ANN202 - see SizesFunction
    from multiguard.certificates import jia as _jia

    return _jia.jia_intersection_size_from_radii(
        _jia.jia_certified_radii(lower, upper, labels, k=k, sigma=sigma), radius
    )


def _thresholded_metrics(on_counts, samples, looks, labels, sigma, alpha, q, radius, spending=None,  # noqa: ANN001, ANN202
                         bounds="union"):
    from multiguard.certificates import thresholded

    n = samples if looks is not None else int(samples[0])
    certificate = thresholded.certify_thresholded(on_counts, n, alpha=alpha, sigma=sigma, q=q, looks=looks,
                                                  spending=spending, bounds=bounds)
    return certificate.metrics(labels, radius)


METHODS: Registry[CertificationMethod, None] = Registry("method", argument="--methods")
"""Every known method by name, in the order reports list them: the entry's target is the
:class:`CertificationMethod` itself (its own typed record), its help the method's description."""


def default_methods() -> tuple[str, ...]:
    """The methods a report computes unless told which: every registered one whose ``default`` is set."""
    return tuple(name for name, method in METHODS.items() if method.default)


def register_method(method: CertificationMethod) -> CertificationMethod:
    """Add ``method`` to :data:`METHODS` under its name (which must be new: ValueError otherwise); returns it."""
    if not isinstance(method, CertificationMethod):
        raise ValueError(f"method: register a CertificationMethod, got {type(method).__name__}")
    return METHODS.register(method.name, method, help=method.description)


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
def _jia_bounds_read(labels: np.ndarray) -> np.ndarray:
    from multiguard.certificates import bounds as _bounds

    return _bounds.jia_bounds_read(labels)


register_method(CertificationMethod(
    "jia", "Jia et al.", ":",
    "the baseline: Jia et al.'s (ICLR 2020) top-k certificate applied to each label separately (k' = 1 only), "
    "at confidence 1 - alpha: it reads c + |L| one-sided bounds, each at alpha / (c + |L|).",
    True, _jia_sizes, color="C0", bounds_read=_jia_bounds_read,
))
register_method(CertificationMethod(
    "jia-paper", "Jia et al. (paper's accounting)", "-.",
    "the baseline as the MultiGuard paper computes it: each bound at alpha / c, so its certificates hold at "
    "1 - alpha (c + |L|) / c only; for comparison with published figures (k' = 1 only).",
    True, _jia_sizes, color="C5", default=False,
))
register_method(CertificationMethod(
    "threshold", "thresholded (per label)", "-.",
    "per-label decisions (a label is predicted when its score passes its threshold in more than a share q of the "
    "noise), certified label by label; precision, recall and F1 of the worst predicted set between the labels "
    "certified on and those not certified off (runs certified with --threshold; docs/certificate.md).",
    False, None, color="C4", per_label=_thresholded_metrics,
))
