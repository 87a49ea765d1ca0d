"""Training objectives and training throughput, on the demo's data and model.

    # objectives: train each, certify 500 test inputs, certified top-k F1 at R = 0, 0.25, 0.5, 1 (+ mAP, time)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py objectives \\
        --objective gaussian --objective consistency:weight=5 --objective vote:weight=1
    # ceiling: certified F1 of ideal k' = 1 votes on the same inputs (no training)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py ceiling
    # throughput: samples/s of fp32 against bf16 + channels_last (+ compile), one process against two (gloo)
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_training.py throughput \\
        --arch small_cnn --arch torchvision:resnet18

``objectives``: every objective is trained with the same seed, epochs, data (multidigits, 8 epochs of 8,000
images, batch 32, lr 3e-3, sigma 0.5 by default), then its model certifies the same test inputs (the first 500 of
the test split, n = 1000 noisy samples each, k' = 1, alpha = 0.001, k = 3) and the certified top-k F1 at each
radius is printed, with the last epoch's mAP (clean and with one noise draw) and the training time. ``--json``
appends one line per objective to a file (the exploration of weights is a list of ``--objective`` values).

``ceiling``: the certified F1 of ideal k' = 1 base classifiers (the vote split evenly over some labels of L,
none outside) on the same inputs: what no objective can exceed, and where spreading and concentrating the vote
trade small radii against large ones.

``throughput``: training samples/s per configuration over a few timed steps after a warm-up (best of rounds),
and for precision the mAP after a short training at that precision. Figures: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from multiguard.certificates.bounds import label_probability_bounds
from multiguard.certificates.metrics import certified_metrics
from multiguard.certificates.topk import certified_intersection_size
from multiguard.data import get_dataset
from multiguard.sampling.smoothed import MultiGuard
from multiguard.training.classifier import train
from multiguard.training.settings import parse_options

RADII = (0.0, 0.25, 0.5, 1.0)


def certify_f1(model: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, sigma: float, n: int, k: int,
               k_prime: int, alpha: float, seed: int) -> np.ndarray:
    """Certified top-k F1 at each of RADII (mean over the inputs)."""
    guard = MultiGuard(model.eval(), labels.shape[1], sigma, k_prime=k_prime)
    counts = guard.sample_counts(images, n=n, seed=seed)
    lower, upper = label_probability_bounds(counts, n, alpha)
    sizes = certified_intersection_size(lower, upper, labels.astype(bool), k=k, k_prime=k_prime, sigma=sigma,
                                        radius=np.asarray(RADII))
    return certified_metrics(sizes, labels.astype(bool), k).f1


def objectives(args: argparse.Namespace) -> None:
    test = get_dataset("multidigits", split="test", seed=args.seed)
    images, labels = test.images[: args.inputs], test.labels[: args.inputs].numpy()
    print(f"multidigits: {args.epochs} epochs of {args.train_size} images, batch {args.batch_size}, lr {args.lr:g}, "
          f"sigma {args.sigma:g}, seed {args.seed}; certify {len(images)} test inputs, n = {args.n}, k = {args.k}, "
          f"k' = {args.k_prime}, alpha = {args.alpha:g}; torch threads {torch.get_num_threads()}"
          + "".join(f"; {key} {value}" for key, value in _extra(args).items()), flush=True)
    print("| objective | F1 R=" + " | R=".join(f"{r:g}" for r in RADII) + " | mAP clean | mAP noisy | train s |")
    print("|---|" + "---|" * (len(RADII) + 3), flush=True)
    for text in args.objective:
        name, _, options_text = text.partition(":")
        options = parse_options([o for o in options_text.split(",") if o], "objective")
        started = time.perf_counter()
        model, meta = train("multidigits", objective=name, objective_options=options, epochs=args.epochs,
                            train_size=args.train_size, test_size=args.test_size, batch_size=args.batch_size,
                            lr=args.lr, sigma=args.sigma, seed=args.seed, progress=False, **_extra(args))
        seconds = time.perf_counter() - started
        with torch.no_grad():
            f1 = certify_f1(model, images, labels, args.sigma, args.n, args.k, args.k_prime, args.alpha, args.seed)
        last = meta["metrics"][-1]
        print(f"| {text} | " + " | ".join(f"{100 * v:.1f}" for v in f1)
              + f" | {100 * last['clean_map']:.1f} | {100 * last['noisy_map']:.1f} | {seconds:.0f} |", flush=True)
        if args.json:
            with open(args.json, "a") as handle:
                handle.write(json.dumps({"objective": text, "f1": [float(v) for v in f1], "radii": RADII,
                                         "clean_map": last["clean_map"], "noisy_map": last["noisy_map"],
                                         "train_seconds": seconds, "epochs": args.epochs,
                                         "train_size": args.train_size, "lr": args.lr, "seed": args.seed,
                                         **_extra(args)}) + "\n")


def _extra(args: argparse.Namespace) -> dict:
    extra = {}
    for key in ("precision", "schedule", "warmup", "ema"):
        value = getattr(args, key, None)
        if value is not None:
            extra[key] = value
    return extra


def ceiling(args: argparse.Namespace) -> None:
    """Certified F1 of ideal k' = 1 base classifiers on the same inputs: the vote split evenly over ``s`` labels of
    L (all of L if it has fewer) and never outside L, as exact counts of n samples; and the best ``s`` per input
    and radius. What no training objective can exceed with this n, alpha, k, sigma."""
    test = get_dataset("multidigits", split="test", seed=args.seed)
    labels = test.labels[: args.inputs].numpy().astype(bool)
    radii = np.asarray(RADII)
    best = np.zeros((len(labels), len(radii)), dtype=np.int64)
    print(f"ideal votes on {len(labels)} multidigits test inputs, n = {args.n}, k = {args.k}, k' = 1, "
          f"alpha = {args.alpha:g}, sigma = {args.sigma:g}")
    print("| vote spread evenly over | F1 R=" + " | R=".join(f"{r:g}" for r in RADII) + " |")
    print("|---|" + "---|" * len(RADII))
    for spread in range(1, labels.shape[1] + 1):
        counts = np.zeros(labels.shape, dtype=np.int64)
        for row, mask in enumerate(labels):
            chosen = np.flatnonzero(mask)[:spread]
            if len(chosen) == 0:
                continue
            counts[row, chosen] = args.n // len(chosen)
            counts[row, chosen[0]] += args.n - counts[row, chosen].sum()
        lower, upper = label_probability_bounds(counts, args.n, args.alpha)
        sizes = certified_intersection_size(lower, upper, labels, k=args.k, k_prime=1, sigma=args.sigma,
                                            radius=radii)
        best = np.maximum(best, sizes)
        if spread <= 4:
            f1 = certified_metrics(sizes, labels, args.k).f1
            print(f"| {spread} label(s) of L | " + " | ".join(f"{100 * v:.1f}" for v in f1) + " |")
    f1 = certified_metrics(best, labels, args.k).f1
    print("| the best spread per input and radius | " + " | ".join(f"{100 * v:.1f}" for v in f1) + " |")


# ------------------------------------------------------------------------------------------------- throughput

_WORKER = r"""
import json, sys, time, torch
from multiguard.training.classifier import train
spec = json.loads(sys.argv[1])
started = time.perf_counter()
_, meta = train("multidigits", progress=False, **spec)
import os
if int(os.environ.get("RANK", "0")) == 0:
    print("RESULT " + json.dumps({"metrics": meta["metrics"], "wall": time.perf_counter() - started}))
"""


def _run_training(spec: dict, processes: int, threads: int) -> dict:
    """One training in a fresh process (or ``processes`` under torchrun): its metrics and wall time."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    code = ["-c", _WORKER, json.dumps(spec)]
    if processes == 1:
        command = [sys.executable, *code]
    else:
        script = Path(os.environ.get("TMPDIR", "/tmp")) / "multiguard_bench_worker.py"
        script.write_text(_WORKER)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   str(script), json.dumps(spec)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise RuntimeError(f"training failed: {done.stderr[-2000:]}")


def throughput(args: argparse.Namespace) -> None:
    print(f"training throughput on {args.device}, multidigits; {args.train_size} images per epoch, "
          f"batch {args.batch_size}, {args.epochs} epochs (samples/s of the fastest epoch after the first), "
          f"torch {torch.__version__}")
    print("| model | size | configuration | processes | samples/s | x fp32 | mAP clean | mAP noisy |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    modes = [("fp32", {"precision": "fp32"}), ("bf16 + channels_last", {"precision": "bf16", "channels_last": True})]
    if args.compile:
        modes.append(("bf16 + channels_last + compile", {"precision": "bf16", "channels_last": True,
                                                          "compile": True}))
    for arch in args.arch:
        size = 32 if arch == "small_cnn" else args.image_size
        model = arch
        if arch == "torchvision:resnet18":  # multidigits is grey: the same network behind a channel copy
            model = f"{Path(__file__).resolve().parent / 'grey_models.py'}:torchvision_resnet18"
        base = None
        runs = [(label, mode, 1) for label, mode in modes] + ([("fp32", modes[0][1], 2)] if args.two else [])
        for label, mode, processes in runs:
            spec = {"arch": model, "image_size": size, "epochs": args.epochs, "train_size": args.train_size,
                    "test_size": args.test_size, "batch_size": args.batch_size, "lr": args.lr, "sigma": 0.5,
                    "seed": 0, "device": args.device, **mode}
            result = _run_training(spec, processes, args.threads)
            epochs = result["metrics"]
            best = max(e["samples_per_second"] for e in (epochs[1:] or epochs))
            base = best if base is None else base
            last = epochs[-1]
            print(f"| {arch} | {size} | {label} | {processes} | {best:.0f} | {best / base:.2f} | "
                  f"{100 * last['clean_map']:.1f} | {100 * last['noisy_map']:.1f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("objectives", help="certified F1 per training objective")
    p.add_argument("--objective", action="append", default=None,
                   help="NAME or NAME:key=value,key=value (repeatable; default gaussian and consistency:weight=5)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--train-size", type=int, default=8000)
    p.add_argument("--test-size", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inputs", type=int, default=500)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--k-prime", type=int, default=1)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--json", default=None, help="append one JSON line per objective to this file")
    p.add_argument("--ema", type=float, default=None, help="train every objective with EMA weights of this decay")
    p.add_argument("--schedule", default=None, help="train every objective with this lr schedule")
    p.add_argument("--warmup", type=float, default=None, help="the schedule's warm-up fraction")
    p = sub.add_parser("ceiling", help="certified F1 of ideal k' = 1 votes on the same inputs")
    p.add_argument("--inputs", type=int, default=500)
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--k", type=int, default=3)
    p.add_argument("--alpha", type=float, default=0.001)
    p.add_argument("--sigma", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("throughput", help="training samples/s per precision and process count")
    p.add_argument("--arch", action="append", default=None, help="small_cnn, torchvision:resnet18, ... (repeatable)")
    p.add_argument("--image-size", type=int, default=64, help="image side for models other than small_cnn")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-size", type=int, default=2000)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1, help="OMP threads per process")
    p.add_argument("--compile", action="store_true", help="also bf16 + channels_last + torch.compile")
    p.add_argument("--one-process", dest="two", action="store_false", help="skip the two-process run")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (two processes on cuda: one GPU each)")
    args = parser.parse_args()
    if args.command == "objectives":
        args.objective = args.objective or ["gaussian", "consistency:weight=5"]
        objectives(args)
    elif args.command == "ceiling":
        ceiling(args)
    else:
        args.arch = args.arch or ["small_cnn", "torchvision:resnet18"]
        throughput(args)


if __name__ == "__main__":
    main()
