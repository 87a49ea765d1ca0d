"""The registry of denoiser architectures (``train-denoiser --arch NAME``) and what ``--arch`` accepts for a
denoiser, in words. No torch here.

An entry's target is a factory ``factory(in_channels, **options) -> nn.Module`` mapping ``(N, C, S, S)`` to the
same shape (a class such as :class:`multiguard.denoising.networks.DnCNN`), its record a
:class:`DenoiserArchitectureRecord`: the options it takes (``--arch-option KEY=VALUE``), the least value of each
and the number the image side must be a multiple of; ``train-denoiser`` checks them before it reads any data::

    DENOISER_ARCHITECTURES.register("smooth", Smooth, record=DenoiserArchitectureRecord(options=("width",)))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from multiguard.common.registry import Registry
from multiguard.common.validation import quoted_alternatives

__all__ = ["DENOISER_ARCHITECTURES", "DenoiserArchitectureRecord", "denoiser_arch_forms"]


@dataclass(frozen=True)
class DenoiserArchitectureRecord:
    """What a denoiser architecture takes.

    Attributes:
        options: the names of the keyword options of its factory (``--arch-option KEY=VALUE``).
        minima: the least value of each option that has one.
        image_size_multiple: ``image_size_multiple(options) -> int``, the number the image side must be a
            multiple of given the options (``None``: any side).
    """

    options: tuple[str, ...] = ()
    minima: Mapping[str, int] = field(default_factory=dict)
    image_size_multiple: Callable[[Mapping[str, Any]], int] | None = None


#: Denoiser architectures by name (``train-denoiser --arch NAME``).
DENOISER_ARCHITECTURES: Registry[Any, DenoiserArchitectureRecord] = Registry(
    "denoiser architecture", argument="--arch", record=DenoiserArchitectureRecord)


DENOISER_ARCHITECTURES.register(
    "dncnn", "multiguard.denoising.networks:DnCNN",
    record=DenoiserArchitectureRecord(options=("width", "depth"), minima={"width": 1, "depth": 2}),
    help="DnCNN-style residual network at full resolution (width 16, depth 4)")


DENOISER_ARCHITECTURES.register(
    "unet", "multiguard.denoising.networks:SmallUNet",
    record=DenoiserArchitectureRecord(options=("width", "levels", "depth"),
                                      minima={"width": 1, "levels": 1, "depth": 0},
                                      image_size_multiple=lambda options: 2 ** options.get("levels", 2)),
    help="a small U-Net working below full resolution (width 32, levels 2, depth 2; train-denoiser's default)")


def denoiser_arch_forms() -> str:
    """What ``train-denoiser --arch`` accepts, for messages."""
    return quoted_alternatives(DENOISER_ARCHITECTURES.names(), ("path/to/file.py:factory", "package.module:factory"))
