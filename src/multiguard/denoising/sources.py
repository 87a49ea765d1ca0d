"""The door for denoisers put in front of a classifier when sampling (``--denoiser`` on certify, predict, attack).

No torch here. ``--denoiser`` takes a denoiser checkpoint file (``multiguard train-denoiser --out``) or
``<source>:<spec>``, a form registered in :data:`DENOISER_SOURCES`. Built in: ``diffusers:<Hugging Face model
id or local folder>``, the one-step diffusion denoiser of :mod:`multiguard.denoising.diffusion` (needs
``pip install 'multiguard[diffusion]'``). A new form is one registration::

    from multiguard.denoising.sources import DENOISER_SOURCES, DenoiserSourceRecord

    @DENOISER_SOURCES.register("blur", record=DenoiserSourceRecord(spec="<radius>"), help="a Gaussian blur")
    def blur(spec, *, sigma, image_size, in_channels, device):
        module = ...                      # an nn.Module (N, C, S, S) -> (N, C, S, S), pixels in [0, 1]
        module.identity = {"radius": float(spec)}   # JSON-able: what a run records and a resume compares
        return module

The record (:class:`DenoiserSourceRecord`) says what the spec after the colon is, for help texts. A source
factory is called as ``factory(spec, sigma=, image_size=, in_channels=, device=)`` with the
certified noise level and image shape, and returns the denoiser with an ``identity`` dict. A run records
``denoiser`` (the ``--denoiser`` value), ``denoiser_settings`` (the identity) and ``denoiser_sha256`` (the
SHA-256 of the identity as sorted JSON: an identity field, so a resume with another model, revision or
timestep is refused).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiguard.common.registry import Registry

__all__ = ["DENOISER_SOURCES", "DenoiserSourceRecord", "denoiser_source", "denoiser_source_forms", "identity_sha256"]


@dataclass(frozen=True)
class DenoiserSourceRecord:
    """What a denoiser source's ``<spec>`` is.

    Attributes:
        spec: the spec after ``<source>:`` in words, for help texts and messages (``"<radius>"``).
    """

    spec: str = "<spec>"


#: ``--denoiser <source>:<spec>`` forms by source name.
DENOISER_SOURCES: Registry[Any, DenoiserSourceRecord] = Registry("denoiser source", argument="--denoiser",
                                                                 record=DenoiserSourceRecord)
DENOISER_SOURCES.register(
    "diffusers", "multiguard.denoising.diffusion:diffusers_denoiser",
    record=DenoiserSourceRecord(spec="<Hugging Face model id or local folder>"),
    help="a pretrained diffusion model's one-step denoiser at the timestep matching sigma "
    "(pip install 'multiguard[diffusion]')")


def denoiser_source(value: str | os.PathLike[str] | None) -> tuple[str, str] | None:
    """``(source, spec)`` when ``value`` is a registered ``<source>:<spec>`` form, ``None`` for a checkpoint file.

    An existing file always counts as a checkpoint (a file name may hold a colon)."""
    if value is None or not isinstance(value, str):
        return None
    source, colon, spec = value.partition(":")
    if not colon or source not in DENOISER_SOURCES or Path(value).is_file():
        return None
    if not spec:
        raise ValueError(f"denoiser: {value!r} names nothing after the colon: "
                         f"{source}:{DENOISER_SOURCES.record(source).spec}")
    return source, spec


def denoiser_source_forms() -> str:
    """The registered forms in words, for help texts: ``diffusers:<...> (what it is); ...``."""
    return "; ".join(f"{e.name}:{e.record.spec} ({e.help})" for e in DENOISER_SOURCES.entries())


def identity_sha256(identity: dict[str, Any]) -> str:
    """SHA-256 of ``identity`` as JSON with sorted keys (what a run compares on resume)."""
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()
