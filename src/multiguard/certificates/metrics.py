"""Certified precision, recall and F1 at a radius (Theorem 1 read as metrics), and the part of a
certificate that holds by counting alone (``trivial_intersection_size``). NumPy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from multiguard.certificates.bounds import _as_label_mask
from multiguard.common.validation import check_int

__all__ = ["CertifiedMetrics", "certified_metrics", "trivial_intersection_size"]


@dataclass(frozen=True)
class CertifiedMetrics:
    """Certified top-k precision, recall and F1, averaged over inputs, one value per radius.

    ``precision``, ``recall`` and ``f1`` are float arrays of shape ``(R,)`` (or floats for a ``(N,)`` sizes
    array). Inputs with an empty label set count as recall 0 and F1 0; there are ``num_empty`` of them among
    ``num_inputs``.

    ``trivial_precision``, ``trivial_recall`` and ``trivial_f1`` (same shapes) are the part of each figure that
    holds by counting alone (:func:`trivial_intersection_size`: any classifier, any perturbation, any radius
    gets it); ``num_trivial`` inputs have such a part. A figure equal to its trivial part says nothing about
    the model (keep k well below the number of classes).
    """

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_inputs: int
    num_empty: int
    trivial_precision: np.ndarray | float = 0.0
    trivial_recall: np.ndarray | float = 0.0
    trivial_f1: np.ndarray | float = 0.0
    num_trivial: int = 0


def trivial_intersection_size(labels: object, k: int) -> np.ndarray:
    """What any top-k keeps of L by counting alone: int64 ``(N,)`` (or a scalar for one ``(c,)`` mask).

    k labels out of c leave out c - k of them, so at least ``|L| - (c - k)`` labels of L are in *every*
    top-k, whatever the classifier and the perturbation. A certified size ``e <= max(0, |L| - (c - k))``
    (which Theorem 1 certifies at every radius) says nothing about the model: keep k well below c.
    """
    array = np.asarray(labels)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"labels must have shape (N, c) or (c,) with c >= 1, got shape {array.shape}")
    mask = _as_label_mask(array, np.atleast_2d(array).shape)
    num_classes = mask.shape[1]
    k = check_int(k, "k", 1, num_classes)
    sizes = np.maximum(0, mask.sum(axis=1) - (num_classes - k)).astype(np.int64)
    return sizes[0] if array.ndim == 1 else sizes


def certified_metrics(sizes: object, labels: object, k: int) -> CertifiedMetrics:
    """Mean certified top-k precision e/k, recall e/|L| and F1 2e/(|L| + k) over inputs (section 4.1).

    ``sizes`` is ``(N,)`` or ``(N, R)`` certified intersection sizes (e.g. from
    :func:`certified_intersection_size`), ``labels`` the ``(N, c)`` masks of L. The mean is over inputs, as
    the paper defines it.
    """
    sizes_arr = np.asarray(sizes)
    if sizes_arr.dtype.kind not in "biu":
        if sizes_arr.dtype.kind != "f" or (sizes_arr != np.round(sizes_arr)).any():
            raise ValueError("sizes must be whole numbers")
    sizes_arr = sizes_arr.astype(np.float64)
    if sizes_arr.ndim not in (1, 2):
        raise ValueError(f"sizes must have shape (N,) or (N, R), got {sizes_arr.shape}")
    mask = np.asarray(labels)
    if mask.ndim != 2 or mask.shape[0] != sizes_arr.shape[0]:
        raise ValueError(f"labels must have shape (N, c) with N = {sizes_arr.shape[0]}, got {mask.shape}")
    mask = _as_label_mask(mask, mask.shape)
    k = check_int(k, "k", 1, mask.shape[1])
    if sizes_arr.shape[0] == 0:
        raise ValueError("sizes must hold at least one input")
    d = mask.sum(axis=1).astype(np.float64)
    if (sizes_arr < 0).any() or (sizes_arr > np.minimum(d, k).reshape((-1,) + (1,) * (sizes_arr.ndim - 1))).any():
        raise ValueError("sizes must lie in [0, min(|L|, k)] for each input")
    d_b = d.reshape((-1,) + (1,) * (sizes_arr.ndim - 1))
    trivial = np.maximum(0.0, d - (mask.shape[1] - k))
    floor = np.minimum(sizes_arr, trivial.reshape(d_b.shape))
    precision, recall, f1 = _ratios(sizes_arr, d_b, k)
    trivial_precision, trivial_recall, trivial_f1 = _ratios(floor, d_b, k)
    return CertifiedMetrics(
        precision=precision,
        recall=recall,
        f1=f1,
        num_inputs=int(sizes_arr.shape[0]),
        num_empty=int((d == 0).sum()),
        trivial_precision=trivial_precision,
        trivial_recall=trivial_recall,
        trivial_f1=trivial_f1,
        num_trivial=int((trivial > 0).sum()),
    )


def _ratios(sizes: np.ndarray, d_b: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean e/k, e/|L| (0 for an empty L) and 2e/(|L| + k) over inputs (axis 0)."""
    recall = np.divide(sizes, d_b, out=np.zeros_like(sizes), where=d_b > 0)
    return (sizes / k).mean(axis=0), recall.mean(axis=0), (2.0 * sizes / (d_b + k)).mean(axis=0)
