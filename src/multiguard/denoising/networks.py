"""The built-in denoiser networks, :class:`DnCNN` (``dncnn``) and :class:`SmallUNet` (``unet``): torch modules
mapping ``(N, C, S, S) -> (N, C, S, S)`` in [0, 1] pixel units.

:data:`multiguard.denoising.architectures.DENOISER_ARCHITECTURES` registers them by this module's path; this
module imports nothing of that registry (nor of :mod:`multiguard.denoising.denoisers`, which reads it), so that
loading a registered target never imports its registering module back.
"""

from __future__ import annotations

import torch
from torch import nn

from multiguard.common.validation import check_int

__all__ = ["DnCNN", "SmallUNet"]


class DnCNN(nn.Module):
    """Residual denoiser at full resolution: ``x - net(x)`` with ``net`` ``depth`` 3x3 convolutions.

    ``net``: conv(C -> width) + ReLU, ``depth - 2`` x [conv(width -> width) + ReLU], conv(width -> C).
    Shapes: ``(N, C, S, S) -> (N, C, S, S)``, any S. No BatchNorm, so train and eval modes compute the same.
    """

    def __init__(self, in_channels: int = 3, width: int = 16, depth: int = 4) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", 1)
        width = check_int(width, "width", 1)
        depth = check_int(depth, "depth", 2)
        layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True)]
        layers.append(nn.Conv2d(width, in_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        nn.init.zeros_(self.net[-1].weight)  # starts as the identity: the noisy image itself
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.net(x)


class SmallUNet(nn.Module):
    """Residual U-Net whose convolutions all work below full resolution (cheap per sample, wide receptive field).

    Encoder, per level l = 1..levels: stride-2 conv to ``width * 2**(l-1)`` channels + ReLU, then ``depth`` x
    [conv + ReLU] at ``S / 2**l``. Decoder, per level from the bottom: 2x2 transposed conv up one level + ReLU,
    concatenated with the encoder features of that level, conv + ReLU. Head: conv(width + C -> C) over the
    full-resolution upsampled features and the noisy input, subtracted from the input (residual).
    Shapes: ``(N, C, S, S) -> (N, C, S, S)``, S divisible by ``2**levels``.
    """

    def __init__(self, in_channels: int = 3, width: int = 32, levels: int = 2, depth: int = 2) -> None:
        super().__init__()
        in_channels = check_int(in_channels, "in_channels", 1)
        width = check_int(width, "width", 1)
        self.levels = check_int(levels, "levels", 1)
        depth = check_int(depth, "depth", 0)
        widths = [width * 2**level for level in range(self.levels)]
        self.encoder = nn.ModuleList()
        previous = in_channels
        for channels in widths:
            layers: list[nn.Module] = [nn.Conv2d(previous, channels, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            for _ in range(depth):
                layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
            self.encoder.append(nn.Sequential(*layers))
            previous = channels
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for level in reversed(range(self.levels)):  # from the bottom level up to full resolution
            target = widths[level - 1] if level > 0 else width
            self.up.append(nn.Sequential(nn.ConvTranspose2d(widths[level], target, 2, stride=2),
                                         nn.ReLU(inplace=True)))
            if level > 0:
                self.merge.append(nn.Sequential(nn.Conv2d(2 * target, target, 3, padding=1), nn.ReLU(inplace=True)))
        self.head = nn.Conv2d(width + in_channels, in_channels, 3, padding=1)
        nn.init.zeros_(self.head.weight)  # starts as the identity
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        step = 2**self.levels
        if x.shape[-1] % step or x.shape[-2] % step:
            raise ValueError(f"x: this unet denoiser needs an image size divisible by {step}, "
                             f"got {tuple(x.shape[-2:])}")
        skips = []
        features = x
        for block in self.encoder:
            features = block(features)
            skips.append(features)
        features = skips.pop()
        for i, up in enumerate(self.up):
            features = up(features)
            if skips:
                features = self.merge[i](torch.cat((features, skips.pop()), dim=1))
        return x - self.head(torch.cat((features, x), dim=1))
