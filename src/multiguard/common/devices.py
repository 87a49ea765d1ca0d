"""Choosing the torch device: one resolver, one default ("auto": CUDA when available, else the CPU)."""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_DEVICE", "resolve_device"]

DEFAULT_DEVICE = "auto"


def resolve_device(device: str | torch.device | None = DEFAULT_DEVICE) -> torch.device:
    """``"auto"`` or ``None`` -> ``cuda`` if available, else ``cpu``; any other name -> that torch device.

    Raises ``ValueError`` naming ``device`` for a string torch does not know, or CUDA asked for where there
    is none.
    """
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device: not a torch device: {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device} was requested but CUDA is not available here (use cpu: --device cpu "
                         "on the command line, device='cpu' in Python)")
    return resolved
