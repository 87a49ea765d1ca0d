"""Speed levers for the base classifier: reduced precision, channels_last memory format and ``torch.compile``.

A :class:`SamplingMode` says how the base classifier's forward pass runs:

- ``precision``: ``"fp32"`` (no autocast), ``"bf16"`` or ``"fp16"`` (the forward under ``torch.autocast``
  with that dtype). The noise is still drawn and added to the input in the model's parameter dtype (fp32
  for an fp32 model) before any cast, so the input the classifier receives is exactly what the noise
  defines; autocast only changes how the classifier computes its scores.
- ``channels_last``: 4-D batches (and the module) in channels_last memory format.
- ``compile``: the model compiled by ``torch.compile`` into one graph (:class:`CompiledModel`), run eagerly
  instead where compiling fails, with one line saying so.

Reduced precision (and, to the last bit, compilation and memory format) changes the base classifier: a
certificate holds for the classifier that was run, in the mode it was run in. Any fixed function is a valid
base classifier, so every mode is sound as long as the same mode is used wherever the certificate is claimed;
that is why the mode is recorded with counts and predictions (:meth:`SamplingMode.as_metadata`).

``precision="auto"`` (:func:`auto_precision`) picks what is fast and safe on the device: bf16 +
channels_last on CUDA GPUs with native bf16 (compute capability 8.0 or later) and on CPUs with native bf16
instructions (AVX512-BF16 or AMX-BF16), fp32 elsewhere.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from multiguard.common.validation import check_bool, check_choice
from multiguard.sampling.modes import AUTO_HELP, PRECISION_MODES, describe_mode, resolved_precisions

__all__ = [
    "AUTO_HELP",
    "PRECISION_MODES",
    "CompiledModel",
    "SamplingMode",
    "auto_precision",
    "has_native_bf16",
    "resolve_mode",
]

logger = logging.getLogger("multiguard")



def __getattr__(name: str) -> object:
    if name == "PRECISIONS":  # the registry's names at each use (a registered mode is a choice too)
        return PRECISION_MODES.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _autocast_dtype(precision: str) -> torch.dtype | None:
    """The ``torch.autocast`` dtype of a resolved precision mode (its registry entry names it)."""
    name = PRECISION_MODES.record(precision).autocast_dtype
    return None if name is None else getattr(torch, name)

# /proc/cpuinfo flags of native bf16 arithmetic (x86): AVX512-BF16 dot products, AMX-BF16 tiles.
_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


# ---------------------------------------------------------------------------------------------- the device


def _cpuinfo_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def has_native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes in bf16 natively (not by emulation through fp32).

    CUDA: compute capability 8.0 or later (Ampere onwards). CPU: torch's own probe of AVX512-BF16
    (``torch.cpu._is_avx512_bf16_supported``, where this torch has it) or the ``avx512_bf16`` / ``amx_bf16``
    flags of ``/proc/cpuinfo``. Any other device: ``False``.
    """
    device = torch.device(device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return False
        return torch.cuda.get_device_capability(device) >= (8, 0)
    if device.type != "cpu":
        return False
    probe = getattr(getattr(torch, "cpu", None), "_is_avx512_bf16_supported", None)
    if probe is not None:
        try:
            if probe():
                return True
        except RuntimeError:
            pass
    return bool(_CPU_BF16_FLAGS & _cpuinfo_flags())


def auto_precision(device: torch.device | str) -> tuple[str, bool]:
    """``(precision, channels_last)`` that ``precision="auto"`` means on ``device`` (see :data:`AUTO_HELP`)."""
    return ("bf16", True) if has_native_bf16(device) else ("fp32", False)


# ------------------------------------------------------------------------------------------------- the mode


@dataclass(frozen=True)
class SamplingMode:
    """How the base classifier's forward runs: a resolved ``precision`` (fp32, bf16 or fp16), the
    channels_last memory format, and ``torch.compile``. Part of the base classifier's identity."""

    precision: str = "fp32"
    channels_last: bool = False
    compile: bool = False

    def __post_init__(self) -> None:
        check_choice(self.precision, "precision", resolved_precisions())
        check_bool(self.channels_last, "channels_last")
        check_bool(self.compile, "compile")

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The ``torch.autocast`` dtype of the forward, or ``None`` for fp32 (no autocast)."""
        return _autocast_dtype(self.precision)

    def describe(self) -> str:
        """One short phrase, e.g. ``"bf16 + channels_last + compile"`` or ``"fp32"``."""
        return describe_mode(self.as_metadata())

    def as_metadata(self) -> dict[str, object]:
        """The JSON-able fields that identify the mode: ``precision``, ``channels_last``, ``compile``."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


def resolve_mode(
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
    device: torch.device | str = "cpu",
) -> SamplingMode:
    """The :class:`SamplingMode` for the arguments a user gives, on ``device``.

    Args:
        precision: a name of :data:`~multiguard.sampling.modes.PRECISION_MODES`; ``"auto"`` becomes
            :func:`auto_precision` ``(device)``.
        channels_last: ``True``/``False``, or ``None`` for what the precision implies (on with ``auto``
            where auto picks bf16, off otherwise).
        compile: run the model through ``torch.compile`` (:class:`CompiledModel`).
        device: where the model runs (``auto`` is resolved for this device).

    Raises:
        ValueError naming ``precision``, ``channels_last`` or ``compile``.
    """
    check_choice(precision, "precision", PRECISION_MODES.names())
    if channels_last is not None:
        check_bool(channels_last, "channels_last")
    check_bool(compile, "compile")
    implied_channels_last = False
    if precision == "auto":
        precision, implied_channels_last = auto_precision(device)
    return SamplingMode(
        precision=precision,
        channels_last=implied_channels_last if channels_last is None else bool(channels_last),
        compile=bool(compile),
    )


# --------------------------------------------------------------------------------------------- compilation


@contextlib.contextmanager
def _quiet_cuda_probe(device: torch.device) -> Iterator[None]:
    """Off CUDA, silence torch's "No CUDA runtime is found" warning that the C++ build of a CPU graph logs."""
    probe = logging.getLogger("torch.utils.cpp_extension")
    level = probe.level
    if device.type != "cuda":
        probe.setLevel(logging.ERROR)
    try:
        yield
    finally:
        probe.setLevel(level)


class CompiledModel(torch.nn.Module):
    """``model`` compiled by ``torch.compile`` into one whole graph with static shapes, or ``model`` run
    eagerly where compiling it fails.

    Compilation happens at the first call, under the caller's contexts (inference mode, autocast, eval
    mode, memory format), with inductor's freezing on: the weights are taken as constants (BatchNorm folded
    into convolutions, oneDNN weight prepacking), so the compiled model must not be trained or edited
    afterwards (build a new MultiGuard instead). The first call is timed: :attr:`compile_seconds` is the
    wall time of that first call (tracing, code generation and one forward). If compiling raises and the
    eager model succeeds on the same batch, the model runs eagerly from then on, :attr:`fallback_reason`
    says why and one line is logged (logger ``multiguard``); if the eager model fails too, its own error is
    raised.

    Batches ``(B, *input_shape)``: the graph is compiled for the first batch's size B0, and a smaller batch
    is padded with zeros to B0, a larger one run in chunks of B0, so the graph compiles once. This assumes
    that each row's scores do not depend on the other rows of the batch, which holds for a model in eval
    mode (where the sampling engine runs it). Scores are ``(B, c)``.
    """

    def __init__(self, model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.model = model  # registered as a submodule when it is a module: eval() and to() reach it
        # Kept out of the module tree: the compiled wrapper shares the model's parameters.
        self.__dict__["_compiled"] = torch.compile(model, fullgraph=True, dynamic=False)
        self.compiled: bool | None = None  # None until the first call, then whether the graph compiled
        self.compile_seconds: float | None = None
        self.fallback_reason: str | None = None
        self.compiled_batch_size: int | None = None

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.compiled is False:
            return self.model(batch)
        if self.compiled is None:
            return self._first_call(batch)
        size, rows = self.compiled_batch_size, batch.shape[0]
        if rows == size:
            return self._compiled(batch)
        if rows < size:
            padding = torch.zeros((size - rows, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
            padded = torch.cat((batch, padding))
            if batch.ndim == 4 and not batch.is_contiguous() and batch.is_contiguous(
                memory_format=torch.channels_last
            ):
                padded = padded.contiguous(memory_format=torch.channels_last)
            return self._compiled(padded)[:rows]
        return torch.cat([self.forward(chunk) for chunk in batch.split(size)])

    def _first_call(self, batch: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        try:
            import torch._inductor.config as inductor_config

            # Freezing folds the (fixed) weights into the graph: BatchNorm into the convolution, weights
            # prepacked for oneDNN, ReLU fused. It is read when the graph compiles, which is now.
            with inductor_config.patch(freezing=True), _quiet_cuda_probe(batch.device):
                scores = self._compiled(batch)
        except Exception as error:  # dynamo, inductor and the C compiler raise many types
            scores = self.model(batch)  # the model's own error, if it has one, is raised here
            self.compiled = False
            first_line = (str(error).strip().splitlines() or [""])[0]
            self.fallback_reason = f"{type(error).__name__}: {first_line}"[:300]
            logger.warning("torch.compile failed (%s); running the model without compiling", self.fallback_reason)
            return scores
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        self.compile_seconds = time.perf_counter() - start
        self.compiled = True
        self.compiled_batch_size = batch.shape[0]
        return scores
