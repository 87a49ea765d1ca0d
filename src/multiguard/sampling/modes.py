"""The one home of sampling modes: the precision-mode registry, what ``auto`` picks, and the mode fields a
RUN_DIR records. No torch here (the command line reads :data:`PRECISION_MODES` for its choices and help; the
torch side, :class:`~multiguard.sampling.acceleration.SamplingMode` and ``torch.compile``, is in
:mod:`multiguard.sampling.acceleration`, which reads the autocast dtype of each mode from this registry).

A precision mode is one entry, its facts a :class:`PrecisionRecord`::

    PRECISION_MODES.register("fp8", "fp8", help="...", record=PrecisionRecord(autocast_dtype="float8_e4m3fn"))

``autocast_dtype`` names the ``torch`` dtype of the forward's ``torch.autocast`` (``None``: no autocast);
``resolved=False`` marks a mode resolved per device (``auto``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from multiguard.common.registry import Registry

__all__ = ["AUTO_HELP", "MODE_DEFAULTS", "PRECISION_MODES", "PrecisionRecord", "describe_mode", "resolved_precisions"]

#: What ``auto`` picks, in words (for help texts).
AUTO_HELP = (
    "auto picks bf16 + channels_last on CUDA GPUs with native bf16 (compute capability >= 8.0) and on CPUs "
    "with native bf16 instructions (AVX512-BF16 or AMX-BF16), fp32 elsewhere"
)



@dataclass(frozen=True)
class PrecisionRecord:
    """What a precision mode is.

    Attributes:
        autocast_dtype: the name of the ``torch`` dtype of the forward's ``torch.autocast`` (``"bfloat16"``);
            ``None``: no autocast.
        resolved: ``False`` for a mode resolved per device (``auto``), which a run never records.
    """

    autocast_dtype: str | None = None
    resolved: bool = True


#: The precision modes of the base classifier's forward pass (``--precision``); the target is the name a
#: run records.
PRECISION_MODES: Registry[str, PrecisionRecord] = Registry("precision", argument="--precision", record=PrecisionRecord)
PRECISION_MODES.register("fp32", "fp32", help="full precision, no autocast", record=PrecisionRecord())
PRECISION_MODES.register("bf16", "bf16", help="the forward under torch.autocast in bfloat16",
                         record=PrecisionRecord(autocast_dtype="bfloat16"))
PRECISION_MODES.register("fp16", "fp16", help="the forward under torch.autocast in float16",
                         record=PrecisionRecord(autocast_dtype="float16"))
PRECISION_MODES.register("auto", "auto", help=AUTO_HELP, record=PrecisionRecord(resolved=False))


def resolved_precisions() -> tuple[str, ...]:
    """The precisions a resolved mode may have (every registered one but ``auto``-like entries)."""
    return tuple(e.name for e in PRECISION_MODES.entries() if e.record.resolved)


def __getattr__(name: str) -> Any:
    if name == "PRECISIONS":  # read from the registry at each use, so that a registered mode is a choice too
        return PRECISION_MODES.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


#: The mode fields of a RUN_DIR's metadata and the values a run written before they existed was sampled with.
MODE_DEFAULTS: dict[str, Any] = {"precision": "fp32", "channels_last": False, "compile": False}


def describe_mode(metadata: dict[str, Any]) -> str:
    """The mode recorded in ``metadata`` in words, e.g. ``"bf16 + channels_last + compile"`` or ``"fp32"``
    (missing fields take :data:`MODE_DEFAULTS`)."""
    mode = {name: metadata.get(name, default) for name, default in MODE_DEFAULTS.items()}
    return " + ".join([str(mode["precision"])] + [name for name in ("channels_last", "compile") if mode[name]])
