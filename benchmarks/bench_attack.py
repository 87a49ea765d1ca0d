"""How tight is the certificate? The default attack (``apgd-targeted``) against the ``pgd`` baseline.

    python benchmarks/bench_attack.py [--checkpoint multiguard-demo/model.pt] [--inputs 100] [--n 500]
                                      [--radii 0.25,0.5,1] [--work bench-attack] [--threads 2]
                                      [--slack-n 20000] [--saturation STEPS,SAMPLES,RESTARTS]
                                      [--threshold TAU]

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

``--saturation STEPS,SAMPLES,RESTARTS`` (a benchmark option, not a product default) runs the default attack a
second time at that budget (APGD steps per restart, EOT samples per step, restarts; the default budget is
30,32,3), on the same inputs, certified sizes and measurement, and prints its P / R / F1 beside the default's
with its time: if the empirical recall does not move, the gap that the attack leaves is not the attack's budget.

``--threshold TAU`` runs the *thresholded* benchmark instead: ``run_attack(..., attack="pgd", thresholds=TAU)``
(the per-label decisions of the smoothed thresholded classifier, cut q = 0.5, attacked at the attack's default
budget, as ``multiguard attack --threshold TAU --attack pgd``), its certified and attacked set P / R / F1 per
radius, and the same gap split for the thresholded certificate: the on-probabilities re-estimated on
``--slack-n`` samples, the per-label radii from bounds at alpha and as a plug-in
(``sigma (Phi^-1(p) - Phi^-1(q))`` with the estimate p taken as exact), and the share of the attacked-minus-certified
F1 (and recall, precision) that is Monte Carlo slack. With ``--saturation STEPS,SAMPLES`` the thresholded attack
runs a second time at that budget (its 3 rounds unchanged; the default is 20 steps x 32 samples) and its row is
printed beside.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import thresholded as _thresholded
from multiguard.certificates import topk as _topk
from multiguard.evaluation import attack_run as _attack_run
from multiguard.evaluation.attack_run import AttackRun, run_attack

METRICS = ("precision", "recall", "f1")
ALPHA = 0.001
BIG = "default, larger budget"
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
    parser.add_argument("--saturation", default=None, metavar="STEPS,SAMPLES,RESTARTS",
                        help="also run the default attack at this larger budget (e.g. 60,64,6)")
    parser.add_argument("--threshold", type=float, default=None, metavar="TAU",
                        help="run the thresholded benchmark (score threshold TAU, cut q = 0.5) instead of top-k")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    if args.threshold is not None:
        _thresholded_bench(args, work)
        return
    budgets: dict[str, dict[str, int]] = {"pgd": {}, "apgd-targeted": {}}
    if args.saturation:
        steps, samples, restarts = (int(v) for v in args.saturation.split(","))
        budgets[BIG] = {"steps": steps, "samples": samples, "restarts": restarts}
    runs, seconds = {}, {}
    for name, budget in budgets.items():
        start = time.perf_counter()
        folder = name if not budget else f"apgd-targeted-{budget['steps']}-{budget['samples']}-{budget['restarts']}"
        runs[name] = run_attack(args.checkpoint, out_dir=work / folder, radii=args.radii, k=3, k_prime=1,
                                num_inputs=args.inputs, n=args.n, alpha=ALPHA, seed=0, device="cpu",
                                attack="pgd" if name == "pgd" else "apgd-targeted", overwrite=True, **budget)
        seconds[name] = time.perf_counter() - start
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
    if BIG in runs:
        _print_saturation(runs, certified, radii, seconds, args.saturation)
    if args.slack_n:
        _print_slack(args.checkpoint, pgd, runs, n=args.n, big_n=args.slack_n, radii=radii)


def _print_saturation(runs: dict[str, AttackRun], certified: dict[str, np.ndarray], radii: np.ndarray,
                      seconds: dict[str, float], budget: str) -> None:
    """The default attack at its own budget and at ``--saturation``'s, per radius."""
    default, big = runs["apgd-targeted"], runs[BIG]
    assert np.array_equal(default.certified, big.certified)
    rows = {name: _metric_rows(runs[name].sizes, default.labels, 3) for name in ("apgd-targeted", BIG)}
    print(f"\nsaturation: the default attack at 30,32,3 and at {budget} (steps, samples, restarts)")
    print("| R | certified P / R / F1 | default P / R / F1 | larger budget P / R / F1 | recall change "
          "| inputs fewer / more labels | violations |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for i, r in enumerate(radii):
        change = rows[BIG]["recall"][i] - rows["apgd-targeted"]["recall"][i]
        fewer = int((big.sizes[:, i] < default.sizes[:, i]).sum())
        more = int((big.sizes[:, i] > default.sizes[:, i]).sum())
        print(f"| {r:g} | {_triple(certified, i)} | {_triple(rows['apgd-targeted'], i)} | {_triple(rows[BIG], i)} "
              f"| {change:+.3f} | {fewer} / {more} | {int(big.violations[i])} |")
    print(f"time: default {seconds['apgd-targeted']:.0f} s, larger budget {seconds[BIG]:.0f} s "
          f"({seconds[BIG] / seconds['apgd-targeted']:.1f}x)")


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
    if BIG in runs:
        rows["attacked, default at the larger budget"] = runs[BIG].sizes
    table = {name: _metric_rows(values, labels, 3) for name, values in rows.items()}
    print(f"\ngap split ({time.perf_counter() - start:.0f} s): top-3 P / R / F1 per radius")
    _print_rows(table, radii)
    certified = table[f"certified (n = {n}, alpha = {ALPHA:g})"]["recall"]
    exact = table[f"plug-in of the n = {big_n} estimates (~ exact)"]["recall"]
    for attacked in [name for name in table if name.startswith("attacked, default")]:
        print(f"{attacked}:")
        for i, r in enumerate(radii):
            gap = table[attacked]["recall"][i] - certified[i]
            slack = exact[i] - certified[i]
            share = f"{100 * slack / gap:.0f} %" if gap > 0 else "n/a"
            print(f"R = {r:g}: recall gap {gap:.3f} = Monte Carlo slack {slack:.3f} ({share}) + theorem's worst "
                  f"case and attack's weakness {gap - slack:.3f}")


def _print_rows(rows: dict[str, dict[str, np.ndarray]], radii: np.ndarray) -> None:
    """One markdown table: a row per way of sizing (its P / R / F1 at each radius)."""
    print("| sizes from | " + " | ".join(f"R = {r:g}" for r in radii) + " |")
    print("| --- |" + " --- |" * len(radii))
    for name, metric in rows.items():
        print(f"| {name} | " + " | ".join(_triple(metric, i) for i in range(len(radii))) + " |")


def _thresholded_bench(args: argparse.Namespace, work: Path) -> None:
    """The thresholded attack against the thresholded certificate, and its gap split (module docstring)."""
    start = time.perf_counter()
    run = run_attack(args.checkpoint, out_dir=work / "thresholded", radii=args.radii, k=3, k_prime=1,
                     num_inputs=args.inputs, n=args.n, alpha=ALPHA, seed=0, device="cpu", attack="pgd",
                     thresholds=args.threshold, overwrite=True)
    seconds = time.perf_counter() - start
    result = run.thresholded
    assert result is not None and result.certificate is not None
    radii, labels, certificate = np.asarray(run.curves.radius), run.labels, result.certificate
    print(f"{len(run.indices)} inputs, n = {args.n}, threshold {args.threshold:g}, q = {certificate.q:g}, "
          f"alpha = {ALPHA:g}, checkpoint {args.checkpoint} ({seconds:.0f} s with the top-k pgd part)")
    rows: dict[str, dict[str, np.ndarray]] = {}

    def certified(on_counts: np.ndarray, total: int) -> dict[str, np.ndarray]:
        cert = _thresholded.certify_thresholded(on_counts, total, alpha=ALPHA, sigma=certificate.sigma,
                                                q=certificate.q)
        m = cert.metrics(labels, radii)
        return {name: np.atleast_1d(getattr(m, name)) for name in METRICS}

    def plug_in(on_counts: np.ndarray, total: int) -> dict[str, np.ndarray]:
        p = on_counts / total
        on, off = _thresholded.certified_label_radii(p, p, sigma=certificate.sigma, q=certificate.q)
        m = _thresholded.thresholded_metrics(on, off, labels, radii)
        return {name: np.atleast_1d(getattr(m, name)) for name in METRICS}

    n = args.n
    rows[f"certified (n = {n}, alpha = {ALPHA:g})"] = certified(certificate.on_counts, n)
    assert np.allclose(rows[f"certified (n = {n}, alpha = {ALPHA:g})"]["f1"], result.table["certified_f1"])
    attacked = {name: np.asarray(result.table[name]) for name in METRICS}
    if args.slack_n:
        split_start = time.perf_counter()
        _, data, _, smoother, _, _, _ = _attack_run._load_for_attack(
            args.checkpoint, 3, 1, dataset=None, data_root=None, split=None, sigma=None, device="cpu",
            precision="fp32", channels_last=None, compile=False, denoiser=None, thresholds=args.threshold)
        x, x_labels = _attack_run._attack_batch(smoother, data, run.indices, 1000, print)
        assert np.array_equal(x_labels, labels)
        big_n = args.slack_n
        big = np.asarray(smoother.sample_on_counts(x, big_n, seed=SLACK_SEED, index=run.indices, batch_size=1000))
        rows[f"certified (n = {big_n}, alpha = {ALPHA:g})"] = certified(big, big_n)
        rows[f"plug-in of the n = {n} estimates"] = plug_in(certificate.on_counts, n)
        rows[f"plug-in of the n = {big_n} estimates (~ exact)"] = plug_in(big, big_n)
        print(f"(re-estimate on {big_n} samples: {time.perf_counter() - split_start:.0f} s)")
    rows["attacked (thresholded attack)"] = attacked
    if args.saturation:
        steps, samples, *rest = (int(v) for v in args.saturation.split(","))
        if rest and rest != [3]:
            raise SystemExit("--saturation: with --threshold give STEPS,SAMPLES (the attack's rounds stay 3)")
        start = time.perf_counter()
        big = run_attack(args.checkpoint, out_dir=work / f"thresholded-{steps}-{samples}", radii=args.radii, k=3,
                         k_prime=1, num_inputs=args.inputs, n=args.n, alpha=ALPHA, seed=0, device="cpu",
                         attack="pgd", thresholds=args.threshold, overwrite=True, steps=steps, samples=samples)
        assert big.thresholded is not None
        rows[f"attacked, larger budget ({steps} steps x {samples} samples)"] = {
            name: np.asarray(big.thresholded.table[name]) for name in METRICS}
        print(f"(larger budget: {time.perf_counter() - start:.0f} s against {seconds:.0f} s, both with the top-k "
              f"pgd part; violations {big.thresholded.violations.tolist()})")
    print(f"\nthresholded set P / R / F1 per radius; violations {result.violations.tolist()} "
          f"(labels {result.violated_labels.tolist()})")
    _print_rows(rows, radii)
    if args.slack_n:
        base = rows[f"certified (n = {n}, alpha = {ALPHA:g})"]
        exact = rows[f"plug-in of the n = {args.slack_n} estimates (~ exact)"]
        print("\n| R | metric | gap (attacked - certified) | Monte Carlo slack (plug-in - certified) | rest |")
        print("| --- | --- | --- | --- | --- |")
        for i, r in enumerate(radii):
            for name in METRICS:
                gap, slack = attacked[name][i] - base[name][i], exact[name][i] - base[name][i]
                share = f" ({100 * slack / gap:.0f} %)" if gap > 0 else ""
                print(f"| {r:g} | {name} | {gap:.3f} | {slack:.3f}{share} | {gap - slack:.3f} |")


if __name__ == "__main__":
    main()
