"""The two noise kinds behind the engine's one door: how a noise block is drawn and how it meets an input.

:class:`SamplingEngine <multiguard.sampling.engine.SamplingEngine>` draws every noise block from a generator
seeded by ``(seed, index, block, stream)`` and asks its noise kind three things: the dtypes of the noise and of
the inputs it adds to, how to fill a block (:meth:`draw`) and how to form the model's input from noise and input
(:meth:`combine`). So both kinds keep the engine's reproducibility: counts depend on ``(seed, index)`` only, never
on the batch size, the other inputs of a batch, shards or resume points.

- :class:`FloatNoise` (``"float"``): ``x + sigma * z`` in the model's dtype, z from ``normal_``.
- :class:`SoundNoise` (``"sound"``): ``(x_int + noise_int) / 255`` with ``x_int`` the 8-bit grid integers of x and
  ``noise_int`` the rounded Gaussian drawn exactly (:mod:`multiguard.sampling.sound_noise`); inputs off the 1/255
  grid are refused in one line.
"""

from __future__ import annotations

import torch

from multiguard.common.noise_kinds import check_noise
from multiguard.sampling.sound_noise import GRID_LEVELS, grid_integers, rounded_gaussian_table

__all__ = ["FloatNoise", "SoundNoise", "make_noise"]


class FloatNoise:
    """Gaussian noise ``sigma * z`` drawn and added in the model's floating dtype (the textbook sampler)."""

    name = "float"

    def separate_output(self, dtype: torch.dtype) -> bool:
        """Whether the model's input needs its own buffer: no, it is formed in the noise buffer itself."""
        return False

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma

    def noise_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of a noise block for a model of floating dtype ``dtype``."""
        return dtype

    def input_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype inputs are added in."""
        return dtype

    def inputs(self, tensor: torch.Tensor) -> torch.Tensor:
        """The inputs as noise is added to them: as given."""
        return tensor

    def draw(self, target: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``target`` with standard normal values."""
        target.normal_(generator=generator)

    def combine(self, noise: torch.Tensor, row: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``noise <- row + sigma * noise`` in place (``out`` is ``noise``); returns it."""
        return noise.mul_(self.sigma).add_(row)

    def alpha_slack(self, n: int, dimension: int) -> float:
        """What the sampler adds to a certificate's failure probability over n samples: nothing it knows of."""
        return 0.0


class SoundNoise:
    """The Gaussian of standard deviation sigma rounded to the 1/255 grid, added in integers to grid inputs.

    The integers (noise values and the inputs' ``255 x``) are held in float32 or float64 when the model takes
    that dtype: every one of them and every sum is an integer below 2^24, so exact there, and the sum is
    the integer sum; then ``/ 255`` (correctly rounded) gives the model's float of the grid point. For other
    model dtypes (bf16, fp16: not exact beyond 256 or 2048) they are int32 and the result is cast."""

    name = "sound"

    def __init__(self, sigma: float) -> None:
        self.sigma = sigma
        self.table = rounded_gaussian_table(float(sigma))

    @staticmethod
    def _exact(dtype: torch.dtype) -> bool:
        return dtype in (torch.float32, torch.float64)

    def separate_output(self, dtype: torch.dtype) -> bool:
        """Whether the model's input needs its own buffer (a model dtype that cannot hold the integers)."""
        return not self._exact(dtype)

    def noise_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return dtype if self._exact(dtype) else torch.int32

    def input_dtype(self, dtype: torch.dtype) -> torch.dtype:
        return self.noise_dtype(dtype)

    def inputs(self, tensor: torch.Tensor) -> torch.Tensor:
        """int32 grid integers ``255 x`` of the inputs; an input off the 1/255 grid is refused."""
        return grid_integers(tensor)

    def draw(self, target: torch.Tensor, generator: torch.Generator) -> None:
        """Fill ``target`` with rounded-Gaussian values in grid steps (exact integers in its dtype)."""
        self.table.draw(target, generator)

    def combine(self, noise: torch.Tensor, row: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """``out <- (row + noise) / 255``: the grid point, the integer sum, as the model's float."""
        if out is noise:
            return noise.add_(row).div_(GRID_LEVELS)
        return out.copy_(noise.add_(row)).div_(GRID_LEVELS)

    def alpha_slack(self, n: int, dimension: int) -> float:
        """An upper bound of the probability that any of the ``n * dimension`` values differs from the exactly
        rounded Gaussian it is coupled to: add it to alpha (see :mod:`multiguard.sampling.sound_noise`)."""
        return n * dimension * self.table.slack


def make_noise(noise: str, sigma: float) -> FloatNoise | SoundNoise:
    """The noise kind named ``noise`` (``"float"`` or ``"sound"``) at standard deviation ``sigma``."""
    return {"float": FloatNoise, "sound": SoundNoise}[check_noise(noise)](sigma)
