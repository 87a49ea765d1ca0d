"""Image augmentations for training (the ASL recipe's kind), registered in
:data:`multiguard.training.registries.AUGMENTATIONS` and chosen with ``augment=("flip", "cutout", "randaugment")``.

Each registered target is a factory ``factory() -> augment`` with ``augment(images) -> images``: ``images``
``(B, C, S, S)`` floats in [0, 1], each image changed independently, before the training noise is added. The
random draws come from torch's global generator, which the training core seeds per epoch (so a resumed run
repeats them). They run on the device of the batch, per image for torchvision's transforms.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["cutout", "flip", "randaugment"]

Augment = Callable[[torch.Tensor], torch.Tensor]


def flip() -> Augment:
    """Horizontal flip of each image with probability 1/2."""

    def apply(images: torch.Tensor) -> torch.Tensor:
        chosen = torch.rand(len(images)) < 0.5
        out = images.clone()
        out[chosen] = images[chosen].flip(-1)
        return out

    return apply


def _per_image(transform: Callable[[torch.Tensor], torch.Tensor]) -> Augment:
    def apply(images: torch.Tensor) -> torch.Tensor:
        return torch.stack([transform(image) for image in images])

    return apply


def cutout() -> Augment:
    """Cutout: with probability 1/2 one rectangle (2-25 % of the area) of each image set to Gaussian noise
    (``torchvision.transforms.v2.RandomErasing``), clamped to [0, 1]."""
    from torchvision.transforms import v2

    erase = v2.RandomErasing(p=0.5, scale=(0.02, 0.25), value="random")
    return _per_image(lambda image: erase(image).clamp(0.0, 1.0))


def randaugment() -> Augment:
    """RandAugment (Cubuk et al. 2020; ``torchvision.transforms.v2.RandAugment``, 2 operations, magnitude 9), on
    each image as 8-bit and back to [0, 1]."""
    from torchvision.transforms import v2

    augment = v2.RandAugment(num_ops=2, magnitude=9)

    def one(image: torch.Tensor) -> torch.Tensor:
        as_bytes = (image.clamp(0, 1) * 255).round().to(torch.uint8)
        return augment(as_bytes).to(image.dtype) / 255

    return _per_image(one)
