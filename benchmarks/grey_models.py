"""Models for grey multidigits images in the training benchmark: torchvision's resnet18 as it is, fed the grey
channel three times (``arch="benchmarks/grey_models.py:torchvision_resnet18"``)."""

from __future__ import annotations

import torchvision
from torch import nn


class _GreyToRGB(nn.Module):
    def forward(self, images):
        return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images


def torchvision_resnet18(num_classes: int) -> nn.Module:
    """``torchvision.models.resnet18(num_classes=c)`` behind a grey-to-RGB channel copy."""
    return nn.Sequential(_GreyToRGB(), torchvision.models.resnet18(num_classes=num_classes))
