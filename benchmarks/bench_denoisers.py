"""Cost per sample of denoised smoothing: the demo's classifier alone and behind each denoiser.

    .venv/bin/python benchmarks/bench_denoisers.py                 # 1 thread, multidigits-shaped inputs
    .venv/bin/python benchmarks/bench_denoisers.py --threads 2 --rounds 5

Every variant samples the same inputs (1 x 32 x 32, 10 labels, sigma = 0.5) through
``MultiGuard.sample_counts``, in interleaved rounds; the best round of each counts, so background load hurts
all alike. Printed: samples/s, microseconds per sample, the cost of the denoiser alone (variant minus
classifier) and the slowdown against the classifier alone. Weights are random: the cost does not depend on
them. Figures go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import time

import torch

from multiguard.denoisers import DenoisedClassifier, create_denoiser
from multiguard.models import create_model
from multiguard.smoothing import MultiGuard

VARIANTS: list[tuple[str, str | None, dict[str, int]]] = [
    ("small_cnn alone", None, {}),
    ("+ dncnn (default: width 16, depth 4)", "dncnn", {}),
    ("+ unet (default: width 16, 2 levels, depth 1)", "unet", {}),
    ("+ unet width 32", "unet", {"width": 32}),
    ("+ dncnn width 32, depth 5", "dncnn", {"width": 32, "depth": 5}),
    ("+ dncnn width 64, depth 6 (the issue's)", "dncnn", {"width": 64, "depth": 6}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=10, help="inputs per round")
    parser.add_argument("--n", type=int, default=500, help="samples per input")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (best counts)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=1000, help="samples per forward pass")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classifier = create_model("small_cnn", 10, 32, in_channels=1).eval()
    guards = {}
    for name, arch, options in VARIANTS:
        model = classifier if arch is None else DenoisedClassifier(create_denoiser(arch, 1, 32, **options), classifier)
        guards[name] = MultiGuard(model, 10, 0.5)
    x = torch.rand(args.inputs, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for guard in guards.values():  # warm-up
        guard.sample_counts(x[:1], n=100)
    best = dict.fromkeys(guards, float("inf"))
    for _ in range(args.rounds):
        for name, guard in guards.items():
            started = time.perf_counter()
            guard.sample_counts(x, n=args.n, batch_size=args.batch_size)
            best[name] = min(best[name], time.perf_counter() - started)
    samples = args.inputs * args.n
    alone = best[VARIANTS[0][0]] / samples
    print(f"{samples} samples per round, best of {args.rounds}, {args.threads} thread(s), {torch.__version__}")
    print("| base classifier | samples/s | us per sample | denoiser us per sample | x classifier alone |")
    print("| --- | --- | --- | --- | --- |")
    for name, seconds in best.items():
        per = seconds / samples
        print(f"| {name} | {1 / per:,.0f} | {per * 1e6:.0f} | {(per - alone) * 1e6:.0f} | {per / alone:.1f} |")


if __name__ == "__main__":
    main()
