"""The registry of denoiser architectures (``train-denoiser --arch NAME``) and what ``--arch`` accepts for a
denoiser, in words."""

from __future__ import annotations

from multiguard.common.registry import Registry
from multiguard.common.validation import quoted_alternatives

__all__ = ["DENOISER_ARCHITECTURES", "denoiser_arch_forms"]


#: Denoiser architectures by name (``train-denoiser --arch NAME``).
DENOISER_ARCHITECTURES: Registry = Registry("denoiser architecture", argument="--arch")


DENOISER_ARCHITECTURES.register("dncnn", "multiguard.denoising.denoisers:DnCNN", options=("width", "depth"),
                                minima={"width": 1, "depth": 2},
                                help="DnCNN-style residual network at full resolution (width 16, depth 4)")


DENOISER_ARCHITECTURES.register("unet", "multiguard.denoising.denoisers:SmallUNet",
                                options=("width", "levels", "depth"),
                                minima={"width": 1, "levels": 1, "depth": 0},
                                image_size_multiple=lambda options: 2 ** options.get("levels", 2),
                                help="a small U-Net working below full resolution (width 32, levels 2, depth 2; "
                                "train-denoiser's default)")


def denoiser_arch_forms() -> str:
    """What ``train-denoiser --arch`` accepts, for messages."""
    return quoted_alternatives(DENOISER_ARCHITECTURES.names(), ("path/to/file.py:factory", "package.module:factory"))
