"""The thresholded certificate against MultiGuard's top-k certificate: certified F1 at R = 0, 0.25, 0.5, 1.

    python benchmarks/bench_thresholded.py [--checkpoint multiguard-demo/model.pt] [--inputs 500] [--n 1000]
                                           [--validation 300] [--work bench-thresholded] [--threads 1]

The demo's setting: its checkpoint (small_cnn trained on multidigits with Gaussian noise, sigma = 0.5), the 500
test inputs a run with seed 0 certifies, n = 1000 noisy samples each, alpha = 0.001, L = the ground truth.
ONE pass of the sampling engine (``SamplingEngine.count`` with threshold rows) gives every count compared here:
the top-k' counts for k' = 1..3 and each label's on-count for every threshold vector (both certificates read
the same samples).

Thresholds chosen on validation use ``--validation`` test images that are NOT among the certified inputs (a
disjoint held-out split the model never trained on), with n noisy copies each from a noise stream of their own
(``SamplingEngine.noisy_scores``, ``STREAM_THRESHOLDS``):

- ``logit > 0``: a label is on in a noisy copy when its logit is positive (its sigmoid probability above 1/2);
  q = 1/2 and q = 0.3;
- ``F1-best tau``: each label's F1-best cut of the base classifier's logits on the noisy validation images (the
  first 20 noise draws of each; :func:`multiguard.certificates.thresholded.f1_best_thresholds`), q = 1/2;
- ``certified-F1 tau``: each label's threshold, among 41 quantiles of its validation logits, that maximises
  its certified F1 summed over R = 0, 0.25, 0.5, 1 on the validation images
  (:func:`multiguard.certificates.thresholded.certified_f1_thresholds`), q = 1/2.

MultiGuard top-k for k = 1..5 and k' = 1..3 (15 certificates); "best" rows take the best at each radius.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import thresholded as th
from multiguard.certificates import topk as _topk
from multiguard.common.seeds import STREAM_THRESHOLDS
from multiguard.models.checkpoints import dataset_for_checkpoint, load_checkpoint
from multiguard.runs.job import load_batch, select_inputs
from multiguard.sampling.smoothed import MultiGuard

ALPHA, SEED = 0.001, 0
RADII = np.array([0.0, 0.25, 0.5, 1.0])
KS, K_PRIMES = range(1, 6), range(1, 4)


def on_counts(logits: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """``(N, c)`` on-counts for one threshold vector ``(c,)``, or ``(N, G, c)`` for ``(G, c)``."""
    if thresholds.ndim == 1:
        return (logits > thresholds).sum(axis=1)
    return np.stack([(logits > row).sum(axis=1) for row in thresholds], axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="/work/wt/demo/multiguard-demo/model.pt")
    parser.add_argument("--inputs", type=int, default=500)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--validation", type=int, default=300, help="held-out test images to choose thresholds on")
    parser.add_argument("--work", default="bench-thresholded")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    model, meta = load_checkpoint(args.checkpoint, device="cpu")
    sigma = float(meta["sigma"])
    test, _ = dataset_for_checkpoint(meta)
    indices = select_inputs(len(test), args.inputs, SEED)
    held_out = np.setdiff1d(np.arange(len(test)), indices)
    val_indices = np.sort(np.random.default_rng(SEED + 1).choice(held_out, args.validation, replace=False))
    assert not np.isin(val_indices, indices).any()
    images, labels = load_batch(test, indices)
    val_images, val_labels = load_batch(test, val_indices)

    guard = MultiGuard(model, num_classes=int(meta["num_classes"]), sigma=sigma)  # fp32, the engine's noise
    c = guard.num_classes
    # Thresholds from the validation images only: their scores on n noisy copies (a noise stream of their own).
    start = time.perf_counter()
    val_scores = guard.engine.noisy_scores(val_images, args.n, seed=SEED, index=val_indices, stream=STREAM_THRESHOLDS)
    val_seconds = time.perf_counter() - start
    draws = min(20, args.n)
    f1_tau = th.f1_best_thresholds(val_scores[:, :draws].reshape(-1, c), np.repeat(val_labels, draws, axis=0))
    candidates = np.quantile(val_scores.reshape(-1, c), np.linspace(0.02, 0.98, 41), axis=0)
    cert_tau = th.certified_f1_thresholds(candidates, on_counts(val_scores, candidates), args.n, val_labels,
                                          alpha=ALPHA, sigma=sigma, q=th.DEFAULT_Q, radii=RADII)
    # ONE engine pass over the certified inputs: top-k' counts for k' = 1..3 and the on-counts of the three
    # threshold vectors, from the same forward passes.
    rows_tau = np.stack([np.zeros(c), f1_tau, cert_tau])
    start = time.perf_counter()
    both = guard.engine.count(images, args.n, seed=SEED, index=indices, num_k=len(K_PRIMES), thresholds=rows_tau)
    seconds = time.perf_counter() - start
    top_counts, on = both[:, : len(K_PRIMES)], both[:, len(K_PRIMES):]

    variants = [("logit > 0", 0, 0.5), ("logit > 0", 0, 0.3), ("F1-best tau", 1, 0.5), ("certified-F1 tau", 2, 0.5)]
    rows = []
    for name, t, q in variants:
        certificate = th.certify_thresholded(on[:, t], args.n, alpha=ALPHA, sigma=sigma, q=q)
        rows.append((f"thresholded, {name}, q = {q:g}", certificate.metrics(labels, RADII)))
    key = json.dumps({"checkpoint": str(Path(args.checkpoint).resolve()), "inputs": args.inputs, "n": args.n,
                      "validation": args.validation})
    top = {}
    for k_prime in K_PRIMES:
        lower, upper = _bounds.label_probability_bounds(top_counts[:, k_prime - 1], args.n, ALPHA)
        for k in KS:
            radii = _topk.certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma)
            top[(k, k_prime)] = _metrics.certified_metrics(_topk.intersection_size_from_radii(radii, RADII), labels, k)
    best_top = np.array([max(m.f1[r] for m in top.values()) for r in range(RADII.size)])
    which_top = [max(top, key=lambda kk, r=r: top[kk].f1[r]) for r in range(RADII.size)]
    best_th = np.array([max(m.f1[r] for _, m in rows) for r in range(RADII.size)])

    print(f"\n{args.inputs} test inputs ({labels.sum(1).mean():.2f} true labels each), sigma = {sigma:g}, "
          f"n = {args.n}, alpha = {ALPHA}; one engine pass {seconds:.0f} s ({args.inputs * args.n / seconds:,.0f} "
          f"samples/s, {args.threads} thread(s)); thresholds from {args.validation} held-out test images "
          f"({val_seconds:.0f} s)")
    print(f"F1-best tau: {np.round(f1_tau, 2).tolist()}\ncertified-F1 tau: {np.round(cert_tau, 2).tolist()}")
    print("\n| certified F1 (%) | " + " | ".join(f"R = {r:g}" for r in RADII) + " |\n|---|" + "---:|" * RADII.size)
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in m.f1) + " |")
    print("| thresholded, best of the rows above at each R | " + " | ".join(f"{100 * v:.1f}" for v in best_th) + " |")
    print("| MultiGuard top-k, best of k = 1..5, k' = 1..3 at each R | " + " | ".join(
        f"{100 * v:.1f} (k = {k}, k' = {kp})" for v, (k, kp) in zip(best_top, which_top, strict=True)) + " |")
    for k_prime in K_PRIMES:
        for k in KS:
            if (k, k_prime) in which_top or (k, k_prime) == (3, 1):
                print(f"| MultiGuard top-{k}, k' = {k_prime} | "
                      + " | ".join(f"{100 * v:.1f}" for v in top[(k, k_prime)].f1) + " |")
    print("\nprecision / recall / Hamming accuracy (%), labels certified on / undecided per input:")
    for name, m in rows:
        print(f"  {name}: " + "; ".join(
            f"R={r:g}: {100 * p:.1f}/{100 * rc:.1f}/{100 * h:.1f}, {o:.2f}/{u:.2f}" for r, p, rc, h, o, u in
            zip(RADII, m.precision, m.recall, m.hamming, m.certified_on, m.undecided, strict=True)))
    for r, (k, kp) in enumerate(which_top):
        print(f"  best top-k at R={RADII[r]:g} (k = {k}, k' = {kp}): precision {100 * top[(k, kp)].precision[r]:.1f}, "
              f"recall {100 * top[(k, kp)].recall[r]:.1f}")
    for name, m in rows:
        print(f"{name} minus best top-k (F1 points): "
              + ", ".join(f"R={r:g}: {100 * g:+.1f}" for r, g in zip(RADII, m.f1 - best_top, strict=True)))
    print("best thresholded minus best top-k (F1 points): "
          + ", ".join(f"R={r:g}: {100 * g:+.1f}" for r, g in zip(RADII, best_th - best_top, strict=True)))
    (work / "results.json").write_text(json.dumps({
        "settings": json.loads(key), "seconds": seconds, "radii": RADII.tolist(),
        "thresholds": {"f1_best": f1_tau.tolist(), "certified_f1": cert_tau.tolist()},
        "thresholded": {name: {"f1": m.f1.tolist(), "precision": m.precision.tolist(), "recall": m.recall.tolist(),
                               "hamming": m.hamming.tolist(), "undecided": m.undecided.tolist()} for name, m in rows},
        "top_k": {f"k={k},k'={kp}": {"f1": m.f1.tolist(), "precision": m.precision.tolist(),
                                    "recall": m.recall.tolist()} for (k, kp), m in top.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
