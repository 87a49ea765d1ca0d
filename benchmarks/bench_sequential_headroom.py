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
  look's Clopper-Pearson bound each at the full alpha / c (``tuned-cp`` at 2 alpha with w = 1/2: looser than no
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
from pathlib import Path

import numpy as np
from bench_sequential import ALPHA, K_PRIME, K, counts_at, fixed_sizes, model_data, oracle_samples
from scipy import stats

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import sequential as seq
from multiguard.certificates import topk as _topk
from multiguard.certificates.anytime import BOUNDS, BoundsRecord
from multiguard.certificates.sequential import FUTILITY_RULES, FutilityRecord

GOAL_RATIO, GOAL_CHANGE = 1.4, -0.005  # issue 31: at most 1.4x the oracle, F1 at most 0.5 point below fixed n


# ------------------------------------------------- registered in this process only (never a command-line choice)


@BOUNDS.register("reference-cp-every-look", help="NOT VALID: fixed-n Clopper-Pearson at alpha / c at every look",
                 record=BoundsRecord())
def _cp_every_look(counts: np.ndarray, sizes: np.ndarray, alpha: float, looks: np.ndarray, spending: object,
                   bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.zeros(counts.shape), np.ones(counts.shape)
    for size in np.unique(sizes):
        rows = sizes == size
        lower[rows], upper[rows] = _bounds.clopper_pearson(counts[rows], int(size), alpha / counts.shape[1])
    return lower, upper


@BOUNDS.register("reference-union-early-full", help="NOT VALID: union with 1/4 of alpha at each earlier look",
                 record=BoundsRecord(anytime=False))
def _union_early_full(counts: np.ndarray, sizes: np.ndarray, alpha: float, looks: np.ndarray, spending: object,
                      bounds_read: object) -> tuple[np.ndarray, np.ndarray]:
    lower, upper = np.zeros(counts.shape), np.ones(counts.shape)
    for size in np.unique(sizes):
        rows = sizes == size
        share = seq.DEFAULT_SPENDING if size == looks[-1] else 1.0 - seq.DEFAULT_SPENDING
        lower[rows], upper[rows] = _bounds.clopper_pearson(counts[rows], int(size), share * alpha / counts.shape[1])
    return lower, upper


@FUTILITY_RULES.register("predictive", help="the remaining samples at the predictive normal quantile 1 - gamma",
                         record=FutilityRecord(parameters=("margin",)))
def _predictive(counts: np.ndarray, n: np.ndarray, lower: np.ndarray, upper: np.ndarray, remaining: np.ndarray, *,
                margin: float) -> tuple[np.ndarray, np.ndarray]:
    z = stats.norm.isf(margin)
    p = (counts + 0.5) / (n + 1.0)  # the spread's frequency kept off 0 and 1
    spread = z * np.sqrt(remaining * p * (1.0 - p) * (1.0 + remaining / n))
    mean = remaining * counts / n
    return np.clip(np.ceil(mean + spread), 0, remaining), np.clip(np.floor(mean - spread), 0, remaining)


# (label, bounds, spending, alpha factor, futility, gamma, schedule, valid)
REPLAYED = [
    ("tuned-cp w=0.5, margin 0.2", "tuned-cp", 0.5, 1.0, "margin", 0.2, "every-block", True),
    ("tuned-cp w=0.25, margin 0.2", "tuned-cp", 0.25, 1.0, "margin", 0.2, "every-block", True),
    ("tuned-cp w=0.25, predictive 0.2", "tuned-cp", 0.25, 1.0, "predictive", 0.2, "every-block", True),
    ("tuned-cp w=0.25, predictive 0.3", "tuned-cp", 0.25, 1.0, "predictive", 0.3, "every-block", True),
    ("not valid: Clopper-Pearson at every block, margin 0.2", "reference-cp-every-look", None, 1.0, "margin", 0.2,
     "every-block", False),
    ("not valid: tuned and Clopper-Pearson each at full alpha, margin 0.2", "tuned-cp", 0.5, 2.0, "margin", 0.2,
     "every-block", False),
    ("not valid: tuned and Clopper-Pearson each at full alpha, margin 0.3", "tuned-cp", 0.5, 2.0, "margin", 0.3,
     "every-block", False),
    ("not valid: union, 1/4 of alpha at each earlier look, margin 0.2", "reference-union-early-full", None, 1.0,
     "margin", 0.2, "fine", False),
]
# (label, bounds, spending, alpha factor): the clairvoyant stop on these bounds, looks every block
CLAIRVOYANT = [
    ("clairvoyant: tuned", "tuned", None, 1.0),
    ("clairvoyant: tuned-cp w=0.75", "tuned-cp", 0.75, 1.0),
    ("clairvoyant: tuned-cp w=0.5", "tuned-cp", 0.5, 1.0),
    ("clairvoyant: tuned-cp w=0.25", "tuned-cp", 0.25, 1.0),
    ("clairvoyant, not valid: tuned and Clopper-Pearson each at full alpha", "tuned-cp", 0.5, 2.0),
    ("clairvoyant, not valid: Clopper-Pearson at every block", "reference-cp-every-look", None, 1.0),
]


def f1_change(sizes: np.ndarray, target: np.ndarray, labels: np.ndarray) -> float:
    return float(_metrics.certified_metrics(sizes, labels, K).f1 - _metrics.certified_metrics(target, labels, K).f1)


def replayed(data: dict, row: tuple, most: int, radius: float, target: np.ndarray, oracle: float) -> tuple:
    _, bounds, spending, factor, futility, margin, schedule, _ = row
    looks = seq.look_schedule(most, schedule)
    result = seq.sequential_certification(
        counts_at(data, looks), data["labels"], looks=looks, alpha=ALPHA * factor, k=K, k_prime=K_PRIME,
        sigma=float(data["sigma"]), radius=radius, spending=spending, futility=futility, margin=margin, bounds=bounds)
    sizes = _topk.intersection_size_from_radii(result.radii, radius)
    return float(result.samples.mean()) / oracle, f1_change(sizes, target, data["labels"])


def clairvoyant(data: dict, row: tuple, most: int, radii: list[float], targets: dict, oracles: dict) -> list:
    """Per radius: the clairvoyant stop's samples over the oracle and F1 change (bounds computed once per look)."""
    _, bounds, spending, factor = row
    looks = seq.look_schedule(most, "every-block")
    nested, labels, sigma = counts_at(data, looks).astype(np.float64), data["labels"], float(data["sigma"])
    ends = [seq.anytime_label_probability_bounds(nested[:, j], int(n), ALPHA * factor, looks, spending, bounds=bounds)
            for j, n in enumerate(looks)]
    out = []
    for radius in radii:
        sizes = np.stack([_topk.intersection_size_at(lower, upper, labels, k=K, k_prime=K_PRIME, sigma=sigma,
                                                     radius=radius) for lower, upper in ends], axis=1)
        final = sizes[:, -1]
        first = np.argmax(sizes >= final[:, None], axis=1)  # the first block already certifying the final size
        samples = np.where(final > 0, looks[first], looks[0])  # nothing to certify: one block to see it
        out.append((float(samples.mean()) / oracles[radius], f1_change(final, targets[radius], labels)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="bench-sequential", help="bench_sequential.py's folder (counts reused)")
    parser.add_argument("--models", nargs="+", default=["demo", "seed1"])
    parser.add_argument("--radii", type=float, nargs="+", default=[0.25, 0.5])
    parser.add_argument("--most", type=int, default=10_000, help="the most samples per input (a multiple of 100)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, if the counts must be sampled")
    args = parser.parse_args()
    rows: dict[str, list] = {}
    valid = {row[0]: row[-1] for row in REPLAYED} | {row[0]: False for row in CLAIRVOYANT}
    cells = []
    for model in args.models:
        data = model_data(Path(args.work), model, args.threads)
        counts, labels, sigma = counts_at(data, np.array([args.most]))[:, 0], data["labels"], float(data["sigma"])
        full = np.full(len(counts), args.most)
        targets = {r: fixed_sizes(counts, full, labels, sigma, r) for r in args.radii}
        oracles = {r: float(oracle_samples(counts, args.most, labels, sigma, r).mean()) for r in args.radii}
        cells += [f"{model} R={r:g}" for r in args.radii]
        for row in REPLAYED:
            rows.setdefault(row[0], []).extend(replayed(data, row, args.most, r, targets[r], oracles[r])
                                               for r in args.radii)
            print(f"  {model}: {row[0]} done", flush=True)
        for row in CLAIRVOYANT:
            rows.setdefault(row[0], []).extend(clairvoyant(data, row, args.most, args.radii, targets, oracles))
            print(f"  {model}: {row[0]} done", flush=True)
    print(f"at most {args.most:,} samples; per cell: samples over the oracle / F1 change against fixed n (points); "
          f"goal: at most {GOAL_RATIO}x and at least {100 * GOAL_CHANGE:+.1f}")
    print("| row | " + " | ".join(cells) + " | meets the goal in every cell |")
    print("| --- | " + " | ".join("---:" for _ in cells) + " | --- |")
    for label, values in rows.items():
        meets = all(ratio <= GOAL_RATIO and change >= GOAL_CHANGE - 1e-12 for ratio, change in values)
        text = " | ".join(f"{ratio:.2f}x / {100 * change:+.2f}" for ratio, change in values)
        verdict = ("yes" if meets else "no") + ("" if valid[label] else " (not a valid rule)")
        print(f"| {label} | {text} | {verdict} |", flush=True)


if __name__ == "__main__":
    main()
