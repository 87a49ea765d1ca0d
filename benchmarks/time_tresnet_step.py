"""Seconds per training image of the recipes' model (timm tresnet_l, 448 px, random weights) on this machine.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/time_tresnet_step.py

Three AdamW steps of batch 2 with ASL on noisy images, fp32 then bf16 autocast; the best step after the first
counts. Figures: docs/recipes.md.
"""

from __future__ import annotations

import time

import timm
import torch

from multiguard.training.losses import paper_asl


def main() -> None:
    torch.manual_seed(0)
    model = timm.create_model("tresnet_l", num_classes=20).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    images = torch.rand(2, 3, 448, 448)
    labels = (torch.rand(2, 20) < 0.2).float()
    loss_fn = paper_asl()
    for precision in ("fp32", "bf16"):
        times = []
        for _ in range(3):
            started = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = loss_fn(model(images + 0.5 * torch.randn_like(images)), labels)
            optimizer.zero_grad()
            loss.float().backward()
            optimizer.step()
            times.append(time.perf_counter() - started)
        print(f"{precision}: {min(times[1:]) / len(images):.1f} s per image ({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
