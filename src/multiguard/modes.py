"""Sampling modes in words, without torch: the ``precision`` names, what ``auto`` picks, and the mode fields
a RUN_DIR records (read by :mod:`multiguard.runs`, :mod:`multiguard.report` and the command line; the
torch side is :mod:`multiguard.acceleration`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["AUTO_HELP", "MODE_DEFAULTS", "PRECISIONS", "describe_mode"]

#: The values ``precision`` accepts; ``auto`` is resolved per device (:func:`multiguard.acceleration.auto_precision`).
PRECISIONS = ("fp32", "bf16", "fp16", "auto")

#: What ``auto`` picks, in words (for help texts).
AUTO_HELP = (
    "auto picks bf16 + channels_last on CUDA GPUs with native bf16 (compute capability >= 8.0) and on CPUs "
    "with native bf16 instructions (AVX512-BF16 or AMX-BF16), fp32 elsewhere"
)

#: The mode fields of a RUN_DIR's metadata and the values a run written before they existed was sampled with.
MODE_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": False, "compile": False}


def describe_mode(metadata: dict[str, Any]) -> str:
    """The mode recorded in ``metadata`` in words, e.g. ``"bf16 + channels_last + compile"`` or ``"fp32"``
    (missing fields take :data:`MODE_DEFAULTS`)."""
    mode = {name: metadata.get(name, default) for name, default in MODE_DEFAULTS.items()}
    return " + ".join([str(mode["precision"])] + [name for name in ("channels_last", "compile") if mode[name]])
