"""What ``MultiGuard.certify`` and ``MultiGuard.predict`` return: ``Certificate`` (the guaranteed labels and
radii of a batch) and ``Prediction`` (the smoothed top-k, or an abstention)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multiguard.certificates import jia as _jia
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import thresholded as _thresholded
from multiguard.certificates import topk as _topk

__all__ = ["Certificate", "Prediction"]


@dataclass(frozen=True, eq=False)
class Certificate:
    """What :meth:`MultiGuard.certify` found for N inputs with label sets L (c labels, k predicted).

    With probability at least ``1 - alpha`` over the sampling (for each input separately), every
    ``lower[i, l] <= p_l`` for l in L and ``upper[i, l] >= p_l`` for l outside L, and then at least e labels
    of ``labels[i]`` are among the smoothed classifier's top k at every ``x[i] + delta`` with
    ``||delta||_2 < radii[i, e-1]``.

    Attributes:
        counts: int64 ``(N, c)``: number of the samples whose top-k' contains each label (``samples[i]`` of
            them for input i).
        lower, upper: float ``(N, c)`` Clopper-Pearson bounds at ``alpha / c`` each (fixed n), or the
            anytime-valid bounds of :func:`multiguard.certificates.sequential.anytime_label_probability_bounds`
            (sequential).
        labels: bool ``(N, c)`` mask of L.
        radii: float ``(N, k)`` certified radius of each intersection size e = 1..k (``inf`` possible).
        samples: int64 ``(N,)`` samples each input used: n for every input unless sampling stopped early.
        stop_at_radius: the target radius R of sequential certification, or ``None`` (fixed n).

    ``trivial_size`` and ``trivial`` say which radii hold by counting alone, whatever the model
    (:func:`~multiguard.certificates.metrics.trivial_intersection_size`).
    """

    counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    labels: np.ndarray
    radii: np.ndarray
    k: int
    k_prime: int
    sigma: float
    n: int
    alpha: float
    second_terms: bool = True
    samples: np.ndarray | None = None
    stop_at_radius: float | None = None
    thresholded: _thresholded.ThresholdedCertificate | None = None

    @property
    def trivial_size(self) -> np.ndarray:
        """int64 ``(N,)``: how many labels of L any top-k keeps by counting alone (``max(0, |L| - (c - k))``)."""
        return _metrics.trivial_intersection_size(self.labels, self.k)

    @property
    def trivial(self) -> np.ndarray:
        """bool ``(N, k)``: ``trivial[i, e-1]`` is True where ``radii[i, e-1]`` (often ``inf``) holds for any
        classifier, so it is no guarantee about the model."""
        return _trivial_flags(self.trivial_size, self.radii.shape[1])

    def thresholded_metrics(self, radius: float | np.ndarray) -> _thresholded.ThresholdedMetrics:
        """Certified precision, recall, F1 and Hamming accuracy of the thresholded classifier against ``labels``
        (the classifier must have thresholds: ``MultiGuard(..., thresholds=...)``)."""
        if self.thresholded is None:
            raise ValueError("thresholds: this certificate has no thresholded part (MultiGuard(..., thresholds=...))")
        return self.thresholded.metrics(self.labels, radius)

    def intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """Certified intersection size e(R): int64 ``(N,)`` for a scalar R, ``(N, len(R))`` for an array."""
        return _topk.intersection_size_from_radii(self.radii, radius)

    def metrics(self, radius: float | np.ndarray) -> _metrics.CertifiedMetrics:
        """Certified top-k precision, recall and F1 at R (one value per radius), averaged over inputs."""
        return _metrics.certified_metrics(self.intersection_size(radius), self.labels, self.k)

    def _check_jia(self) -> None:
        if self.k_prime != 1:
            raise ValueError(
                f"the Jia et al. baseline needs k_prime = 1, this certificate has k_prime = {self.k_prime}"
            )

    def jia_radii(self) -> np.ndarray:
        """Jia et al. (2020) per-label radii ``(N, c)`` from the same bounds (0 outside L); k_prime = 1 only."""
        self._check_jia()
        return _jia.jia_certified_radii(self.lower, self.upper, self.labels, k=self.k, sigma=self.sigma)

    def jia_intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """e_Jia(R) from the same bounds: int64 ``(N,)`` or ``(N, len(R))``; k_prime = 1 only."""
        return _jia.jia_intersection_size_from_radii(self.jia_radii(), radius)

    def jia_metrics(self, radius: float | np.ndarray) -> _metrics.CertifiedMetrics:
        """Certified precision, recall and F1 of the Jia et al. baseline at R; k_prime = 1 only."""
        return _metrics.certified_metrics(self.jia_intersection_size(radius), self.labels, self.k)


@dataclass(frozen=True, eq=False)
class Prediction:
    """What :meth:`MultiGuard.predict` returns for N inputs.

    Attributes:
        labels: int64 ``(N, k)``: the predicted labels, most frequent in the selection samples first.
        radii: float ``(N, k)``: with probability at least ``1 - alpha``, at least e of ``labels[i]`` stay in
            the smoothed top-k at every ``x[i] + delta`` with ``||delta||_2 < radii[i, e-1]``.
        counts: int64 ``(N, c)`` estimation counts (``samples[i]`` samples); ``selection_counts`` the n0
            selection counts.
        lower, upper: float ``(N, c)`` bounds from ``counts`` (anytime-valid ones when sampling stopped early).
        samples: int64 ``(N,)`` estimation samples each input used (n unless ``stop_at_radius`` is set).
        stop_at_radius: the target radius R of sequential certification, or ``None`` (fixed n).

    ``trivial_size`` and ``trivial`` say which radii hold by counting alone, whatever the model.
    """

    labels: np.ndarray
    radii: np.ndarray
    counts: np.ndarray
    selection_counts: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    k: int
    k_prime: int
    sigma: float
    n0: int
    n: int
    alpha: float
    samples: np.ndarray | None = None
    stop_at_radius: float | None = None
    thresholded: _thresholded.ThresholdedCertificate | None = None

    @property
    def mask(self) -> np.ndarray:
        """The predicted labels as a bool ``(N, c)`` mask."""
        mask = np.zeros(self.counts.shape, dtype=bool)
        np.put_along_axis(mask, self.labels, True, axis=1)
        return mask

    @property
    def trivial_size(self) -> np.ndarray:
        """int64 ``(N,)``: how many of the k predicted labels any top-k keeps by counting alone
        (``max(0, 2k - c)``)."""
        return _metrics.trivial_intersection_size(self.mask, self.k)

    @property
    def trivial(self) -> np.ndarray:
        """bool ``(N, k)``: ``trivial[i, e-1]`` is True where ``radii[i, e-1]`` holds for any classifier (no
        guarantee about the model; the CLI's ``trivial``)."""
        return _trivial_flags(self.trivial_size, self.radii.shape[1])

    def intersection_size(self, radius: float | np.ndarray) -> np.ndarray:
        """How many predicted labels are certified to stay at R: int64 ``(N,)`` or ``(N, len(R))``."""
        return _topk.intersection_size_from_radii(self.radii, radius)


def _trivial_flags(sizes: np.ndarray, k: int) -> np.ndarray:
    """bool ``(N, k)``: entry ``[i, e-1]`` is ``e <= sizes[i]``."""
    return np.arange(1, k + 1)[None, :] <= np.asarray(sizes)[:, None]
