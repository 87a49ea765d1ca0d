"""The kinds of smoothing noise, by name, and the line every result prints for each. No torch.

``"float"``: Gaussian noise drawn and added in floating point (the textbook sampler; Voráček and Hein, ICLR 2023,
show a base classifier can read its rounding fingerprint, so its certificates are those of real arithmetic).
``"sound"``: the Gaussian rounded to the 1/255 grid and added in integers
(:mod:`multiguard.sampling.sound_noise`), for inputs on that grid: the certificates hold for the classifier a
computer runs. See ``docs/soundness.md``.
"""

from __future__ import annotations

import numpy as np

from multiguard.common.validation import check_choice

__all__ = ["DEFAULT_NOISE", "GRID_TOLERANCE", "IMAGE_DEFAULT_NOISE", "NOISE_KINDS", "check_noise", "describe_noise",
           "off_grid_rows"]

NOISE_KINDS = {
    "float": "Gaussian in floating point (certificates of real arithmetic, not sound in floating point)",
    "sound": "rounded Gaussian on the 1/255 grid",
}
"""Each noise kind and what it is, in one line."""

DEFAULT_NOISE = "float"
"""The noise of the Python API when none is named (``MultiGuard(...)`` takes any tensor, on the grid or not)."""

GRID_TOLERANCE = 1e-3
"""How far (in steps of 1/255) a pixel may lie from the grid and still count as on it: the error of any float dtype
that stores ``i / 255``."""

IMAGE_DEFAULT_NOISE = "sound"
"""The noise of the command line (certify, predict, attack, demo, serve: 8-bit images), when none is named:
sound noise certified within half a point of float noise at the same time per sample on the demo
(benchmarks/README.md); ``--noise float`` is the opt-out (e.g. for 16-bit images, which are off the grid)."""


def check_noise(value: object, name: str = "noise") -> str:
    """``value`` if it names a noise kind; else a one-line ValueError naming ``name`` and the choices."""
    return check_choice(value, name, tuple(NOISE_KINDS))


def describe_noise(noise: str, shared: bool = False) -> str:
    """The line results print: ``"sound, rounded Gaussian on the 1/255 grid"`` (plus the sharing, if any)."""
    text = f"{noise}, {NOISE_KINDS[noise]}"
    return text + "; one noise block shared by every input of a batch" if shared else text


def off_grid_rows(images: object) -> np.ndarray:
    """bool ``(N,)``: which of ``images`` ``(N, ...)`` (pixels in [0, 1], any float array) have a pixel off the
    1/255 grid by more than :data:`GRID_TOLERANCE` of a step (a 16-bit or float image), where sound noise is not
    defined."""
    array = np.asarray(images, dtype=np.float64)
    scaled = array.reshape(len(array), -1) * 255.0
    return np.abs(scaled - np.round(scaled)).max(axis=1, initial=0.0) > GRID_TOLERANCE
