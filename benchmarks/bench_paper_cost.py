"""Per-sample cost of certifying at the paper's scale, and what the paper's tables cost in device time.

Measures the engine (``MultiGuard.sample_counts``, the call ``multiguard certify`` makes) on torchvision
ResNets with random weights at the paper's input sizes, and multiplies the measured seconds per noisy
sample by the samples each table of docs/reproduce.md needs (500 inputs x n = 1000 per run). Random weights
cost the same as trained ones. Prints one line per (model, size, mode) and the estimate per dataset.

    python benchmarks/bench_paper_cost.py --device cuda                      # on the GPU you will use
    OMP_NUM_THREADS=1 python benchmarks/bench_paper_cost.py --device cpu --samples 200 --threads 1
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from multiguard import MultiGuard

# docs/reproduce.md: every table from these runs (500 inputs x n = 1000 each); k, k', alpha and n studies
# read the same counts again (no sampling), the sigma study needs a run per sigma.
RUNS_PER_DATASET = {"sigma 0.5 (comparison, k', k, n, alpha studies)": 1, "sigma study (0.25, 1.0)": 2}
SAMPLES_PER_RUN = 500 * 1000


def measure(arch: str, size: int, classes: int, device: torch.device, samples: int, batch: int,
            bf16: bool) -> float:
    """Seconds per noisy sample of the engine (best of two timed calls after a warm-up)."""
    import torchvision

    model = getattr(torchvision.models, arch)(weights=None, num_classes=classes).to(device).eval()
    guard = MultiGuard(model, num_classes=classes, sigma=0.5, device=str(device),
                       autocast_dtype=torch.bfloat16 if bf16 else None, channels_last=bf16)
    x = torch.rand(1, 3, size, size, device=device)
    guard.sample_counts(x, min(batch, samples), seed=0, batch_size=batch, max_k_prime=3)  # warm-up
    best = float("inf")
    for round_ in range(2):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        guard.sample_counts(x, samples, seed=round_ + 1, batch_size=batch, max_k_prime=3)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best / samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--samples", type=int, default=2000, help="noisy samples per timed call")
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--models", nargs="+", default=["resnet50:224", "resnet101:224", "resnet101:448"],
                        help="torchvision ARCH:SIZE")
    parser.add_argument("--no-bf16", action="store_true", help="fp32 only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; {args.samples} samples per timed call, batch {args.batch_size}")
    modes = [False] if args.no_bf16 else [False, True]
    for spec in args.models:
        arch, _, size = spec.partition(":")
        for bf16 in modes:
            with contextlib.suppress(torch.cuda.OutOfMemoryError):
                per_sample = measure(arch, int(size), 80, device, args.samples, args.batch_size, bf16)
                mode = "bf16 + channels_last" if bf16 else "fp32"
                run_h = per_sample * SAMPLES_PER_RUN / 3600
                per_dataset = run_h * sum(RUNS_PER_DATASET.values())
                print(f"{arch} {size}x{size} {mode:21s} {1 / per_sample:9,.0f} samples/s  "
                      f"{1e3 * per_sample:8.3f} ms/sample  one run (500 x 1000): {run_h:7.2f} h  "
                      f"one dataset's tables ({sum(RUNS_PER_DATASET.values())} runs): {per_dataset:7.2f} h  "
                      f"three datasets: {3 * per_dataset:7.2f} h")


if __name__ == "__main__":
    main()
