"""Sequential certification against fixed n: forward passes, wall time and certified F1 at a target radius.

    python benchmarks/bench_sequential.py [--work bench-sequential] [--inputs 500] [--threads 1]
                                          [--futility plausible|remaining]

The demo's setting: small_cnn trained on multidigits with noise sigma = 0.5 exactly as ``multiguard demo``
trains it (8 epochs of 8,000 images, lr 3e-3; reused from ``--work`` when present), 500 random test inputs
(seed 0), k' = 1, k = 3, alpha = 0.001, L = the ground truth. For each target radius R in {0.25, 0.5}:

- fixed n = 1000 (timed on its own) and n = 10,000 (timed; its nested counts at 100, 200, 500, 1000, 2000,
  5000, 10,000 give the fixed-n curve, each point exactly the run with that n);
- sequential with at most 1000 and at most 10,000 samples (``MultiGuard.certify(..., stop_at_radius=R)``,
  timed), checked equal to the replay of the procedure on the nested counts; at most 2000 and 5000 are
  replayed only (same samples, so the same result as running them; ``--replay-only`` replays all four).
  ``--futility`` picks the stopping rule's futility test (see :func:`multiguard.sequential.sequential_stopping_rule`).

Prints a table (mean samples per input = forward passes, wall time, certified F1@R) and writes
``results-FUTILITY.json`` and ``sequential.png`` (F1@R against mean forward passes per input: fixed n as one
curve, sequential as another for each futility rule whose results are in ``--work``) into ``--work``. The
n = 10,000 counts are kept in ``--work/nested.npz`` with their sampling time and reused by later runs.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multiguard import certify as cert
from multiguard import sequential as seq
from multiguard.checkpoints import dataset_for_checkpoint, load_checkpoint, smoothed_from_checkpoint
from multiguard.demo import DEMO_SETTINGS
from multiguard.runs import load_batch, select_inputs
from multiguard.train import train

K, K_PRIME, ALPHA, SIGMA, SEED = 3, 1, 0.001, 0.5, 0


def demo_model(work: Path) -> Path:
    """The demo's model (``multiguard demo``'s settings), trained into ``work`` unless already there."""
    checkpoint = work / "model.pt"
    settings = DEMO_SETTINGS["full"]
    if not checkpoint.exists():
        train("multidigits", arch="small_cnn", sigma=SIGMA, epochs=settings["epochs"], seed=SEED, out=checkpoint,
              device="cpu", progress=False, train_size=settings["train_size"], test_size=settings["test_size"],
              lr=settings["lr"], log=lambda line: print("  " + line))
    return checkpoint


def f1_at(lower: np.ndarray, upper: np.ndarray, labels: np.ndarray, radius: float) -> float:
    sizes = cert.certified_intersection_size(lower, upper, labels, k=K, k_prime=K_PRIME, sigma=SIGMA, radius=radius)
    return float(cert.certified_metrics(sizes, labels, K).f1)


def timed(function, *args, **kwargs):  # noqa: ANN001, ANN201 - a stopwatch around any call
    start = time.perf_counter()
    value = function(*args, **kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-sequential", help="folder for the model, counts and outputs")
    parser.add_argument("--inputs", type=int, default=500, help="random test inputs")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5], help="target radii R")
    parser.add_argument("--futility", default="plausible", choices=list(seq.FUTILITY_RULES.names()),
                        help="when the stopping rule gives up on an input")
    parser.add_argument("--replay-only", action="store_true",
                        help="sequential figures from the replay on the stored counts only (no timed runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    model, meta = load_checkpoint(demo_model(work), device="cpu")
    data, _ = dataset_for_checkpoint(meta)
    guard = smoothed_from_checkpoint(model, meta, k_prime=K_PRIME, device="cpu")
    indices = select_inputs(len(data), args.inputs, SEED)
    images, labels = load_batch(data, indices)
    x = torch.as_tensor(images)
    common = dict(seed=SEED, index=indices, batch_size=1000)
    big = 10_000
    sizes = seq.sample_size_schedule(big)

    # The fixed-n samples are the expensive part: kept in nested.npz with the time they took, and reused.
    nested_path = work / "nested.npz"
    stored = dict(np.load(nested_path)) if nested_path.exists() else {}
    if not np.array_equal(stored.get("indices"), indices):
        stored = {"indices": indices}
        stored["nested"], stored["seconds"] = timed(guard.sample_nested_counts, x, sizes, **common)
        stored["nested"] = stored["nested"][:, :, 0]
    if "seconds_1000" not in stored:
        counts_1000, stored["seconds_1000"] = timed(guard.sample_counts, x, 1000, **common)
        assert np.array_equal(stored["nested"][:, list(sizes).index(1000)], counts_1000), "nested != n = 1000"
    np.savez(nested_path, **stored)
    nested, seconds_big, seconds_1000 = stored["nested"], float(stored["seconds"]), float(stored["seconds_1000"])

    results: dict = {"inputs": int(args.inputs), "threads": args.threads, "futility": args.futility, "fixed": {},
                     "sequential": {}}
    rows = []
    for radius in args.radii:
        fixed = {}
        for j, size in enumerate(sizes.tolist()):
            lower, upper = cert.label_probability_bounds(nested[:, j], size, ALPHA)
            fixed[size] = f1_at(lower, upper, labels, radius)
        results["fixed"][str(radius)] = fixed
        rows.append((radius, "fixed", 1000, 1000.0, seconds_1000, fixed[1000]))
        rows.append((radius, "fixed", big, float(big), seconds_big, fixed[big]))
        sequential = {}
        for most in (1000, 2000, 5000, big):
            looks = seq.sample_size_schedule(most)
            replay = seq.sequential_certification(nested[:, : looks.size], labels, looks=looks, alpha=ALPHA, k=K,
                                                   k_prime=K_PRIME, sigma=SIGMA, radius=radius, futility=args.futility)
            seconds = None
            if most in (1000, big) and not args.replay_only:
                result, seconds = timed(guard.certify, x, labels, n=most, alpha=ALPHA, k=K, stop_at_radius=radius,
                                        futility=args.futility, **common)
                assert np.array_equal(result.samples, replay.samples), "sequential run differs from its replay"
                assert np.array_equal(result.radii, replay.radii)
            f1 = f1_at(replay.lower, replay.upper, labels, radius)
            sequential[most] = {"mean_samples": float(replay.samples.mean()), "f1": f1, "seconds": seconds,
                                "stopped_at": {int(s): int((replay.samples == s).sum()) for s in looks}}
            if most in (1000, big):
                rows.append((radius, "sequential", most, float(replay.samples.mean()), seconds, f1))
        results["sequential"][str(radius)] = sequential

    print(f"{args.inputs} inputs, k = {K}, k' = {K_PRIME}, sigma = {SIGMA}, alpha = {ALPHA}, {args.threads} thread(s), "
          f"futility {args.futility}")
    print("| R | method | n (most) | mean samples per input | wall time | certified F1@R |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for radius, method, most, mean, seconds, f1 in rows:
        wall = "not timed" if seconds is None else f"{seconds:.1f} s"
        print(f"| {radius:g} | {method} | {most:,} | {mean:,.0f} | {wall} | {100 * f1:.1f} % |")
    for radius in args.radii:
        fixed = results["fixed"][str(radius)]
        line = ", ".join(f"n={size:,}: {100 * f1:.1f}" for size, f1 in fixed.items())
        print(f"fixed n at R = {radius:g} (F1 %, from the nested counts): {line}")
        for most, entry in results["sequential"][str(radius)].items():
            print(f"sequential at R = {radius:g}, at most {most:,}: mean {entry['mean_samples']:.0f} samples, F1 "
                  f"{100 * entry['f1']:.1f} %, stopped at {entry['stopped_at']}")
    written = work / f"results-{args.futility}.json"
    written.write_text(json.dumps(results, indent=1))
    every = [json.loads((work / f"results-{rule}.json").read_text()) for rule in seq.FUTILITY_RULES.names()
             if (work / f"results-{rule}.json").exists()]
    plot(every, args.radii, work / "sequential.png")
    print(f"wrote {written} and {work / 'sequential.png'}")


def plot(every: list[dict], radii: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(radii), figsize=(5.2 * len(radii), 3.8), squeeze=False)
    for ax, radius in zip(axes[0], radii, strict=True):
        fixed = every[0]["fixed"][str(radius)]
        ax.plot([int(n) for n in fixed], [100 * v for v in fixed.values()], "o-", color="C0", label="fixed n")
        for color, results in zip(("C3", "C2", "C1"), every, strict=False):
            sequential = results["sequential"][str(radius)]
            means = [entry["mean_samples"] for entry in sequential.values()]
            ax.plot(means, [100 * entry["f1"] for entry in sequential.values()], "s-", color=color,
                    label=f"sequential, futility {results['futility']} (at most 1k, 2k, 5k, 10k)")
            for most, entry in sequential.items():
                ax.annotate(f"≤{int(most) // 1000}k", (entry["mean_samples"], 100 * entry["f1"]), fontsize=7,
                            textcoords="offset points", xytext=(4, -10), color=color)
        ax.set_xscale("log")
        ax.set_xlabel("mean forward passes per input")
        ax.set_ylabel(f"certified F1@{radius:g} (%)")
        ax.set_title(f"R = {radius:g} (k = {K}, k' = {K_PRIME}, σ = {SIGMA})", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
