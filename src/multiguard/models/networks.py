"""The built-in networks: ``small_cnn`` (sized for multidigits) and the ``Normalize`` layer that puts a
dataset's mean and std inside the model, so the noise is added in pixel space."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from multiguard.common.torch_files import read_torch_file  # noqa: F401 - its old import path (moved there)

__all__ = ["Normalize", "SmallCNN", "small_cnn"]


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers ``(1, C, 1, 1)`` saved with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape:
            raise ValueError("mean and std must be sequences of the same length (one value per channel)")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class SmallCNN(nn.Sequential):
    """Three stride-2 3x3 convolutions (32, 64, 128 channels) with BatchNorm and ReLU,
    global average pooling and one linear layer: ``(N, C, S, S) -> (N, num_classes)``."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128)):
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
        super().__init__(*layers)


def small_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """The built-in ``small_cnn`` (:class:`SmallCNN`): sized for multidigits."""
    return SmallCNN(num_classes, in_channels)
