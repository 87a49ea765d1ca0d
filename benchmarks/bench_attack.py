"""How tight is the certificate? The default attack (``apgd-targeted``) against the ``pgd`` baseline.

    python benchmarks/bench_attack.py [--checkpoint multiguard-demo/model.pt] [--inputs 100] [--n 500]
                                      [--radii 0.25,0.5,1] [--work bench-attack] [--threads 2]
                                      [--slack-n 20000]

Both attacks run through :func:`multiguard.evaluation.attack_run.run_attack`, at their default budgets, on the
same checkpoint, the same test inputs (seed 0, as a certify run picks them), the same certified sizes (n samples
at the clean input, alpha = 0.001, k = 3, k' = 1) and the same measurement (n fresh samples of the measurement
seed at the attacked point). Printed per radius: the certified top-3 precision, recall and F1 (lower bounds),
both attacks' empirical ones (upper bounds on the worst case), the *gap ratio*
``(default - certified) / (pgd - certified)`` of the recall gaps (goal <= 0.5), the violations (inputs attacked
below their certified size: each a certificate failure of probability at most alpha) and the time ratio
``default / pgd`` (goal <= 10).

Then (unless ``--slack-n 0``) the gap split: the inputs' smoothed probabilities re-estimated on ``--slack-n``
fresh samples (seed :data:`SLACK_SEED`, independent of the certificate's), and top-3 P / R / F1 of the certified
sizes from them: with bounds at alpha (a certificate at the larger n) and as a *plug-in* (the estimates taken as
exact: Theorem 1 at the true probabilities up to the estimates' noise; a diagnostic, NOT a certificate). Also
the plug-in of the n-sample estimates themselves. Plug-in minus certified is the certificate's Monte Carlo slack
(n samples, alpha); attacked minus plug-in is what is left for Theorem 1's worst-case slack and the attack's
weakness together.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import topk as _topk
from multiguard.evaluation import attack_run as _attack_run
from multiguard.evaluation.attack_run import AttackRun, run_attack

METRICS = ("precision", "recall", "f1")
ALPHA = 0.001
SLACK_SEED = 7_000_003  # the large-n re-estimate's noise: not the certificate's (seed 0) nor the measurement's


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
    parser.add_argument("--slack-n", type=int, default=20000,
                        help="samples of the large-n re-estimate for the slack split (0: no split)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    runs, seconds = {}, {}
    for attack in ("pgd", "apgd-targeted"):
        start = time.perf_counter()
        runs[attack] = run_attack(args.checkpoint, out_dir=work / attack, radii=args.radii, k=3, k_prime=1,
                                  num_inputs=args.inputs, n=args.n, alpha=ALPHA, seed=0, device="cpu",
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
    if args.slack_n:
        _print_slack(args.checkpoint, pgd, runs, n=args.n, big_n=args.slack_n, radii=radii)


def _print_slack(checkpoint: str, pgd: AttackRun, runs: dict[str, AttackRun], *, n: int, big_n: int,
                 radii: np.ndarray) -> None:
    """The gap split (module docstring): one table row per way of sizing the certificate, then per radius the
    Monte Carlo share of the default attack's recall gap."""
    start = time.perf_counter()
    _, data, _, smoother, _, _, _ = _attack_run._load_for_attack(
        checkpoint, 3, 1, dataset=None, data_root=None, split=None, sigma=None, device="cpu",
        precision="fp32", channels_last=None, compile=False, denoiser=None)
    x, labels = _attack_run._attack_batch(smoother, data, pgd.indices, 1000, print)
    assert np.array_equal(labels, pgd.labels)
    small = np.asarray(smoother.sample_counts(x, n, seed=0, index=pgd.indices, batch_size=1000))
    big = np.asarray(smoother.sample_counts(x, big_n, seed=SLACK_SEED, index=pgd.indices, batch_size=1000))

    def sizes(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        return _topk.certified_intersection_size(lower, upper, labels, k=3, k_prime=1, sigma=smoother.sigma,
                                                 radius=radii)

    def plug_in(counts: np.ndarray, total: int) -> np.ndarray:
        p = counts / total
        return sizes(np.clip(p - 1e-9, 0, 1), np.clip(p + 1e-9, 0, 1))

    recertified = sizes(*_bounds.label_probability_bounds(small, n, ALPHA))
    assert np.array_equal(recertified, pgd.certified), "the re-drawn certificate differs from the attack's"
    rows = {f"certified (n = {n}, alpha = {ALPHA:g})": pgd.certified,
            f"certified (n = {big_n}, alpha = {ALPHA:g})": sizes(*_bounds.label_probability_bounds(big, big_n, ALPHA)),
            f"plug-in of the n = {n} estimates": plug_in(small, n),
            f"plug-in of the n = {big_n} estimates (~ exact)": plug_in(big, big_n),
            "attacked, pgd": runs["pgd"].sizes, "attacked, default": runs["apgd-targeted"].sizes}
    table = {name: _metric_rows(values, labels, 3) for name, values in rows.items()}
    print(f"\ngap split ({time.perf_counter() - start:.0f} s): top-3 P / R / F1 per radius")
    print("| sizes from | " + " | ".join(f"R = {r:g}" for r in radii) + " |")
    print("| --- |" + " --- |" * len(radii))
    for name, metric in table.items():
        print(f"| {name} | " + " | ".join(_triple(metric, i) for i in range(len(radii))) + " |")
    certified = table[f"certified (n = {n}, alpha = {ALPHA:g})"]["recall"]
    exact = table[f"plug-in of the n = {big_n} estimates (~ exact)"]["recall"]
    for i, r in enumerate(radii):
        gap = table["attacked, default"]["recall"][i] - certified[i]
        slack = exact[i] - certified[i]
        share = f"{100 * slack / gap:.0f} %" if gap > 0 else "n/a"
        print(f"R = {r:g}: recall gap {gap:.3f} = Monte Carlo slack {slack:.3f} ({share}) + theorem's worst case "
              f"and attack's weakness {gap - slack:.3f}")


if __name__ == "__main__":
    main()
