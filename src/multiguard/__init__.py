"""MultiGuard: provably robust multi-label classification by randomized smoothing.

The top-level API, in the order a user meets it::

    import multiguard

    smoothed = multiguard.smoothed_from_checkpoint("model.pt")      # or multiguard.MultiGuard(model, ...)
    dataset = multiguard.get_dataset("multidigits", split="test")
    multiguard.certify_dataset(smoothed, dataset, "run", n=1000, num_inputs=100)   # a RUN_DIR
    multiguard.make_report(["run"], "report", k=[3])                # curves.csv, summary.md, plots
    run = multiguard.load_run("run")                                # the stored counts

The names are loaded on first use (PEP 562), so ``import multiguard``, ``import multiguard.certificates.topk``
or ``multiguard report`` never import torch: only the names that run a model (:class:`MultiGuard`,
:class:`Certificate`, :class:`Prediction`, :func:`load_checkpoint`, :func:`smoothed_from_checkpoint`,
:func:`get_dataset`, :func:`load_image`) need it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.data import get_dataset
    from multiguard.data._common import load_image
    from multiguard.evaluation.report import make_report
    from multiguard.models.checkpoints import load_checkpoint, smoothed_from_checkpoint
    from multiguard.runs.folder import Run, load_run
    from multiguard.runs.in_memory import certify_dataset
    from multiguard.sampling.certificate import Certificate, Prediction
    from multiguard.sampling.smoothed import MultiGuard

__version__ = "0.2.0"

# name -> the module that defines it (relative to the package)
_LAZY = {
    "MultiGuard": "sampling.smoothed",
    "Certificate": "sampling.certificate",
    "Prediction": "sampling.certificate",
    "StopRule": "certificates.stop_rule",
    "load_checkpoint": "models.checkpoints",
    "smoothed_from_checkpoint": "models.checkpoints",
    "get_dataset": "data",
    "load_image": "data._common",
    "certify_dataset": "runs.in_memory",
    "load_run": "runs.folder",
    "Run": "runs.folder",
    "make_report": "evaluation.report",
}

__all__ = [
    "Certificate", "MultiGuard", "Prediction", "Run", "StopRule", "__version__", "certify_dataset", "get_dataset",
    "load_checkpoint", "load_image", "load_run", "make_report", "smoothed_from_checkpoint",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
