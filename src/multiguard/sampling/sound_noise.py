"""Sound noise: the Gaussian rounded to the 1/255 grid, drawn exactly from uniform 62-bit integers.

Voráček and Hein (ICLR 2023) show that Gaussian noise added in floating point leaves a fingerprint a base
classifier can read, so certificates proved for real numbers need not hold for what a computer samples. The
fix (see ``docs/soundness.md``): inputs lie on the 8-bit grid ``{i / 255}``, the noise is ``round(255 e) / 255``
for ``e ~ N(0, sigma^2)``, and the model sees the grid point ``(x_int + noise_int) / 255``. For x on the grid,
``round(x + e) = x + round(e)``, so this is Gaussian smoothing of the fixed base classifier
``h = f ∘ clamp ∘ round``, and every certificate of the package holds for h unchanged.

How a value is drawn (:class:`RoundedGaussianTable`):

- the cumulative table ``S_j = floor(2^62 * Phi((2k + 1) / (510 sigma)))`` for ``k = -K .. K-1`` is computed
  once per sigma with mpmath at 40 significant digits (no float enters it);
- a word ``u`` uniform on ``[0, 2^62)`` gives the value ``#{j : S_j <= u} - K``: its top 16 bits are drawn
  first and decide the value through a guide table for over 99 % of the words; the other 46 bits are drawn
  only for the rest, whose value ``torch.searchsorted`` finds (:meth:`RoundedGaussianTable.draw`).

Coupled with the exact inversion of the rounded Gaussian by the real ``U = u / 2^62 + (0..1) / 2^62``, the two
values differ only when U falls in one of the gaps ``[S_j / 2^62, Phi_j)`` (each shorter than ``2^-62``) or in
the tails beyond ``+-K`` (K is chosen so each tail holds less than ``2^-64``). :attr:`RoundedGaussianTable.slack`
is the exact upper bound of that probability per value; over n samples of an input the certificate's failure
probability is at most ``alpha + n * dimension * slack`` (:meth:`SoundNoise.alpha_slack`), about 4e-8 for
n = 100 000 CIFAR-sized inputs: recorded, never hidden.
"""

from __future__ import annotations

import functools

import mpmath
import numpy as np
import torch

from multiguard.common.noise_kinds import GRID_TOLERANCE

__all__ = [
    "GRID_LEVELS",
    "WORD_BITS",
    "RoundedGaussianTable",
    "grid_integers",
    "rounded_gaussian_probabilities",
    "rounded_gaussian_table",
]

GRID_LEVELS = 255
"""The grid: every input value is ``i / GRID_LEVELS`` (8-bit images)."""
WORD_BITS = 62
"""Bits of each uniform integer word."""
_GUIDE_BITS = 16
_DIGITS = 40
_TAIL_EXPONENT = 64  # each tail beyond +-K holds less than 2^-64
_AMBIGUOUS = 2**20  # no value: |value| <= K < 2^20 (exact in float32 and int32)


def _boundary_probabilities(sigma: float, half_width: int) -> list:
    """mpmath ``Phi((2k + 1) / (510 sigma))`` for ``k = -K .. K-1`` (the CDF of round(255 e) at k + 1/2)."""
    scale = 2 * GRID_LEVELS * mpmath.mpf(sigma)  # sigma's binary value, exactly
    return [mpmath.ncdf(mpmath.mpf(2 * k + 1) / scale) for k in range(-half_width, half_width)]


def _half_width(sigma: float) -> int:
    """The smallest K with ``1 - Phi((2K + 1) / (510 sigma)) < 2^-64``: the values beyond +-K are lumped."""
    with mpmath.workdps(_DIGITS):
        tail = mpmath.mpf(2) ** -_TAIL_EXPONENT
        z = -mpmath.sqrt(2) * mpmath.erfinv(2 * tail - 1)  # Phi(z) = 1 - tail
        half_width = max(1, int(mpmath.ceil((z * 2 * GRID_LEVELS * mpmath.mpf(sigma) - 1) / 2)))
        while 1 - mpmath.ncdf(mpmath.mpf(2 * half_width + 1) / (2 * GRID_LEVELS * mpmath.mpf(sigma))) >= tail:
            half_width += 1
        return half_width


class RoundedGaussianTable:
    """The exact-draw table of ``round(255 e)`` for ``e ~ N(0, sigma^2)``, values in ``[-K, K]``.

    Attributes:
        sigma: the noise standard deviation in pixel units ([0, 1] images).
        half_width: K.
        cumulative: int64 ``(2K,)`` the table ``S_j`` (non-decreasing, below ``2^62``).
        slack: an upper bound, exact (rounded up), of the probability per value that a draw differs from the
            exactly rounded Gaussian it is coupled to (the gaps below each ``Phi_j`` plus both tails).
    """

    def __init__(self, sigma: float) -> None:
        if not (isinstance(sigma, float | int) and np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"sigma: a positive number, got {sigma!r}")
        self.sigma = float(sigma)
        self.half_width = _half_width(self.sigma)
        scale = mpmath.mpf(2) ** WORD_BITS
        with mpmath.workdps(_DIGITS):
            phis = _boundary_probabilities(self.sigma, self.half_width)
            table, gap = [], mpmath.mpf(0)
            for phi in phis:
                exact = scale * phi
                floor = int(mpmath.floor(exact))
                if exact - floor < mpmath.mpf(10) ** -(_DIGITS - 20) and floor != exact:
                    raise ValueError(f"sigma: {sigma!r} puts a table entry too close to an integer to round safely")
                table.append(floor)
                gap += phi - mpmath.mpf(floor) / scale
            width = 2 * GRID_LEVELS * mpmath.mpf(self.sigma)
            lower_tail = mpmath.ncdf(mpmath.mpf(-2 * self.half_width - 1) / width)
            upper_tail = 1 - mpmath.ncdf(mpmath.mpf(2 * self.half_width + 1) / width)
            slack = gap + lower_tail + upper_tail
            self.slack = float(mpmath.nstr(slack * (1 + mpmath.mpf(10) ** -10), 20, strip_zeros=False))
        self.cumulative = torch.tensor(table, dtype=torch.int64)
        self._guide = self._guide_table()
        self._on_device: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def _guide_table(self) -> torch.Tensor:
        """int32 ``(2^16,)``: the value of every word whose top 16 bits are b, where all of them give one
        value; ``_AMBIGUOUS`` where a table entry falls inside the bucket (those words use the full search)."""
        shift = WORD_BITS - _GUIDE_BITS
        starts = torch.arange(2**_GUIDE_BITS, dtype=torch.int64) << shift
        first = torch.searchsorted(self.cumulative, starts, right=True)
        last = torch.searchsorted(self.cumulative, starts + ((1 << shift) - 1), right=True)
        values = (first - self.half_width).to(torch.int32)
        return torch.where(first == last, values, torch.full_like(values, _AMBIGUOUS))

    def _tables(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The table on ``device`` and the guide table there in ``dtype`` (its values are small integers, exact
        in any dtype holding integers up to 2^20)."""
        if (device, dtype) not in self._on_device:
            self._on_device[device, dtype] = (self.cumulative.to(device), self._guide.to(device=device, dtype=dtype))
        return self._on_device[device, dtype]

    def values_of_words(self, words: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Noise values (in grid steps) of int64 words in ``[0, 2^62)``: ``#{j : S_j <= u} - K``, in ``out``
        (flat, int32 or a float dtype holding the integers exactly; default a new int32 tensor of the words'
        shape)."""
        flat = words.reshape(-1)
        values = torch.empty(flat.shape, dtype=torch.int32, device=words.device) if out is None else out
        cumulative, guide = self._tables(words.device, values.dtype)
        torch.index_select(guide, 0, flat >> (WORD_BITS - _GUIDE_BITS), out=values)
        ambiguous = values == _AMBIGUOUS
        if bool(ambiguous.any()):
            exact = torch.searchsorted(cumulative, flat[ambiguous], right=True) - self.half_width
            values[ambiguous] = exact.to(values.dtype)
        return values.view(words.shape) if out is None else values

    def draw(self, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Fill the contiguous ``target`` (int32, float32 or float64: the values are exact integers there) with
        i.i.d. values, from words drawn by ``generator`` on its device.

        Each word is ``u = hi * 2^46 + lo`` with ``hi`` uniform on 16 bits and ``lo`` on 46 bits, independent,
        so u is uniform on ``[0, 2^62)``. ``hi`` alone decides the value through the guide table for over 99 % of
        the words; ``lo`` is drawn (after all the ``hi``, in order, from the same generator) only for the rest,
        whose value the full table search gives. ``torch.randint`` reduces one 32- or 64-bit draw modulo
        ``2^16`` or ``2^46``, powers of two dividing it: exactly uniform."""
        shift = WORD_BITS - _GUIDE_BITS
        flat = target.view(-1)
        cumulative, guide = self._tables(target.device, target.dtype)
        high = torch.randint(0, 2**_GUIDE_BITS, (flat.numel(),), generator=generator, dtype=torch.int32,
                             device=target.device)
        torch.index_select(guide, 0, high, out=flat)
        positions = (flat == _AMBIGUOUS).nonzero().squeeze(1)
        if positions.numel():
            low = torch.randint(0, 2**shift, (positions.numel(),), generator=generator, dtype=torch.int64,
                                device=target.device)
            words = (high.index_select(0, positions).to(torch.int64) << shift) | low
            exact = torch.searchsorted(cumulative, words, right=True) - self.half_width
            flat.index_copy_(0, positions, exact.to(flat.dtype))
        return target


@functools.lru_cache(maxsize=16)
def rounded_gaussian_table(sigma: float) -> RoundedGaussianTable:
    """The table for ``sigma``, built once per process."""
    return RoundedGaussianTable(sigma)


def rounded_gaussian_probabilities(sigma: float, half_width: int) -> np.ndarray:
    """float64 ``(2K + 1,)``: ``Pr(round(255 e) = k)`` for ``k = -K .. K``, the two end values holding their
    tails (what :class:`RoundedGaussianTable` aims at), from SciPy (an independent computation, for tests)."""
    from scipy.stats import norm

    edges = (2 * np.arange(-half_width, half_width) + 1) / (2 * GRID_LEVELS * sigma)
    cdf = np.concatenate(([0.0], norm.cdf(edges), [1.0]))
    return np.diff(cdf)


def grid_integers(tensor: torch.Tensor) -> torch.Tensor:
    """int32 ``i`` of a float tensor of grid values ``i / 255`` (to within
    :data:`~multiguard.common.noise_kinds.GRID_TOLERANCE` of a step, the error of any float dtype that stores
    them); refuses, in one line naming the grid, a value off it."""
    if not tensor.is_floating_point():
        raise ValueError(f"x: sound noise takes float pixels i/255 on the 1/255 grid, got dtype {tensor.dtype}")
    scaled = tensor.detach().to(torch.float64) * GRID_LEVELS
    rounded = torch.round(scaled)
    if tensor.numel():
        error = (scaled - rounded).abs()
        worst = float(error.max())
        if not worst <= GRID_TOLERANCE:
            flat = int(torch.argmax(torch.nan_to_num(error, nan=np.inf)).item())
            value = float(tensor.reshape(-1)[flat])
            raise ValueError(
                f"x: off the 1/255 grid (value {value!r} at flat position {flat} is {worst:.3g} steps from "
                "the nearest i/255); sound noise needs 8-bit pixels: pass x = (255 * x).round() / 255 and "
                "reduce every radius by ||x - x_rounded||, or use float noise (--noise float; noise='float' in Python)"
            )
    return rounded.to(torch.int32)
