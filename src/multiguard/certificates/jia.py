"""The baseline of Jia et al. (ICLR 2020): certified top-k radii of single-label smoothing read as a multi-label
certificate (each label of L certified on its own). NumPy/SciPy only."""

from __future__ import annotations

import numpy as np
from scipy import special

from multiguard.certificates.bounds import _check_bounds
from multiguard.certificates.topk import _largest_radius, _sizes_from_radii
from multiguard.common.validation import check_int, check_positive

__all__ = ["jia_certified_intersection_size", "jia_certified_radii", "jia_intersection_size_from_radii"]


def jia_certified_radii(
    lower: object, upper: object, labels: object, *, k: int, sigma: float, k_prime: int = 1
) -> np.ndarray:
    """Jia et al. (ICLR 2020) top-k certified radius of each label of L separately (the paper's baseline).

    For label l in L, with p = lower_l and o_1 >= ... >= o_k the k largest upper bounds among all other labels
    (each capped at 1 - p), l stays in the smoothed top-k within radius max_t r_t, where r_t is the largest R
    with ``Phi(Phi^-1(p) - R/sigma) > Phi(Phi^-1(S_t) + R/sigma) / t`` and
    ``S_t = min(o_{k-t+1} + ... + o_k, 1 - p)``. The certificate assumes a base classifier that predicts one
    label (k' = 1): any other ``k_prime`` is rejected.

    Returns ``(N, c)`` radii (``(c,)`` for one row): 0 for labels outside L and where the condition fails at
    R = 0, ``inf`` when fewer than k other labels exist (the label is always in the top-k).
    """
    lower_arr, upper_arr, mask, single = _check_bounds(lower, upper, labels)
    num, c = lower_arr.shape
    k = check_int(k, "k", 1, c)
    sigma = check_positive(sigma, "sigma")
    if k_prime != 1:
        raise ValueError(f"k_prime must be 1 for the Jia et al. baseline (a top-1 base classifier), got {k_prime}")
    radii = np.zeros((num, c))
    if k >= c:  # fewer than k other labels: every label is always among the top k
        radii[mask] = np.inf
        return radii[0] if single else radii
    rows, cols = np.nonzero(mask)
    p = lower_arr[rows, cols]
    # The k largest upper bounds of the other labels: the k + 1 largest of the row, minus the label itself.
    order = np.argsort(-upper_arr, axis=1, kind="stable")[:, : k + 1]  # (N, k+1)
    top = np.take_along_axis(upper_arr, order, axis=1)[rows]  # (M, k+1)
    is_self = order[rows] == cols[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)  # column to leave out
    keep = np.arange(k + 1)[None, :] != drop[:, None]
    others = top[keep].reshape(-1, k)  # o_1 >= ... >= o_k
    others = np.minimum(others, (1.0 - p)[:, None])
    tails = np.cumsum(others[:, ::-1], axis=1)  # tails[:, t-1] = o_{k-t+1} + ... + o_k
    s_t = np.minimum(tails, (1.0 - p)[:, None])
    t = np.arange(1, k + 1)
    lhs_x = special.ndtri(p)[:, None]
    t_units = _largest_radius(
        lhs_x, np.zeros_like(lhs_x), special.ndtri(np.clip(s_t, 0.0, 1.0)), np.broadcast_to(-np.log(t), s_t.shape)
    )
    radii[rows, cols] = sigma * t_units
    return radii[0] if single else radii


def jia_intersection_size_from_radii(radii: object, radius: object) -> np.ndarray:
    """Number of labels whose Jia et al. radius exceeds R, from :func:`jia_certified_radii`'s ``(N, c)`` output.

    Returns int64 ``(N,)`` for a scalar radius and ``(N, len(radius))`` for a 1-D array.
    """
    return _sizes_from_radii(radii, radius, "(N, c) or (c,)", lambda holds: holds.sum(axis=1))


def jia_certified_intersection_size(
    lower: object, upper: object, labels: object, *, k: int, sigma: float, radius: object, k_prime: int = 1
) -> np.ndarray:
    """e_Jia(R): the number of labels of L whose Jia et al. radius exceeds R. Shapes as
    :func:`certified_intersection_size`."""
    radii = jia_certified_radii(lower, upper, labels, k=k, sigma=sigma, k_prime=k_prime)
    return jia_intersection_size_from_radii(radii, radius)
