"""Cost per sample of denoised smoothing: the demo's classifier alone and behind each denoiser.

    .venv/bin/python benchmarks/bench_denoisers.py                 # 1 thread, multidigits-shaped inputs
    .venv/bin/python benchmarks/bench_denoisers.py --threads 2 --rounds 5
    .venv/bin/python benchmarks/bench_denoisers.py --diffusion     # also one-step diffusion denoisers

Every variant samples the same inputs (1 x 32 x 32, 10 labels, sigma = 0.5) through
``MultiGuard.sample_counts``, in interleaved rounds; the best round of each counts, so background load hurts
all alike. Printed: samples/s, microseconds per sample, the cost of the denoiser alone (variant minus
classifier) and the slowdown against the classifier alone. Weights are random: the cost does not depend on
them. Figures go in benchmarks/README.md.

``--diffusion`` (needs ``pip install 'multiguard[diffusion]'``) adds
:class:`multiguard.denoising.diffusion.DiffusionDenoiser`
around randomly initialised diffusers ``UNet2DModel`` s of three sizes (1 channel, 32 x 32, DDPM scheduler,
timestep for sigma = 0.5): tiny (8, 16 channels, 42k parameters), small (32, 64, 64 channels with attention at
16 x 16, 1.1M) and one shaped like the CIFAR-10 DDPM (128, 256, 256, 256 channels, two layers per block,
attention at 16 x 16, 35.7M parameters; random weights, one input channel). They sample one input per round:
n samples for the tiny one, n / 5 for the small one, ``--diffusion-samples`` for the largest (the cost per
sample is what counts).
"""

from __future__ import annotations

import argparse
import time

import torch

from multiguard.denoising.denoisers import DenoisedClassifier, create_denoiser
from multiguard.models.factory import create_model
from multiguard.sampling.smoothed import MultiGuard

DIFFUSION_UNETS: dict[str, dict] = {  # name -> UNet2DModel config (1 channel, 32 x 32)
    "tiny (8, 16)": {"block_out_channels": (8, 16), "layers_per_block": 1, "norm_num_groups": 4,
                     "down_block_types": ("DownBlock2D",) * 2, "up_block_types": ("UpBlock2D",) * 2},
    "small (32, 64, 64), attention": {
        "block_out_channels": (32, 64, 64), "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "AttnUpBlock2D", "UpBlock2D")},
    "CIFAR-10-DDPM-shaped (35.7M)": {
        "block_out_channels": (128, 256, 256, 256), "layers_per_block": 2,
        "down_block_types": ("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D")},
}
SAMPLES_PER_ROUND = {"tiny (8, 16)": 1.0, "small (32, 64, 64), attention": 0.2}  # x n, one input

VARIANTS: list[tuple[str, str | None, dict[str, int]]] = [
    ("small_cnn alone", None, {}),
    ("+ dncnn width 16, depth 4 (dncnn's default)", "dncnn", {}),
    ("+ unet width 16, 2 levels, depth 1 (the former default)", "unet", {"width": 16, "levels": 2, "depth": 1}),
    ("+ unet width 16, 2 levels, depth 2", "unet", {"width": 16}),
    ("+ unet (default: width 32, 2 levels, depth 2)", "unet", {}),
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
    parser.add_argument("--diffusion", action="store_true", help="add one-step diffusion denoisers (random UNets)")
    parser.add_argument("--diffusion-samples", type=int, default=20, help="samples per round of the largest UNet")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    classifier = create_model("small_cnn", 10, 32, in_channels=1).eval()
    guards = {}
    plan: dict[str, tuple[int, int]] = {}  # name -> (inputs, n) per round, where not (--inputs, --n)
    for name, arch, options in VARIANTS:
        model = classifier if arch is None else DenoisedClassifier(create_denoiser(arch, 1, 32, **options), classifier)
        guards[name] = MultiGuard(model, 10, 0.5)
    if args.diffusion:
        import diffusers

        from multiguard.denoising.diffusion import DiffusionDenoiser

        for name, config in DIFFUSION_UNETS.items():
            unet = diffusers.UNet2DModel(sample_size=32, in_channels=1, out_channels=1, **config)
            denoiser = DiffusionDenoiser(unet, diffusers.DDPMScheduler(), sigma=0.5, image_size=32, in_channels=1)
            size = sum(p.numel() for p in unet.parameters())
            label = f"+ diffusion, random UNet2DModel {name}, {size:,} parameters, t = {denoiser.timestep}"
            guards[label] = MultiGuard(DenoisedClassifier(denoiser, classifier), 10, 0.5)
            fraction = SAMPLES_PER_ROUND.get(name)
            plan[label] = (1, args.diffusion_samples if fraction is None else max(1, round(fraction * args.n)))
    x = torch.rand(args.inputs, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    for guard in guards.values():  # warm-up
        guard.sample_counts(x[:1], n=10)
    best = dict.fromkeys(guards, float("inf"))
    for _ in range(args.rounds):
        for name, guard in guards.items():
            count, n = plan.get(name, (args.inputs, args.n))
            inputs = x[:count]
            started = time.perf_counter()
            guard.sample_counts(inputs, n=n, batch_size=args.batch_size)
            best[name] = min(best[name], (time.perf_counter() - started) / (len(inputs) * n))
    samples = args.inputs * args.n
    alone = best[VARIANTS[0][0]]
    diffusion = ", ".join(str(count * n) for count, n in plan.values()) or "-"
    print(f"{samples} samples per round (diffusion: {diffusion}), best of {args.rounds}, {args.threads} "
          f"thread(s), {torch.__version__}")
    print("| base classifier | samples/s | us per sample | denoiser us per sample | x classifier alone |")
    print("| --- | --- | --- | --- | --- |")
    for name, per in best.items():
        print(f"| {name} | {1 / per:,.0f} | {per * 1e6:.0f} | {(per - alone) * 1e6:.0f} | {per / alone:.1f} |")


if __name__ == "__main__":
    main()
