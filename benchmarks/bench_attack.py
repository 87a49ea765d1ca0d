"""How tight is the certificate? The default attack (``apgd-targeted``) against the ``pgd`` baseline.

    python benchmarks/bench_attack.py [--checkpoint multiguard-demo/model.pt] [--inputs 100] [--n 500]
                                      [--radii 0.25,0.5,1] [--work bench-attack] [--threads 2]

Both attacks run through :func:`multiguard.evaluation.attack_run.run_attack`, at their default budgets, on the
same checkpoint, the same test inputs (seed 0, as a certify run picks them), the same certified sizes (n samples
at the clean input, alpha = 0.001, k = 3, k' = 1) and the same measurement (n fresh samples of the measurement
seed at the attacked point). Printed per radius: the certified top-3 precision, recall and F1 (lower bounds),
both attacks' empirical ones (upper bounds on the worst case), the *gap ratio*
``(default - certified) / (pgd - certified)`` of the recall gaps (goal <= 0.5), the violations (inputs attacked
below their certified size: each a certificate failure of probability at most alpha) and the time ratio
``default / pgd`` (goal <= 10).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from multiguard.certificates import metrics as _metrics
from multiguard.evaluation.attack_run import run_attack

METRICS = ("precision", "recall", "f1")


def _metric_rows(sizes: np.ndarray, labels: np.ndarray, k: int) -> dict[str, np.ndarray]:
    m = _metrics.certified_metrics(sizes, labels, k)
    return {name: np.asarray(getattr(m, name)) for name in METRICS}


def _triple(rows: dict[str, np.ndarray], i: int) -> str:
    return " / ".join(f"{rows[name][i]:.3f}" for name in METRICS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="multiguard-demo/model.pt")
    parser.add_argument("--inputs", type=int, default=100)
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--radii", default="0.25,0.5,1")
    parser.add_argument("--work", default="bench-attack")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    runs, seconds = {}, {}
    for attack in ("pgd", "apgd-targeted"):
        start = time.perf_counter()
        runs[attack] = run_attack(args.checkpoint, out_dir=work / attack, radii=args.radii, k=3, k_prime=1,
                                  num_inputs=args.inputs, n=args.n, alpha=0.001, seed=0, device="cpu",
                                  attack=attack, overwrite=True)
        seconds[attack] = time.perf_counter() - start
    pgd, default = runs["pgd"], runs["apgd-targeted"]
    assert np.array_equal(pgd.certified, default.certified) and np.array_equal(pgd.indices, default.indices)
    radii = np.asarray(pgd.curves.radius)
    certified = _metric_rows(pgd.certified, pgd.labels, 3)
    empirical = {name: _metric_rows(run.sizes, run.labels, 3) for name, run in runs.items()}
    print(f"{len(pgd.indices)} inputs, n = {args.n}, k = 3, k' = 1, alpha = 0.001, checkpoint {args.checkpoint}")
    print("| R | certified P / R / F1 | pgd P / R / F1 | default P / R / F1 | recall gap pgd | recall gap default "
          "| gap ratio | violations pgd / default |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(radii):
        gap_pgd = empirical["pgd"]["recall"][i] - certified["recall"][i]
        gap_default = empirical["apgd-targeted"]["recall"][i] - certified["recall"][i]
        ratio = gap_default / gap_pgd if gap_pgd > 0 else float("nan")
        cells = " | ".join(_triple(rows, i) for rows in (certified, empirical["pgd"], empirical["apgd-targeted"]))
        print(f"| {r:g} | {cells} "
              f"| {gap_pgd:.3f} | {gap_default:.3f} | {ratio:.2f} | {int(pgd.violations[i])} / "
              f"{int(default.violations[i])} |")
    print(f"time: pgd {seconds['pgd']:.0f} s, default {seconds['apgd-targeted']:.0f} s, ratio "
          f"{seconds['apgd-targeted'] / seconds['pgd']:.1f}x (each includes the same certification pass)")
    fewer = (default.sizes < pgd.sizes).sum(axis=0).tolist()
    more = (default.sizes > pgd.sizes).sum(axis=0).tolist()
    print(f"inputs where the default leaves fewer / more labels than pgd, per radius: {fewer} / {more}")


if __name__ == "__main__":
    main()
