"""The demo's certification in every sampling mode, through the command line, as a user runs it.

    .venv/bin/python benchmarks/bench_modes_cli.py --workdir /tmp/modes     # trains the demo's model once

1. ``multiguard train`` the demo's model (small_cnn on multidigits, sigma = 0.5, 8 epochs of 8000 images,
   lr 3e-3) into ``WORKDIR/model.pt`` unless it is there.
2. ``multiguard certify`` the same inputs (``--num-inputs``, n = ``--n``, counts for k' <= 3 as the demo) once
   per mode and round, the modes in a rotated order each round; the sampling rate comes from the run's
   ``wall_time_s`` (model loading, data and compilation are outside it; the compile time is read from the
   command's output). The best round of each mode counts.
3. ``multiguard report`` each run (k = 3, k' = 1) and compare the certified precision, recall and F1 with
   fp32's at R = 0, 0.25, 0.5, 1.

Prints a Markdown table for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

MODES = [  # label, command-line flags
    ("fp32", ["--precision", "fp32"]),
    ("channels_last", ["--precision", "fp32", "--channels-last"]),
    ("bf16", ["--precision", "bf16"]),
    ("bf16 + channels_last", ["--precision", "bf16", "--channels-last"]),
    ("fp16", ["--precision", "fp16"]),
    ("fp32 + compile", ["--precision", "fp32", "--compile"]),
    ("bf16 + channels_last + compile", ["--precision", "bf16", "--channels-last", "--compile"]),
    ("auto + compile (the demo's default)", ["--precision", "auto", "--compile"]),
]
RADII = (0.0, 0.25, 0.5, 1.0)


def multiguard(*args: str, threads: int) -> str:
    script = Path(sys.executable).parent / "multiguard"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "multiguard"]
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([*command, *args], env=environment, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"multiguard {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--num-inputs", type=int, default=300)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS of each command")
    args = parser.parse_args()
    from multiguard.evaluation.curves import read_csv

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "model.pt"
    if not checkpoint.exists():
        multiguard("train", "--dataset", "multidigits", "--arch", "small_cnn", "--sigma", "0.5", "--epochs", "8",
                   "--train-size", "8000", "--test-size", "2000", "--lr", "3e-3", "--device", "cpu", "--quiet",
                   "--out", str(checkpoint), threads=args.threads)
    best: dict[str, float] = {}
    compile_text: dict[str, str] = {}
    described: dict[str, str] = {}
    for round_number in range(args.rounds):
        shift = round_number % len(MODES)
        for label, flags in MODES[shift:] + MODES[:shift]:
            out = work / ("run-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-"))
            shutil.rmtree(out, ignore_errors=True)
            text = multiguard("certify", "--checkpoint", str(checkpoint), "--num-inputs", str(args.num_inputs),
                              "--num-samples", str(args.n), "--max-k-prime", "3", "--batch-size",
                              str(args.batch_size), "--device", "cpu", "--quiet", *flags, "--out", str(out),
                              threads=args.threads)
            wall = float(json.loads((out / "metadata.json").read_text())["wall_time_s"])
            best[label] = min(best.get(label, float("inf")), wall)
            for line in text.splitlines():
                if line.startswith("torch.compile"):
                    compile_text.setdefault(label, line.split(": ", 1)[1])
                if line.startswith("sampling mode:"):
                    described[label] = line.split(": ", 1)[1]
            print(f"round {round_number + 1}: {label}: {args.num_inputs * args.n / wall:,.0f} samples/s", flush=True)

    metrics: dict[str, dict[str, np.ndarray]] = {}
    counts: dict[str, np.ndarray] = {}
    for label, _ in MODES:
        out = work / ("run-" + re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-"))
        report_dir = work / ("report-" + out.name[4:])
        multiguard("report", str(out), "--k", "3", "--k-prime", "1", "--methods", "multiguard", "--radii",
                   ",".join(str(r) for r in RADII), "--quiet", "--out", str(report_dir), threads=args.threads)
        (curve,) = read_csv(report_dir / "curves.csv")
        metrics[label] = {name: 100 * np.asarray(getattr(curve, name)) for name in ("precision", "recall", "f1")}
        with np.load(out / "counts.npz") as data:
            counts[label] = data["counts"]

    samples = args.num_inputs * args.n
    reference = best["fp32"]
    print(f"\n{args.num_inputs} inputs x n = {args.n}, k' <= 3, batch {args.batch_size}, OMP_NUM_THREADS="
          f"{args.threads}, best of {args.rounds} rounds; F1 and deltas at k = 3, k' = 1\n")
    print("| mode | samples/s | vs fp32 | certified F1 @ R = " + " / ".join(f"{r:g}" for r in RADII)
          + " (%) | max abs. change of P/R/F1 vs fp32 (points) | counts vs fp32 | compile time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, _ in MODES:
        change = max(float(np.abs(metrics[label][m] - metrics["fp32"][m]).max()) for m in metrics[label])
        same = "identical" if np.array_equal(counts[label], counts["fp32"]) else (
            f"{int((counts[label] != counts['fp32']).any(axis=(1, 2)).sum())} inputs differ")
        name = label if label == described.get(label) else f"{label}: {described.get(label, '?')}"
        print(f"| {name} | {samples / best[label]:,.0f} | {reference / best[label]:.2f}x | "
              + " / ".join(f"{v:.1f}" for v in metrics[label]["f1"])
              + f" | {change:.2f} | {same} | {compile_text.get(label, '-')} |")


if __name__ == "__main__":
    main()
