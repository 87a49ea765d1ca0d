"""Sound against float noise end to end: ``multiguard certify`` as a user runs it, timed, and the certified F1.

    python benchmarks/bench_noise_end_to_end.py --checkpoint MODEL.pt [--work DIR] [--inputs 500] [--n 1000]
                                                [--rounds 2] [--threads 1] [--compile]

Each round certifies the same inputs of the checkpoint's test split with ``--noise float`` and with
``--noise sound`` (alternating which goes first, so that background load falls on both alike), each a fresh
run folder, and keeps the best wall time of each; then ``multiguard report`` on the last run of each prints
certified top-3 F1 (k' = 1) at R = 0, 0.25, 0.5 and 1 from ``results.json``. Printed: seconds per run, the
ratio sound / float (issue 28's goal: at most 1.3x end to end) and both F1 rows (the goal for making sound
the default: within 0.5 points at every R, and at most 1.1x per sample).

A model trained as the demo trains its model: ``multiguard train --dataset multidigits --arch small_cnn
--epochs 8 --train-size 8000 --lr 3e-3 --sigma 0.5 --out model.pt`` (or the demo's own, ``demo/model.pt``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

RADII = (0.0, 0.25, 0.5, 1.0)


def multiguard() -> list[str]:
    script = Path(sys.executable).parent / "multiguard"
    return [str(script)] if script.exists() else [sys.executable, "-m", "multiguard"]


def certify(checkpoint: str, out: Path, noise: str, args: argparse.Namespace) -> float:
    """One fresh ``multiguard certify`` run; its wall time in seconds."""
    shutil.rmtree(out, ignore_errors=True)
    command = [*multiguard(), "certify", "--checkpoint", checkpoint, "--out", str(out), "--noise", noise,
               "--num-inputs", str(args.inputs), "--n", str(args.n), "--threads", str(args.threads),
               "--device", "cpu", "--quiet"]
    if args.compile:
        command.append("--compile")
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    return time.perf_counter() - start


def certified_f1(run: Path, report: Path) -> list[float]:
    """Certified top-3 F1 (k' = 1, MultiGuard) of ``run`` at :data:`RADII`, in percent."""
    subprocess.run([*multiguard(), "report", str(run), "--k", "3", "--k-prime", "1", "--methods", "multiguard",
                    "--out", str(report)], check=True, stdout=subprocess.DEVNULL)
    records = json.loads((report / "results.json").read_text())["records"]  # docs/results.md
    f1 = {round(r["radius"], 9): r["certified_f1"] for r in records
          if r["method"] == "multiguard" and r["k"] == 3 and r["k_prime"] == 1}
    return [100 * f1[r] for r in RADII]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--work", default="bench-noise-end-to-end")
    parser.add_argument("--inputs", type=int, default=500)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--compile", action="store_true", help="certify with --compile (the demo's CPU mode)")
    parser.add_argument("--report-only", action="store_true", help="only report the runs already in --work")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    best = {"float": float("inf"), "sound": float("inf")}
    for round_ in range(args.rounds if not args.report_only else 0):
        order = ("float", "sound") if round_ % 2 == 0 else ("sound", "float")
        for noise in order:
            seconds = certify(args.checkpoint, work / f"run-{noise}", noise, args)
            best[noise] = min(best[noise], seconds)
            print(f"round {round_ + 1}: {noise} {seconds:.1f} s", flush=True)
    ratio = best["sound"] / best["float"] if args.rounds and not args.report_only else float("nan")
    print(f"{args.inputs} inputs x n = {args.n}: float {best['float']:.1f} s, sound {best['sound']:.1f} s, "
          f"sound / float {ratio:.2f}x (goal <= 1.3x)")
    rows = {noise: certified_f1(work / f"run-{noise}", work / f"report-{noise}") for noise in best}
    print("| certified F1 (%) | " + " | ".join(f"R = {r:g}" for r in RADII) + " |")
    print("|---|" + "---:|" * len(RADII))
    for noise, row in rows.items():
        print(f"| {noise} noise | " + " | ".join(f"{value:.1f}" for value in row) + " |")
    gaps = [abs(a - b) for a, b in zip(rows["float"], rows["sound"], strict=True)]
    print(f"largest F1 difference {max(gaps):.1f} points (the default rule: within 0.5 and within 1.1x)")


if __name__ == "__main__":
    main()
