"""Which denoiser recipe to make the default: certified F1 at R = 0.25 against sampling cost, on the demo's data.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_denoiser_recipe.py --work bench-recipe
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_denoiser_recipe.py --work bench-recipe --only dncnn-32x6

The protocol of the issue that asked for it (a user who follows the defaults):

1. a classifier trained without noise with ``multiguard train``'s defaults (small_cnn, multidigits, 8000
   images, 4 epochs, ``--sigma 0``): ``WORK/clean.pt``;
2. for each recipe (architecture and size), a denoiser for sigma = 0.5 trained with ``train-denoiser``'s
   defaults otherwise (8000 training images, Adam lr 1e-3, batches of 64): MSE for ``--mse-epochs``, then the
   stability objective through the frozen clean classifier, started from the MSE denoiser, with a checkpoint
   after ``--stability-epochs`` epochs each (e.g. 4 and 8: the second continues the first exactly);
3. ``train-denoiser``'s default recipe as one command (``train_denoiser(sigma=0.5, classifier=WORK/clean.pt)``,
   every other setting at its default): ``WORK/den-default.pt``;
4. every variant (the clean classifier alone, behind each denoiser, and the noise-trained references)
   certified on the same 60 random test inputs with n = 300, alpha = 0.001, k = 3, k' = 1, sigma = 0.5:
   certified top-3 F1 at R = 0, 0.25, 0.5 (``Certificate.metrics``);
5. the sampling cost per sample of each variant, relative to the classifier alone, measured with
   ``MultiGuard.sample_counts`` in interleaved rounds (best round counts, so background load hurts all
   alike).

References: ``--noise-trained`` (default: the demo's model, small_cnn trained with sigma = 0.5 for 8 epochs of
8000 images, if the file is there) and a classifier trained with noise on the clean classifier's budget
(``WORK/noisy.pt``, 4 epochs). Everything is cached in WORK (checkpoints continue with ``resume``, certified
F1 in ``WORK/f1-<variant>.json``), so a second call only measures the costs and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch

from multiguard.common.torch_files import read_denoiser_checkpoint
from multiguard.data import get_dataset
from multiguard.denoising.denoisers import DenoisedClassifier, load_denoiser
from multiguard.models.checkpoints import load_checkpoint
from multiguard.sampling.smoothed import MultiGuard
from multiguard.training.classifier import train
from multiguard.training.denoiser import train_denoiser

SIGMA = 0.5
# name -> (arch, options)
RECIPES: dict[str, tuple[str, dict[str, int]]] = {
    "dncnn-16x4": ("dncnn", {"width": 16, "depth": 4}),
    "unet-16x2x2": ("unet", {"width": 16, "levels": 2, "depth": 2}),
    "unet-32x2x1": ("unet", {"width": 32, "levels": 2, "depth": 1}),
    "unet-32x2x2": ("unet", {"width": 32, "levels": 2, "depth": 2}),
    "dncnn-32x6": ("dncnn", {"width": 32, "depth": 6}),
    "dncnn-64x6": ("dncnn", {"width": 64, "depth": 6}),
}
DEMO_MODEL = Path("/work/wt/demo/multiguard-demo/model.pt")


def log(line: str) -> None:
    print(time.strftime("%H:%M:%S"), line, flush=True)


def train_all(work: Path, names: list[str], mse_epochs: int, stability_epochs: list[int]) -> None:
    """Train the classifiers and each recipe's denoisers (resumed where a checkpoint exists)."""
    for name, sigma in (("clean", 0.0), ("noisy", SIGMA)):
        train("multidigits", arch="small_cnn", sigma=sigma, epochs=4, out=work / f"{name}.pt", resume=True,
              progress=False, log=lambda line: None)
    for name in names:
        arch, options = RECIPES[name]
        common = dict(sigma=SIGMA, arch=arch, arch_options=options, classifier=work / "clean.pt", resume=True,
                      progress=False, log=lambda line, name=name: log(f"{name}: {line}"))
        mse = work / f"den-{name}-mse{mse_epochs}.pt"
        train_denoiser("multidigits", objective="mse", epochs=mse_epochs, stability_epochs=0, out=mse, **common)
        running = work / f"den-{name}-mse{mse_epochs}-stab.pt"
        for epochs in sorted(stability_epochs):
            target = work / f"den-{name}-mse{mse_epochs}-stab{epochs}.pt"
            if target.exists():
                shutil.copyfile(target, running)  # continue from the latest finished checkpoint
                continue
            train_denoiser("multidigits", objective="stability", epochs=epochs, pretrained=mse, out=running,
                           **common)
            shutil.copyfile(running, target)


# train-denoiser as one command, every setting at its default but these: name -> (file, arch options, cost recipe)
ONE_COMMAND: dict[str, tuple[str, dict[str, int], str]] = {
    "train-denoiser default (one command)": ("den-default.pt", {}, "unet-32x2x2"),
    "train-denoiser --arch-option width=16 (one command)": ("den-default-w16.pt", {"width": 16}, "unet-16x2x2"),
}


def train_default(work: Path) -> None:
    """``multiguard train-denoiser --sigma 0.5 --classifier WORK/clean.pt`` with every other setting at its default
    (the recipe this benchmark chose, as one command), and the same with the unet's width 16."""
    for name, (file, options, _) in ONE_COMMAND.items():
        train_denoiser(sigma=SIGMA, classifier=work / "clean.pt", out=work / file, resume=True, progress=False,
                       log=lambda line, name=name: log(f"{name}: {line}"), **({"arch_options": options} if options
                                                                               else {}))


def variants(work: Path, names: list[str], mse_epochs: int, stability_epochs: list[int],
             noise_trained: Path | None) -> dict[str, tuple[Path, Path | None]]:
    """variant name -> (classifier checkpoint, denoiser checkpoint or None)."""
    out: dict[str, tuple[Path, Path | None]] = {"clean alone": (work / "clean.pt", None)}
    for name in names:
        out[f"{name} mse{mse_epochs}"] = (work / "clean.pt", work / f"den-{name}-mse{mse_epochs}.pt")
        for epochs in sorted(stability_epochs):
            out[f"{name} mse{mse_epochs}+stab{epochs}"] = (
                work / "clean.pt", work / f"den-{name}-mse{mse_epochs}-stab{epochs}.pt")
    for name, (file, _, _) in ONE_COMMAND.items():
        path = work / file
        if path.exists() and read_denoiser_checkpoint(path)["meta"]["epoch"] == \
                read_denoiser_checkpoint(path)["meta"]["epochs"]:  # finished (another process may be training it)
            out[name] = (work / "clean.pt", path)
    out["noise-trained, 4 epochs"] = (work / "noisy.pt", None)
    if noise_trained is not None and noise_trained.exists():
        out["noise-trained demo model"] = (noise_trained, None)
    return out


def build(classifier: Path, denoiser: Path | None) -> torch.nn.Module:
    model, _ = load_checkpoint(classifier)
    if denoiser is not None:
        model = DenoisedClassifier(load_denoiser(denoiser)[0], model)
    return model.eval()


def certified_f1(work: Path, name: str, model: torch.nn.Module, x: torch.Tensor, labels: torch.Tensor,
                 n: int) -> dict[str, float]:
    cache = work / f"f1-{name.replace(' ', '_').replace(',', '')}-n{n}-{len(x)}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    started = time.perf_counter()
    certificate = MultiGuard(model, 10, SIGMA).certify(x, labels, n=n, alpha=0.001, k=3)
    result = {f"f1@{r}": float(certificate.metrics(r).f1) for r in (0.0, 0.25, 0.5)}
    result["certify_seconds"] = time.perf_counter() - started
    cache.write_text(json.dumps(result))
    log(f"certified {name}: {result}")
    return result


def sampling_cost(models: dict[str, torch.nn.Module], x: torch.Tensor, n: int, rounds: int) -> dict[str, float]:
    """Seconds per sample of each model, best of ``rounds`` interleaved rounds."""
    guards = {name: MultiGuard(model, 10, SIGMA) for name, model in models.items()}
    for guard in guards.values():
        guard.sample_counts(x[:1], n=100)
    best = dict.fromkeys(guards, math.inf)
    for _ in range(rounds):
        for name, guard in guards.items():
            started = time.perf_counter()
            guard.sample_counts(x, n=n)
            best[name] = min(best[name], (time.perf_counter() - started) / (len(x) * n))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for checkpoints and cached results")
    parser.add_argument("--only", nargs="*", default=list(RECIPES), choices=list(RECIPES), help="recipes")
    parser.add_argument("--mse-epochs", type=int, default=4)
    parser.add_argument("--stability-epochs", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--inputs", type=int, default=60, help="test inputs certified")
    parser.add_argument("--n", type=int, default=300, help="noise samples per input")
    parser.add_argument("--noise-trained", type=Path, default=DEMO_MODEL, help="a reference noise-trained model")
    parser.add_argument("--train-only", action="store_true", help="train, do not certify or time")
    parser.add_argument("--no-train", action="store_true",
                        help="certify and time the checkpoints already in WORK (skip missing ones), train nothing")
    parser.add_argument("--cost-inputs", type=int, default=5, help="inputs per timing round")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    if not args.no_train:
        train_all(args.work, args.only, args.mse_epochs, args.stability_epochs)
        train_default(args.work)
    if args.train_only:
        return
    test = get_dataset("multidigits", split="test")
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))[: args.inputs]
    x = torch.stack([test[int(i)][0] for i in chosen])
    labels = torch.stack([test[int(i)][1] for i in chosen]).bool()
    table = variants(args.work, args.only, args.mse_epochs, args.stability_epochs, args.noise_trained)
    models = {name: build(*paths) for name, paths in table.items() if all(p is None or p.exists() for p in paths)}
    f1 = {name: certified_f1(args.work, name, model, x, labels, args.n) for name, model in models.items()}
    # cost: the sampling cost depends on the architecture only, so time one variant per architecture
    per_arch = {"clean alone": models["clean alone"]}
    per_arch.update({name: models[f"{name} mse{args.mse_epochs}"] for name in args.only
                     if f"{name} mse{args.mse_epochs}" in models})
    for name, (_, _, recipe) in ONE_COMMAND.items():
        if recipe not in per_arch and name in models:
            per_arch[recipe] = models[name]
    cost = sampling_cost(per_arch, x[: args.cost_inputs], args.n, args.rounds)
    alone = cost["clean alone"]
    clean = f1["clean alone"]["f1@0.25"]
    reference = f1.get("noise-trained demo model", f1["noise-trained, 4 epochs"])["f1@0.25"]
    print(f"\n{args.inputs} test inputs, n = {args.n}, alpha = 0.001, k = 3, k' = 1, sigma = {SIGMA}; cost: best "
          f"of {args.rounds} rounds of {args.cost_inputs} inputs x n = {args.n}, {args.threads} thread(s), "
          f"classifier alone {alone * 1e6:.0f} us per sample; torch {torch.__version__}")
    print("| variant | F1 R = 0 | 0.25 | 0.5 | gain at 0.25 over clean | % of noise-trained at 0.25 | "
          "cost x classifier | F1 at 0.25 per x cost | goals met |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for name, result in f1.items():
        arch = next((recipe for recipe in args.only if name.startswith(recipe + " ")),
                    ONE_COMMAND[name][2] if name in ONE_COMMAND else None)
        relative = cost[arch] / alone if arch else 1.0
        gain = result["f1@0.25"] - clean
        share = result["f1@0.25"] / reference if reference > 0 else float("nan")
        met = "yes" if arch and gain >= 0.15 and share >= 0.8 else ("no" if arch else "")
        print(f"| {name} | {100 * result['f1@0.0']:.1f} | {100 * result['f1@0.25']:.1f} | "
              f"{100 * result['f1@0.5']:.1f} | {100 * gain:+.1f} | {100 * share:.0f} | {relative:.1f} | "
              f"{100 * result['f1@0.25'] / relative:.2f} | {met} |")
    print(f"(percent; reference for 'percent of noise-trained': "
          f"{'the demo model' if 'noise-trained demo model' in f1 else 'noise-trained, 4 epochs'}; "
          f"per x cost: F1 at R = 0.25 divided by the cost relative to the classifier alone)")


if __name__ == "__main__":
    main()
