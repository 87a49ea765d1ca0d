"""The small in-memory dataset and model several run tests share: 30 inputs of 6 features with 4 labels
(real data, not a mock) and a seeded 2-layer MLP smoothed at sigma 0.5."""

from __future__ import annotations

import torch

from multiguard.sampling.smoothed import MultiGuard


class TinyDataset:
    """30 inputs ``(6,)`` with multi-hot labels ``(4,)``, drawn from seed 0."""

    class_names = ["a", "b", "c", "d"]

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.rand(30, 6, generator=generator)
        self.y = (torch.rand(30, 4, generator=generator) > 0.5).float()

    def __len__(self) -> int:
        return 30

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def tiny_smoother() -> MultiGuard:
    """The MLP 6 -> 16 -> 4 (weights from torch seed 0) as a MultiGuard at sigma 0.5 on the CPU."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    return MultiGuard(model, num_classes=4, sigma=0.5, device="cpu")
