"""How far any sequential rule could go: reference bounds, a clairvoyant stop and another futility rule, on the
nested counts of ``bench_sequential.py``.

    python benchmarks/bench_sequential_headroom.py [--work bench-sequential] [--models demo seed1]

Issue 31 asks for a default at most 1.4x the oracle's samples at most 10,000 samples, with certified F1 within 0.5
point of fixed n at R = 0.25 and 0.5. ``bench_sequential.py`` shows that no valid rule it replays meets both. This
script asks why, by relaxing one thing at a time, on the same stored counts (``--work/MODEL/nested100.npz``, made by
``bench_sequential.py`` if missing) and the same setting (500 inputs, k' = 1, k = 3, alpha = 0.001):

- **valid rules** (any futility rule is sound: it only decides when to stop): ``tuned-cp`` at shares w = 0.25
  and 0.5 with the default margin rule, and with a ``predictive`` futility rule (registered in this process only):
  an input is given up when even the remaining m samples arriving at the one-sided normal quantile 1 - gamma of
  the predictive law of their count, ``m p + z sqrt(m p (1 - p) (1 + m / n))`` with p the frequency so far (the
  spread of the parameter and of the new samples together; the margin rule credits only the parameter's), would
  not raise the certified size;
- **reference bounds, not valid**, with the default margin rule, registered in this process only: fixed-n
  Clopper-Pearson at the full alpha / c at every block (looking for free: the limit no valid bound reaches at
  any n, one-sided Clopper-Pearson being the most accurate bound at a fixed n); the tuned sequence and the last
  look's Clopper-Pearson bound each at the full alpha / c (``tuned-cp`` at 2 alpha with w = 1/2: looser than any
  valid split of the two, exact calibration of their union included); ``union`` on the fine schedule with 1/4 of
  alpha at each earlier look instead of 1/4 over all of them (looser than exact crossing probabilities);
- **a clairvoyant stop, not a procedure**: for each input, the first block at which the bounds certify the size
  they certify at the most samples, on the same samples (a futility rule that knew the future). No stopping
  rule on those bounds certifies that F1 with fewer samples.

Prints, per row and (model, R), samples over the oracle and the F1 change against fixed n (points), and whether
the row meets both halves of the goal in every cell.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from bench_sequential import ALPHA, GRID_STEP, K_PRIME, MODELS, MOST, K, Procedure, cell, counts_at, model_data
from scipy import stats

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.certificates.anytime import BOUNDS, BoundsRecord
from multiguard.certificates.sequential import FUTILITY_RULES, FutilityRecord

GOAL_RATIO, GOAL_CHANGE = 1.4, -0.005  # issue 31: at most 1.4x the oracle, F1 at most 0.5 point below fixed n
REFERENCE = "reference-"  # the prefix of the bounds registered below, none of them valid


# ------------------------------------------------- registered in this process only (never a command-line choice)


def _clopper_pearson_per_look(counts: np.ndarray, sizes: np.ndarray, level: Callable[[int], float]
                              ) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds of the rows at each look n at ``level(n)``."""
    lower, upper = np.zeros(counts.shape), np.ones(counts.shape)
    for size in np.unique(sizes):
        rows = sizes == size
        lower[rows], upper[rows] = _bounds.clopper_pearson(counts[rows], int(size), level(int(size)))
    return lower, upper


@BOUNDS.register(REFERENCE + "cp-every-look", help="NOT VALID: fixed-n Clopper-Pearson at alpha / c at every look")
def _cp_every_look(counts: np.ndarray, sizes: np.ndarray, alpha: float, looks: np.ndarray, spending: object,
                   bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    return _clopper_pearson_per_look(counts, sizes, lambda n: alpha / counts.shape[1])


@BOUNDS.register(REFERENCE + "union-early-full", help="NOT VALID: union with 1/4 of alpha at each earlier look",
                 record=BoundsRecord(anytime=False))
def _union_early_full(counts: np.ndarray, sizes: np.ndarray, alpha: float, looks: np.ndarray, spending: object,
                      bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    last, share = int(looks[-1]), seq.DEFAULT_SPENDING
    return _clopper_pearson_per_look(
        counts, sizes, lambda n: (share if n == last else 1.0 - share) * alpha / counts.shape[1])


@BOUNDS.register(REFERENCE + "tuned-cp-full", help="NOT VALID: the tuned sequence and the last look's "
                 "Clopper-Pearson bound each at the full alpha / B", record=BoundsRecord(last_look=True))
def _tuned_cp_full(counts: np.ndarray, sizes: np.ndarray, alpha: float, looks: np.ndarray, spending: object,
                   bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    from multiguard.certificates import tuned as _tuned

    return _tuned.tuned_cp_label_probability_bounds(counts, sizes, 2.0 * alpha, int(looks[-1]), 0.5, bounds_read)


@FUTILITY_RULES.register("predictive", help="the remaining samples at the predictive normal quantile 1 - gamma",
                         record=FutilityRecord(parameters=("margin",)))
def _predictive(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray, remaining: np.ndarray, *,
                margin: float) -> tuple[np.ndarray, np.ndarray]:
    z = stats.norm.isf(margin)
    p = (counts + 0.5) / (n + 1.0)  # the spread's frequency kept off 0 and 1
    spread = z * np.sqrt(remaining * p * (1.0 - p) * (1.0 + remaining / n))
    mean = remaining * counts / n
    return np.clip(np.ceil(mean + spread), 0, remaining), np.clip(np.floor(mean - spread), 0, remaining)


REPLAYED = {
    "tuned-cp w=0.5, margin 0.2": Procedure("every-block", 0.5, "margin", 0.2, "tuned-cp"),
    "tuned-cp w=0.25, margin 0.2": Procedure("every-block", 0.25, "margin", 0.2, "tuned-cp"),
    "tuned-cp w=0.25, predictive 0.2": Procedure("every-block", 0.25, "predictive", 0.2, "tuned-cp"),
    "tuned-cp w=0.25, predictive 0.3": Procedure("every-block", 0.25, "predictive", 0.3, "tuned-cp"),
    "not valid: Clopper-Pearson at every block, margin 0.2": Procedure(
        "every-block", None, "margin", 0.2, REFERENCE + "cp-every-look"),
    "not valid: tuned and Clopper-Pearson each at full alpha, margin 0.2": Procedure(
        "every-block", None, "margin", 0.2, REFERENCE + "tuned-cp-full"),
    "not valid: tuned and Clopper-Pearson each at full alpha, margin 0.3": Procedure(
        "every-block", None, "margin", 0.3, REFERENCE + "tuned-cp-full"),
    "not valid: union, 1/4 of alpha at each earlier look, margin 0.2": Procedure(
        "fine", None, "margin", 0.2, REFERENCE + "union-early-full"),
}
"""The rules replayed (``bench_sequential.cell``): the stopping rule with these bounds and futility rule."""
CLAIRVOYANT = {
    "clairvoyant: tuned": ("tuned", None),
    "clairvoyant: tuned-cp w=0.75": ("tuned-cp", 0.75),
    "clairvoyant: tuned-cp w=0.5": ("tuned-cp", 0.5),
    "clairvoyant: tuned-cp w=0.25": ("tuned-cp", 0.25),
    "clairvoyant, not valid: tuned and Clopper-Pearson each at full alpha": (REFERENCE + "tuned-cp-full", None),
    "clairvoyant, not valid: Clopper-Pearson at every block": (REFERENCE + "cp-every-look", None),
}
"""The bounds (name, spending) the clairvoyant stop is measured on, looks every block."""


def clairvoyant(data: dict, bounds: str, spending: float | None, most: int, entries: dict[float, dict]
                ) -> list[tuple[float, float]]:
    """Per radius of ``entries`` (``bench_sequential.cell`` at that radius: fixed n's F1 and the oracle), the
    clairvoyant stop's samples over the oracle and F1 change; the bounds are computed once per look."""
    looks = seq.look_schedule(most, "every-block")
    nested, labels, sigma = counts_at(data, looks).astype(np.float64), data["labels"], float(data["sigma"])
    ends = [seq.anytime_label_probability_bounds(nested[:, j], int(n), ALPHA, looks, spending, bounds=bounds)
            for j, n in enumerate(looks)]
    out = []
    for radius, entry in entries.items():
        sizes = np.stack([_topk.intersection_size_at(lower, upper, labels, k=K, k_prime=K_PRIME, sigma=sigma,
                                                     radius=radius) for lower, upper in ends], axis=1)
        final = sizes[:, -1]
        first = np.argmax(sizes >= final[:, None], axis=1)  # the first block already certifying the final size
        samples = np.where(final > 0, looks[first], looks[0])  # nothing to certify: one block to see it
        f1 = float(_metrics.certified_metrics(final, labels, K).f1)
        out.append((float(samples.mean()) / entry["oracle_samples"], f1 - entry["fixed_f1"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-sequential", help="bench_sequential.py's folder (counts reused)")
    parser.add_argument("--models", nargs="+", default=["demo", "seed1"], choices=list(MODELS))
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5], help="target radii R")
    parser.add_argument("--most", type=int, default=MOST[-1],
                        help=f"the most samples per input (a multiple of {GRID_STEP} up to {MOST[-1]:,})")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, if the counts must be sampled")
    args = parser.parse_args()
    if args.most % GRID_STEP or not GRID_STEP <= args.most <= MOST[-1]:
        parser.error(f"--most must be a multiple of {GRID_STEP} from {GRID_STEP} to {MOST[-1]:,}, got {args.most}")
    if any(radius < 0 for radius in args.radii):
        parser.error(f"--radii must be >= 0, got {args.radii}")
    rows: dict[str, list[tuple[float, float]]] = {label: [] for label in [*REPLAYED, *CLAIRVOYANT]}
    cells = []
    for model in args.models:
        data = model_data(Path(args.work), model, args.threads)
        entries = {radius: cell(data, args.most, radius, REPLAYED) for radius in args.radii}
        cells += [f"{model} R={radius:g}" for radius in args.radii]
        for label in REPLAYED:
            rows[label] += [(entry["procedures"][label]["over_oracle"], entry["procedures"][label]["f1_change"])
                            for entry in entries.values()]
        for label, (bounds, spending) in CLAIRVOYANT.items():
            rows[label] += clairvoyant(data, bounds, spending, args.most, entries)
            print(f"  {model}: {label} done", flush=True)
    print(f"at most {args.most:,} samples; per cell: samples over the oracle / F1 change against fixed n (points); "
          f"goal: at most {GOAL_RATIO}x and at least {100 * GOAL_CHANGE:+.1f}")
    print("| row | " + " | ".join(cells) + " | meets the goal in every cell |")
    print("| --- | " + " | ".join("---:" for _ in cells) + " | --- |")
    for label, values in rows.items():
        meets = all(ratio <= GOAL_RATIO and change >= GOAL_CHANGE - 1e-12 for ratio, change in values)
        if label not in REPLAYED:
            caveat = " (not a rule)"
        else:
            caveat = " (not valid)" if REPLAYED[label].bounds.startswith(REFERENCE) else ""
        text = " | ".join(f"{ratio:.2f}x / {100 * change:+.2f}" for ratio, change in values)
        print(f"| {label} | {text} | {'yes' if meets else 'no'}{caveat} |", flush=True)


if __name__ == "__main__":
    main()
