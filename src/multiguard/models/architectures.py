"""The doors for base-classifier architectures (``--arch``): names (:data:`ARCHITECTURES`) and prefix families
(:data:`ARCH_PREFIXES`, ``timm:<name>``). The denoisers' door is
:data:`multiguard.denoising.architectures.DENOISER_ARCHITECTURES`.

No torch here: the command line lists the names for its help without importing torch. The built-ins are
declared by their path (``"multiguard.models.networks:small_cnn"``) and imported on first use; a new architecture is
one call or one decorator, anywhere (your own file, a plug-in)::

    from multiguard.models.architectures import ARCHITECTURES

    @ARCHITECTURES.register("tiny", help="one 3x3 convolution and a linear head")
    def tiny(num_classes, in_channels=3):
        ...

and ``multiguard train --arch tiny`` (or :func:`multiguard.models.factory.create_model`) builds it. A classifier
factory is called as ``factory(num_classes=c[, image_size=S][, in_channels=C])`` (the keywords it accepts) and
returns an ``nn.Module`` giving logits ``(N, c)``; its :class:`ArchitectureRecord` may give ``mean`` and ``std``
(the normalisation inside the model, default none).

A prefix family is a whole hub of models behind ``PREFIX:<name>``, as ``timm:`` and ``torchvision:`` are::

    from multiguard.models.architectures import ARCH_PREFIXES

    @ARCH_PREFIXES.register("myhub", help="the models of my hub")
    def myhub(name, *, num_classes, in_channels, image_size, pretrained):
        return my_hub.build(name, num_classes)    # an nn.Module, or (module, mean, std)

and ``--arch myhub:resnet`` builds ``myhub("resnet", ...)``: called with the name after the colon and the
keywords ``num_classes``, ``in_channels``, ``image_size`` and ``pretrained`` (``True`` for ``--pretrained
imagenet``, which only a family whose :class:`ArchPrefixRecord` says ``imagenet=True`` is given), it returns the
network or ``(network, mean, std)`` (its default normalisation; ``None``: none). A registered prefix takes
precedence over the ``module:factory`` form of the same spelling.

The remaining ``--arch`` forms (``path/to/file.py:factory``, ``module:factory``) are read by
:mod:`multiguard.models.factory` and need no entry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from multiguard.common.registry import Registry
from multiguard.common.validation import quoted_alternatives

__all__ = ["ARCHITECTURES", "ARCH_PREFIXES", "ArchPrefixRecord", "ArchitectureRecord", "arch_forms", "arch_prefix",
           "prefix_forms"]


@dataclass(frozen=True)
class ArchitectureRecord:
    """What a registered base-classifier architecture is besides its factory.

    Attributes:
        mean, std: the per-channel normalisation inside the model by default (``None``: none, ``(0, 1)``); give
            both or neither.
        builtin: a built-in of MultiGuard, whose model is not run on a test batch when built (every other
            factory's model is, to check it returns logits ``(2, c)``).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    builtin: bool = False

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std: give both or neither")


@dataclass(frozen=True)
class ArchPrefixRecord:
    """What a prefix family (``PREFIX:<name>``) offers.

    Attributes:
        imagenet: the family has ImageNet weights (``--pretrained imagenet``) and uses the ImageNet statistics as
            its default normalisation for 3-channel images.
        builtin: a built-in family (``timm``, ``torchvision``), whose models are not run on a test batch when
            built (every other family's are, to check they return logits ``(2, c)``).
    """

    imagenet: bool = False
    builtin: bool = False


#: Base-classifier architectures by name (``--arch NAME``): a factory and an :class:`ArchitectureRecord`.
ARCHITECTURES: Registry[Callable[..., Any], ArchitectureRecord] = Registry(
    "architecture", argument="--arch", record=ArchitectureRecord)

ARCHITECTURES.register("small_cnn", "multiguard.models.networks:small_cnn", record=ArchitectureRecord(builtin=True),
                       help="three stride-2 3x3 convolutions (32-64-128), BatchNorm, ReLU, global average pooling, "
                       "one linear layer: sized for multidigits")

#: Families of architectures by prefix (``--arch PREFIX:<name>``): a family factory (see the module docstring)
#: and an :class:`ArchPrefixRecord`.
ARCH_PREFIXES: Registry[Callable[..., Any], ArchPrefixRecord] = Registry(
    "architecture prefix", argument="--arch", record=ArchPrefixRecord)

ARCH_PREFIXES.register("timm", "multiguard.models.pretrained:timm_family",
                       record=ArchPrefixRecord(imagenet=True, builtin=True),
                       help="timm.create_model(<name>, num_classes=c, in_chans=C)")
ARCH_PREFIXES.register("torchvision", "multiguard.models.pretrained:torchvision_family",
                       record=ArchPrefixRecord(imagenet=True, builtin=True),
                       help="torchvision.models.get_model(<name>, num_classes=c)")


def arch_prefix(arch: str) -> str | None:
    """The registered prefix family of ``arch`` (``"timm"`` for ``"timm:resnet18"``), ``None`` for other forms."""
    prefix, colon, _ = arch.partition(":")
    return prefix if colon and prefix in ARCH_PREFIXES else None


def prefix_forms(imagenet_only: bool = False) -> tuple[str, ...]:
    """``("timm:<name>", "torchvision:<name>", ...)``: the registered prefix forms (only those with ImageNet
    weights where ``imagenet_only``)."""
    return tuple(f"{e.name}:<name>" for e in ARCH_PREFIXES.entries() if e.record.imagenet or not imagenet_only)


def arch_forms() -> str:
    """What ``--arch`` accepts, for messages: the registered names, the prefix forms and the factory forms."""
    return quoted_alternatives(ARCHITECTURES.names(), (*prefix_forms(), "path/to/file.py:factory", "module:factory"))
