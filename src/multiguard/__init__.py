"""MultiGuard: provably robust multi-label classification by randomized smoothing.

The top-level names are loaded on first use (PEP 562), so ``import multiguard.certificates.topk`` or
``multiguard report`` never import torch: only :class:`MultiGuard`, :class:`Certificate` and
:class:`Prediction` need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from multiguard.sampling.certificate import Certificate, Prediction
    from multiguard.sampling.smoothed import MultiGuard

__all__ = ["Certificate", "MultiGuard", "Prediction", "__version__"]

__version__ = "0.2.0"

_LAZY = {"Certificate": "sampling.certificate", "MultiGuard": "sampling.smoothed", "Prediction": "sampling.certificate"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
