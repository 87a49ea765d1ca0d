"""Sequential certification against fixed n and against an oracle: samples per input and certified F1 at R.

    python benchmarks/bench_sequential.py [--work bench-sequential] [--models demo seed1] [--threads 1]
                                          [--search] [--live]

The demo's setting: small_cnn trained on multidigits exactly as ``multiguard demo`` trains it (8 epochs of
8,000 images, lr 3e-3, noise sigma 0.5, seed 0: model ``demo``), and a second model trained the same way from
another seed (``seed1``) or with sigma 0.25 (``sigma0.25``), to show that the default was not tuned to one
model. Each model is trained into ``--work/MODEL/model.pt`` unless already there. 500 random test inputs
(seed 0), k' = 1, k = 3, alpha = 0.001, L = the ground truth, target radii R = 0.25 and 0.5, at most 1,000 and
at most 10,000 samples per input.

Every figure comes from one set of samples per model: the counts of each input after every 100 samples up to
10,000 (``MultiGuard.sample_nested_counts``, kept in ``--work/MODEL/nested100.npz`` and reused). Each such
count is exactly what a fixed-n run with that n draws, and each sequential procedure is replayed on them
(``multiguard.certificates.sequential.sequential_certification``): the replay is what running the procedure gives
(``--live N`` checks it on the first N inputs of the first model:
``MultiGuard.certify(..., stop_rule=StopRule(radius=R))``
with the default rule at most 1,000 samples, timed, against the replay: samples, counts and radii equal).

Columns, per (model, R, most samples):

- fixed n = most: certified F1@R (fixed-n Clopper-Pearson bounds at alpha / c);
- oracle: for each input, from its label frequencies p_hat at n = most, the fewest samples m whose expected
  counts m p_hat certify (fixed-n bounds) the size fixed n = most certifies at R (0 samples where that size is
  0); its F1 is that of fixed n. No procedure can know p_hat in advance: the oracle says what a perfect
  stopping rule could save, without the price of looking more than once;
- each procedure: mean samples per input, F1@R, its F1 minus fixed n's (points), and its mean samples over
  the oracle's.

``betting-cp`` is the betting column's sequences at 1/4 of each bound's alpha plus, at the last look, a fixed-n
Clopper-Pearson bound at the other w = 3/4 (read where better). ``tuned`` is the mixture of likelihood ratios
tuned to the sizes up to the last look (``multiguard.certificates.tuned``), looking after every block;
``tuned-cp`` is it at 1 - w plus Clopper-Pearson at the last look at w = 3/4. ``--cp-shares`` replays other
shares w of both and prints them in a table of their own.

``--search`` adds a grid (schedule x share of alpha at the last look x futility margin gamma) for the design
choice. Writes ``results.json`` and ``sequential.png`` into ``--work``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from multiguard.certificates import metrics as _metrics
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.certificates.sequential import SequentialCertificate
from multiguard.certificates.stop_rule import StopRule

K, K_PRIME, ALPHA, SEED, NUM_INPUTS = 3, 1, 0.001, 0, 500
MOST = (1000, 10_000)
GRID_STEP = 100  # the nested counts are stored every GRID_STEP samples
MODELS = {
    "demo": {"seed": 0, "sigma": 0.5},
    "seed1": {"seed": 1, "sigma": 0.5},
    "sigma0.25": {"seed": 0, "sigma": 0.25},
}


@dataclass(frozen=True)
class Procedure:
    """A sequential procedure: its schedule of looks, share of alpha at the last look (None: equal shares),
    futility rule and margin gamma (read by ``margin`` only)."""

    schedule: str
    spending: float | None
    futility: str
    margin: float = seq.DEFAULT_MARGIN
    bounds: str = "union"

    @property
    def name(self) -> str:
        spend = "equal shares" if self.spending is None else f"{self.spending:g} of alpha last"
        rule = f"margin gamma={self.margin:g}" if self.futility == "margin" else self.futility
        reads = seq.bounds_family(self.bounds).spending  # what the bounds family reads of the spending
        if reads == "looks":
            return f"{rule}, {self.schedule}, {spend}"
        base = self.bounds.removesuffix("-cp")
        if reads == "share":
            return f"{rule}, {self.schedule}, {base} bounds + Clopper-Pearson at the last look ({spend})"
        return f"{rule}, {self.schedule}, {base} bounds"


PROCEDURES = {
    "remaining": Procedure("1-2-5", None, "remaining"),
    "plausible": Procedure("1-2-5", None, "plausible"),
    "projected": Procedure("1-2-5", None, "projected"),
    "default": Procedure(seq.DEFAULT_SCHEDULE, seq.DEFAULT_SPENDING, seq.DEFAULT_FUTILITY, seq.DEFAULT_MARGIN),
    # issue 31: the confidence sequences of multiguard.certificates.betting, looking after every noise block
    "betting": Procedure("every-block", None, seq.DEFAULT_FUTILITY, seq.DEFAULT_MARGIN, "betting"),
    # the same sequences at (1 - w) of each bound's alpha, and at the last look the better of them and a fixed-n
    # Clopper-Pearson bound at w of it (w = the spending share: the command line's default, 0.75)
    "betting-cp": Procedure("every-block", seq.DEFAULT_SPENDING, seq.DEFAULT_FUTILITY, seq.DEFAULT_MARGIN,
                            "betting-cp"),
    # issue 31, second try: mixtures of likelihood ratios tuned to the sizes up to the last look
    # (multiguard.certificates.tuned), alone and with Clopper-Pearson at the last look at the spending share
    "tuned": Procedure("every-block", None, seq.DEFAULT_FUTILITY, seq.DEFAULT_MARGIN, "tuned"),
    "tuned-cp": Procedure("every-block", seq.DEFAULT_SPENDING, seq.DEFAULT_FUTILITY, seq.DEFAULT_MARGIN,
                          "tuned-cp"),
}
CP_SHARES = (0.25, 0.5, 0.75, 0.9)
"""The shares w of betting-cp and tuned-cp replayed besides (``--cp-shares``), printed in a table of their own."""
CP_FAMILIES = ("betting-cp", "tuned-cp")
"""The bounds families whose last-look Clopper-Pearson share ``--cp-shares`` sweeps."""


# ---------------------------------------------------------------------------------------------- the data


def model_data(work: Path, name: str, threads: int) -> dict:
    """The model's nested counts every 100 samples up to 10,000 (computed and stored unless present)."""
    folder = work / name
    path = folder / "nested100.npz"
    if path.exists():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    import torch

    from multiguard.models.checkpoints import dataset_for_checkpoint, load_checkpoint, smoothed_from_checkpoint
    from multiguard.runs.job import load_batch, select_inputs

    torch.set_num_threads(threads)
    model, meta = load_checkpoint(trained_model(folder, **MODELS[name]), device="cpu")
    data, _ = dataset_for_checkpoint(meta)
    # the demo's sampling mode on the CPU (multiguard demo: --precision auto --compile)
    guard = smoothed_from_checkpoint(model, meta, k_prime=K_PRIME, device="cpu", precision="bf16", channels_last=True,
                                     compile=True)
    indices = select_inputs(len(data), NUM_INPUTS, SEED)
    images, labels = load_batch(data, indices)
    sizes = np.arange(GRID_STEP, MOST[-1] + 1, GRID_STEP)
    start = time.perf_counter()
    nested = guard.sample_nested_counts(torch.as_tensor(images), sizes, seed=SEED, index=indices, batch_size=1000)
    stored = dict(indices=indices, labels=labels, sizes=sizes, nested=nested[:, :, 0],
                  seconds=time.perf_counter() - start, sigma=float(meta["sigma"]))
    partial = path.with_name(path.stem + ".partial.npz")  # a kill while writing leaves no half-written counts
    np.savez(partial, **stored)
    partial.replace(path)
    return stored


def trained_model(folder: Path, *, seed: int, sigma: float) -> Path:
    """``multiguard demo``'s model with this seed and sigma, trained into ``folder`` unless already there."""
    from multiguard.demo import DEMO_SETTINGS
    from multiguard.training.classifier import train

    checkpoint = folder / "model.pt"
    if not checkpoint.exists():
        folder.mkdir(parents=True, exist_ok=True)
        settings = DEMO_SETTINGS["full"]
        train("multidigits", arch="small_cnn", sigma=sigma, epochs=settings["epochs"], seed=seed, out=checkpoint,
              device="cpu", progress=False, train_size=settings["train_size"], test_size=settings["test_size"],
              lr=settings["lr"], log=lambda line: print("  " + line))
    return checkpoint


def counts_at(data: dict, looks: np.ndarray) -> np.ndarray:
    """Nested counts ``(N, J, c)`` at ``looks`` (multiples of 100) from the stored grid."""
    return data["nested"][:, looks // GRID_STEP - 1]


# -------------------------------------------------------------------------------------------- the figures


def clopper_pearson(counts: np.ndarray, n: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-n one-sided Clopper-Pearson bounds for (possibly fractional) counts, ``n`` one per row."""
    n = np.broadcast_to(np.asarray(n, dtype=np.float64)[:, None], counts.shape)
    positive, below = counts > 0, counts < n
    lower = stats.beta.ppf(level, np.where(positive, counts, 1.0), n - counts + 1.0)
    upper = stats.beta.ppf(1.0 - level, counts + 1.0, np.where(below, n - counts, 1.0))
    return np.where(positive, lower, 0.0), np.where(below, upper, 1.0)


def fixed_sizes(counts: np.ndarray, n: np.ndarray, labels: np.ndarray, sigma: float, radius: float) -> np.ndarray:
    lower, upper = clopper_pearson(counts.astype(np.float64), n, ALPHA / counts.shape[1])
    return _topk.certified_intersection_size(lower, upper, labels, k=K, k_prime=K_PRIME, sigma=sigma, radius=radius)


def oracle_samples(counts: np.ndarray, most: int, labels: np.ndarray, sigma: float, radius: float) -> np.ndarray:
    """Per input, the fewest samples m whose expected counts ``m counts / most`` certify (fixed-n bounds) the
    size that ``counts`` certify at n = most; 0 where that size is 0. Bisection on m (the certified size of
    fixed frequencies grows with m)."""
    num = counts.shape[0]
    target = fixed_sizes(counts, np.full(num, most), labels, sigma, radius)
    frequency = counts / most
    low, high = np.zeros(num), np.full(num, float(most))  # the target holds at high
    while (high - low > 1).any():
        mid = np.floor((low + high) / 2)
        ok = fixed_sizes(frequency * mid[:, None], np.maximum(mid, 1.0), labels, sigma, radius) >= target
        high, low = np.where(ok, mid, high), np.where(ok, low, mid)
    return np.where(target > 0, high, 0.0)


def replay(data: dict, procedure: Procedure, most: int, radius: float, rows: np.ndarray | None = None
           ) -> SequentialCertificate:
    looks = seq.look_schedule(most, procedure.schedule)
    nested, labels = counts_at(data, looks), data["labels"]
    if rows is not None:
        nested, labels = nested[rows], labels[rows]
    return seq.sequential_certification(
        nested, labels, looks=looks, alpha=ALPHA, k=K, k_prime=K_PRIME, sigma=float(data["sigma"]), radius=radius,
        spending=procedure.spending, futility=procedure.futility, margin=procedure.margin, bounds=procedure.bounds,
    )


def f1_of(result: SequentialCertificate, labels: np.ndarray, radius: float) -> float:
    sizes = _topk.intersection_size_from_radii(result.radii, radius)
    return float(_metrics.certified_metrics(sizes, labels, K).f1)


def cell(data: dict, most: int, radius: float, procedures: dict[str, Procedure]) -> dict:
    """Fixed n, the oracle and every procedure at one (model, most, R)."""
    labels, sigma = data["labels"], float(data["sigma"])
    counts = counts_at(data, np.array([most]))[:, 0]
    fixed = float(_metrics.certified_metrics(fixed_sizes(counts, np.full(len(counts), most), labels, sigma, radius),
                                         labels, K).f1)
    oracle = float(oracle_samples(counts, most, labels, sigma, radius).mean())
    out = {"fixed_f1": fixed, "oracle_samples": oracle, "procedures": {}}
    for key, procedure in procedures.items():
        result = replay(data, procedure, most, radius)
        mean = float(result.samples.mean())
        f1 = f1_of(result, labels, radius)
        halves = []
        for parity in (0, 1) if key == "default" else ():  # the default on the even and the odd inputs
            rows = np.arange(parity, len(labels), 2)
            half = replay(data, procedure, most, radius, rows)
            half_fixed = _metrics.certified_metrics(
                fixed_sizes(counts[rows], np.full(rows.size, most), labels[rows], sigma, radius), labels[rows], K
            ).f1
            halves.append({"mean_samples": float(half.samples.mean()),
                           "f1_change": float(f1_of(half, labels[rows], radius) - half_fixed)})
        out["procedures"][key] = {"name": procedure.name, "mean_samples": mean, "f1": f1, "f1_change": f1 - fixed,
                                  "over_oracle": mean / oracle, "halves": halves}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-sequential", help="folder for the models, counts and outputs")
    parser.add_argument("--models", nargs="+", default=["demo", "seed1"], choices=list(MODELS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (sampling only)")
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5], help="target radii R")
    parser.add_argument("--search", action="store_true", help="also replay a grid of schedules, shares and margins")
    parser.add_argument("--cp-shares", type=float, nargs="*", default=list(CP_SHARES), metavar="W",
                        help="shares w of alpha at the last look's Clopper-Pearson bound of betting-cp to replay")
    parser.add_argument("--live", type=int, default=0, metavar="N",
                        help="check live sampling against the replay on the first N inputs of the first model")
    args = parser.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    procedures = dict(PROCEDURES)
    share_keys = [share_key(family, share) for family in CP_FAMILIES for share in args.cp_shares]
    for family in CP_FAMILIES:
        for share in args.cp_shares:
            procedures.setdefault(share_key(family, share), Procedure("every-block", share, seq.DEFAULT_FUTILITY,
                                                                      seq.DEFAULT_MARGIN, family))
    if args.search:
        for schedule in ("1-2-5", "fine"):
            for share in (None, 0.5, 0.75, 0.9):
                for margin in (0.05, 0.1, 0.2, 0.3, 0.5):
                    procedures[f"{schedule}/{share}/{margin}"] = Procedure(schedule, share, "margin", margin)
    results: dict = {"settings": {"k": K, "k_prime": K_PRIME, "alpha": ALPHA, "inputs": NUM_INPUTS}, "models": {}}
    print(f"{NUM_INPUTS} inputs, k = {K}, k' = {K_PRIME}, alpha = {ALPHA}; mean samples per input / certified "
          f"F1@R (%) / change against fixed n (points) / x oracle")
    print("| model | R | most | fixed n | oracle | " + " | ".join(PROCEDURES) + " |")
    print("| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in PROCEDURES) + " |")
    for model in args.models:
        data = model_data(work, model, args.threads)
        results["models"][model] = {"sigma": float(data["sigma"]), "sampling_seconds": float(data["seconds"]),
                                    "cells": {}}
        for radius in args.radii:
            for most in MOST:
                entry = cell(data, most, radius, procedures)
                results["models"][model]["cells"][f"{radius:g}/{most}"] = entry
                line = [model, f"{radius:g}", f"{most:,}", f"{most:,} / {100 * entry['fixed_f1']:.1f}",
                        f"{entry['oracle_samples']:,.0f} / {100 * entry['fixed_f1']:.1f}"]
                for key in PROCEDURES:
                    p = entry["procedures"][key]
                    line.append(f"{p['mean_samples']:,.0f} / {100 * p['f1']:.1f} / {100 * p['f1_change']:+.1f} / "
                                f"{p['over_oracle']:.2f}x")
                print("| " + " | ".join(line) + " |", flush=True)
    for key, procedure in PROCEDURES.items():
        print(f"{key}: {procedure.name}")
    default_halves = [(model, name, entry["procedures"]["default"]["halves"])
                      for model, item in results["models"].items() for name, entry in item["cells"].items()]
    for model, name, halves in default_halves:
        print(f"default on even / odd inputs, {model} {name}: " + "; ".join(
            f"{h['mean_samples']:,.0f} samples, {100 * h['f1_change']:+.1f} points" for h in halves))
    if args.cp_shares:
        print_shares(results, share_keys)
    if args.search:
        print_search(results, procedures)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    if args.live:
        results["live"] = live_check(work, args.models[0], args.live, args.radii, args.threads)
        (work / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, args.radii, work / "sequential.png")
    print(f"wrote {work / 'results.json'} and {work / 'sequential.png'}")


def live_check(work: Path, model: str, num: int, radii: list[float], threads: int) -> dict:
    """Run the default rule live on the first ``num`` inputs (at most 1,000 samples) and check it equals the
    replay on nested counts of the same samples; returns the wall time and samples per radius.

    In fp32 without compilation: the bf16 compiled mode of the stored counts is not bit-stable across forward
    batch shapes on the CPU, and live sampling shrinks its batches as inputs stop."""
    import torch

    from multiguard.models.checkpoints import dataset_for_checkpoint, load_checkpoint, smoothed_from_checkpoint
    from multiguard.runs.job import load_batch

    torch.set_num_threads(threads)
    data = model_data(work, model, threads)
    loaded, meta = load_checkpoint(trained_model(work / model, **MODELS[model]), device="cpu")
    dataset, _ = dataset_for_checkpoint(meta)
    guard = smoothed_from_checkpoint(loaded, meta, k_prime=K_PRIME, device="cpu")
    indices = data["indices"][:num]
    images, labels = load_batch(dataset, indices)
    looks = seq.look_schedule(MOST[0], seq.DEFAULT_SCHEDULE)
    nested = guard.sample_nested_counts(torch.as_tensor(images), looks, seed=SEED, index=indices)[:, :, 0]
    out = {}
    for radius in radii:
        start = time.perf_counter()
        live = guard.certify(torch.as_tensor(images), labels, n=MOST[0], alpha=ALPHA, k=K,
                             stop_rule=StopRule(radius=radius), seed=SEED, index=indices, batch_size=1000)
        seconds = time.perf_counter() - start
        replayed = seq.sequential_certification(nested, labels, looks=looks, alpha=ALPHA, k=K, k_prime=K_PRIME,
                                                sigma=float(data["sigma"]), radius=radius)
        assert np.array_equal(live.samples, replayed.samples), "live samples differ from the replay"
        assert np.array_equal(live.counts, replayed.counts), "live counts differ from the replay"
        assert np.array_equal(live.radii, replayed.radii), "live radii differ from the replay"
        out[str(radius)] = {"seconds": seconds, "mean_samples": float(live.samples.mean())}
        print(f"live = replay on {num} inputs at R = {radius:g}: {live.samples.mean():.0f} samples per input, "
              f"{seconds:.1f} s")
    return out


def share_key(family: str, share: float) -> str:
    """The procedure key of ``family`` (betting-cp, tuned-cp) at share w (the main column's where w is its share)."""
    return family if share == PROCEDURES[family].spending else f"{family} w={share:g}"


def print_shares(results: dict, keys: list[str]) -> None:
    """betting-cp and tuned-cp at each share w: per cell, mean samples / F1 change (points) / x oracle."""
    print("| model | R | most | fixed n | oracle | " + " | ".join(keys) + " |")
    print("| --- | --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in keys) + " |")
    for model, item in results["models"].items():
        for name, entry in item["cells"].items():
            radius, most = name.split("/")
            line = [model, radius, f"{int(most):,}", f"{100 * entry['fixed_f1']:.1f}",
                    f"{entry['oracle_samples']:,.0f}"]
            for key in keys:
                p = entry["procedures"][key]
                line.append(f"{p['mean_samples']:,.0f} / {100 * p['f1_change']:+.1f} / {p['over_oracle']:.2f}x")
            print("| " + " | ".join(line) + " |", flush=True)


def print_search(results: dict, procedures: dict[str, Procedure]) -> None:
    """Per grid procedure: the worst cell against the goals (samples over the oracle, F1 change)."""
    print("| procedure | " + " | ".join(f"{m} R={c}" for m, item in results["models"].items() for c in item["cells"])
          + " | max x oracle | worst change |")
    for key, procedure in procedures.items():
        cells = [item["cells"][c]["procedures"][key] for item in results["models"].values() for c in item["cells"]]
        text = " | ".join(f"{p['mean_samples']:,.0f} {100 * p['f1_change']:+.1f}" for p in cells)
        print(f"| {procedure.name} | {text} | {max(p['over_oracle'] for p in cells):.2f} | "
              f"{100 * min(p['f1_change'] for p in cells):+.1f} |")


def plot(results: dict, radii: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(results["models"])
    fig, axes = plt.subplots(len(models), len(radii), figsize=(5.2 * len(radii), 3.8 * len(models)), squeeze=False)
    for row, model in zip(axes, models, strict=True):
        cells = results["models"][model]["cells"]
        for ax, radius in zip(row, radii, strict=True):
            for most, marker in zip(MOST, ("o", "s"), strict=True):
                entry = cells[f"{radius:g}/{most}"]
                ax.scatter([most], [100 * entry["fixed_f1"]], color="C0", marker=marker,
                           label="fixed n" if most == MOST[0] else None)
                ax.scatter([entry["oracle_samples"]], [100 * entry["fixed_f1"]], color="k", marker=marker,
                           label="oracle" if most == MOST[0] else None)
                for color, key in zip(("C3", "C2", "C1", "C4", "C5", "C6", "C7", "C8"), PROCEDURES, strict=True):
                    p = entry["procedures"][key]
                    ax.scatter([p["mean_samples"]], [100 * p["f1"]], color=color, marker=marker,
                               label=key if most == MOST[0] else None)
            ax.set_xscale("log")
            ax.set_xlabel("mean samples per input (o: at most 1,000; s: at most 10,000)")
            ax.set_ylabel(f"certified F1@{radius:g} (%)")
            ax.set_title(f"{model}: R = {radius:g} (k = {K}, k' = {K_PRIME})", fontsize=10)
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
