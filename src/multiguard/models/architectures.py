"""The doors for network architectures: base classifiers (``--arch``) and denoisers (``train-denoiser --arch``).

No torch here: the command line lists the names for its help without importing torch. The built-ins are
declared by their path (``"multiguard.models.networks:small_cnn"``) and imported on first use; a new architecture is
one call or one decorator, anywhere (your own file, a plug-in)::

    from multiguard.models.architectures import ARCHITECTURES

    @ARCHITECTURES.register("tiny", help="one 3x3 convolution and a linear head")
    def tiny(num_classes, in_channels=3):
        ...

and ``multiguard train --arch tiny`` (or :func:`multiguard.models.factory.create_model`) builds it. A classifier
factory is called as ``factory(num_classes=c[, image_size=S][, in_channels=C])`` (the keywords it accepts) and
returns an ``nn.Module`` giving logits ``(N, c)``; ``info`` may give ``mean`` and ``std`` (the normalisation
inside the model, default none). A denoiser factory is called as ``factory(in_channels=C, **options)`` and
returns an ``nn.Module`` mapping ``(N, C, S, S)`` to the same shape; ``info["options"]`` names the options it
takes (``--arch-option KEY=VALUE``), ``info["minima"]`` (optional) the least value of each, and
``info["image_size_multiple"]`` (optional) the number the image side must be a multiple of, given the options:
``train-denoiser`` checks them before it reads any data.

The other ``--arch`` forms (``timm:<name>``, ``torchvision:<name>``, ``path/to/file.py:factory``,
``module:factory``) are read by :mod:`multiguard.models.factory` and :mod:`multiguard.denoising.denoisers` and need
no entry.
"""

from __future__ import annotations

from multiguard.common.registry import Registry
from multiguard.common.validation import quoted_alternatives

__all__ = ["ARCHITECTURES", "arch_forms"]


#: Base-classifier architectures by name (``--arch NAME``).
ARCHITECTURES: Registry = Registry("architecture", argument="--arch")


ARCHITECTURES.register("small_cnn", "multiguard.models.networks:small_cnn", builtin=True,
                       help="three stride-2 3x3 convolutions (32-64-128), BatchNorm, ReLU, global average pooling, "
                       "one linear layer: sized for multidigits")


def arch_forms() -> str:
    """What ``--arch`` accepts, for messages: the registered names and the other forms."""
    return quoted_alternatives(ARCHITECTURES.names(), ("timm:<name>", "torchvision:<name>", "path/to/file.py:factory",
                                           "module:factory"))
