"""The doors for network architectures: base classifiers (``--arch``) and denoisers (``train-denoiser --arch``).

No torch here: the command line lists the names for its help without importing torch. The built-ins are
declared by their path (``"multiguard.models:small_cnn"``) and imported on first use; a new architecture is
one call or one decorator, anywhere (your own file, a plug-in)::

    from multiguard.architectures import ARCHITECTURES

    @ARCHITECTURES.register("tiny", help="one 3x3 convolution and a linear head")
    def tiny(num_classes, in_channels=3):
        ...

and ``multiguard train --arch tiny`` (or :func:`multiguard.models.create_model`) builds it. A classifier
factory is called as ``factory(num_classes=c[, image_size=S][, in_channels=C])`` (the keywords it accepts) and
returns an ``nn.Module`` giving logits ``(N, c)``; ``info`` may give ``mean`` and ``std`` (the normalisation
inside the model, default none). A denoiser factory is called as ``factory(in_channels=C, **options)`` and
returns an ``nn.Module`` mapping ``(N, C, S, S)`` to the same shape; ``info["options"]`` names the options it
takes (``--arch-option KEY=VALUE``), ``info["minima"]`` (optional) the least value of each, and
``info["image_size_multiple"]`` (optional) the number the image side must be a multiple of, given the options:
``train-denoiser`` checks them before it reads any data.

The other ``--arch`` forms (``timm:<name>``, ``torchvision:<name>``, ``path/to/file.py:factory``,
``module:factory``) are read by :mod:`multiguard.models` and :mod:`multiguard.denoisers` and need no entry.
"""

from __future__ import annotations

from .registry import Registry

__all__ = ["ARCHITECTURES", "DENOISER_ARCHITECTURES", "arch_forms", "denoiser_arch_forms"]

#: Base-classifier architectures by name (``--arch NAME``).
ARCHITECTURES: Registry = Registry("architecture", argument="--arch")
ARCHITECTURES.register("small_cnn", "multiguard.models:small_cnn", builtin=True,
                       help="three stride-2 3x3 convolutions (32-64-128), BatchNorm, ReLU, global average pooling, "
                       "one linear layer: sized for multidigits")

#: Denoiser architectures by name (``train-denoiser --arch NAME``).
DENOISER_ARCHITECTURES: Registry = Registry("denoiser architecture", argument="--arch")
DENOISER_ARCHITECTURES.register("dncnn", "multiguard.denoisers:DnCNN", options=("width", "depth"),
                                minima={"width": 1, "depth": 2},
                                help="DnCNN-style residual network at full resolution (width 16, depth 4)")
DENOISER_ARCHITECTURES.register("unet", "multiguard.denoisers:SmallUNet", options=("width", "levels", "depth"),
                                minima={"width": 1, "levels": 1, "depth": 0},
                                image_size_multiple=lambda options: 2 ** options.get("levels", 2),
                                help="a small U-Net working below full resolution (width 32, levels 2, depth 2; "
                                "train-denoiser's default)")


def _quoted(names: tuple[str, ...], forms: tuple[str, ...]) -> str:
    items = [f"'{name}'" for name in (*names, *forms)]
    return f"{', '.join(items[:-1])} or {items[-1]}"


def arch_forms() -> str:
    """What ``--arch`` accepts, for messages: the registered names and the other forms."""
    return _quoted(ARCHITECTURES.names(), ("timm:<name>", "torchvision:<name>", "path/to/file.py:factory",
                                           "module:factory"))


def denoiser_arch_forms() -> str:
    """What ``train-denoiser --arch`` accepts, for messages."""
    return _quoted(DENOISER_ARCHITECTURES.names(), ("path/to/file.py:factory", "package.module:factory"))
