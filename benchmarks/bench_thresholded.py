"""The thresholded certificate against MultiGuard's top-k certificate: certified F1 at R = 0, 0.25, 0.5, 1.

    python benchmarks/bench_thresholded.py [--checkpoint multiguard-demo/model.pt] [--inputs 500] [--n 1000]
                                           [--validation 2000] [--work bench-thresholded] [--threads 1]

The demo's setting: its checkpoint (small_cnn trained on multidigits with Gaussian noise, sigma = 0.5), 500
test inputs chosen as a run with seed 0 chooses them, n = 1000 noisy samples each, alpha = 0.001, L = the
ground truth. ONE pass of noisy samples per input gives every count compared here: the top-k' counts for
k' = 1..3 and each label's on-count for every threshold vector (so both certificates read the same samples).

Thresholded certificates (docs/certificate.md, "The thresholded certificate"):

- ``logit > 0``, q = 1/2 and another q: a label is on in a noisy copy when its logit is positive (its
  sigmoid probability above 1/2);
- ``F1-best tau``, q = 1/2: per-label thresholds chosen on a validation split disjoint from the certified
  inputs: ``--validation`` images of the TRAIN split, each with one draw of the same noise, each label's
  F1-best cut of its logits there (:func:`multiguard.thresholded.f1_best_thresholds`).

MultiGuard top-k for k = 1..5 and k' = 1..3 (15 certificates); the table shows the best at each radius (and
which (k, k') it was). The counts are kept in ``--work/counts.npz`` and reused when the settings match.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from multiguard import certify as cert
from multiguard import thresholded as th
from multiguard.checkpoints import dataset_for_checkpoint, load_checkpoint
from multiguard.runs import load_batch, select_inputs

ALPHA, SEED = 0.001, 0
RADII = np.array([0.0, 0.25, 0.5, 1.0])
KS, K_PRIMES = range(1, 6), range(1, 4)
OTHER_Q = (0.3, 0.7)


def noisy_logits(model: torch.nn.Module, images: np.ndarray, copies: int, sigma: float, seed: int,
                 batch: int = 1000) -> np.ndarray:
    """``(M * copies, c)`` logits of ``copies`` noisy copies of each image (x + noise, unclamped, as the demo's
    base classifier sees them)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.as_tensor(images).repeat_interleave(copies, dim=0)
    out = []
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch):
            chunk = x[start : start + batch]
            out.append(model(chunk + sigma * torch.randn(chunk.shape, generator=generator)).numpy())
    return np.concatenate(out)


def count_pass(model: torch.nn.Module, images: np.ndarray, indices: np.ndarray, n: int, sigma: float,
               thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """One pass of n noisy copies per input: top-k' counts ``(N, 3, c)`` and on-counts ``(N, T, c)`` for each of
    the T threshold vectors ``(T, c)``, from the same logits; and the seconds it took."""
    num, c = images.shape[0], thresholds.shape[1]
    top_counts = np.zeros((num, len(K_PRIMES), c), dtype=np.int64)
    on_counts = np.zeros((num, thresholds.shape[0], c), dtype=np.int64)
    start = time.perf_counter()
    with torch.inference_mode():
        for row in range(num):
            generator = torch.Generator().manual_seed(SEED * 1_000_003 + int(indices[row]))
            x = torch.as_tensor(images[row])
            noise = torch.randn((n, *x.shape), generator=generator)
            logits = model(x + sigma * noise)
            order = torch.topk(logits, len(K_PRIMES), dim=1).indices.numpy()
            for j in range(len(K_PRIMES)):
                top_counts[row, j] = np.bincount(order[:, : j + 1].ravel(), minlength=c)
            on_counts[row] = (logits.numpy()[None, :, :] > thresholds[:, None, :]).sum(axis=1)
            if (row + 1) % 100 == 0:
                print(f"  counted {row + 1}/{num} inputs, {time.perf_counter() - start:.0f} s", flush=True)
    return top_counts, on_counts, time.perf_counter() - start


def top_k_table(top_counts: np.ndarray, labels: np.ndarray, n: int, sigma: float) -> dict:
    """Certified F1 / precision / recall at RADII for every (k, k'): ``{(k, k'): {metric: (R,)}}``."""
    table = {}
    for k_prime in K_PRIMES:
        lower, upper = cert.label_probability_bounds(top_counts[:, k_prime - 1], n, ALPHA)
        for k in KS:
            radii = cert.certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma)
            metrics = cert.certified_metrics(cert.intersection_size_from_radii(radii, RADII), labels, k)
            table[(k, k_prime)] = {"f1": metrics.f1, "precision": metrics.precision, "recall": metrics.recall}
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="/work/wt/demo/multiguard-demo/model.pt")
    parser.add_argument("--inputs", type=int, default=500)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--validation", type=int, default=2000, help="noisy train images to choose thresholds on")
    parser.add_argument("--work", default="bench-thresholded")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    model, meta = load_checkpoint(args.checkpoint, device="cpu")
    sigma = float(meta["sigma"])
    test, _ = dataset_for_checkpoint(meta)
    train, _ = dataset_for_checkpoint(meta, split=meta["train_split"])
    indices = select_inputs(len(test), args.inputs, SEED)
    images, labels = load_batch(test, indices)

    # Thresholds on the validation split (train images, never the certified test inputs).
    val_indices = select_inputs(len(train), min(args.validation, len(train)), SEED + 1)
    val_images, val_labels = load_batch(train, val_indices)
    val_logits = noisy_logits(model, val_images, 1, sigma, seed=SEED + 7)
    tuned = th.f1_best_thresholds(val_logits, val_labels, default=0.0)
    thresholds = np.stack([np.zeros(len(tuned)), tuned])
    names = ["logit > 0", "F1-best tau"]

    key = {"checkpoint": str(Path(args.checkpoint).resolve()), "inputs": args.inputs, "n": args.n,
           "validation": args.validation, "thresholds": thresholds.round(12).tolist()}
    cache = work / "counts.npz"
    stored = dict(np.load(cache, allow_pickle=False)) if cache.exists() else {}
    if stored and json.loads(str(stored["key"])) == key:
        top_counts, on_counts, seconds = stored["top_counts"], stored["on_counts"], float(stored["seconds"])
    else:
        print(f"counting: {args.inputs} inputs x {args.n} noisy samples, one pass, {args.threads} thread(s)")
        top_counts, on_counts, seconds = count_pass(model, images, indices, args.n, sigma, thresholds)
        np.savez(cache, key=json.dumps(key), top_counts=top_counts, on_counts=on_counts, seconds=seconds)

    rows = []  # (name, metric arrays (R,), extra)
    for t, name in enumerate(names):
        for q in (th.DEFAULT_Q, *OTHER_Q) if t == 0 else (th.DEFAULT_Q,):
            certificate = th.certify_thresholded(on_counts[:, t], args.n, alpha=ALPHA, sigma=sigma, q=q)
            m = certificate.metrics(labels, RADII)
            rows.append((f"thresholded, {name}, q = {q:g}", m))
    top = top_k_table(top_counts, labels, args.n, sigma)
    best = {metric: np.array([max(v[metric][r] for v in top.values()) for r in range(RADII.size)])
            for metric in ("f1", "precision", "recall")}
    argbest = [max(top, key=lambda kk, r=r: top[kk]["f1"][r]) for r in range(RADII.size)]

    print(f"\n{args.inputs} test inputs, sigma = {sigma:g}, n = {args.n}, alpha = {ALPHA}, "
          f"{labels.sum(1).mean():.2f} true labels per input; counting pass {seconds:.0f} s "
          f"({args.inputs * args.n / seconds:,.0f} samples/s, {args.threads} thread(s))")
    print(f"F1-best thresholds (logits) on {len(val_indices)} noisy train images: {np.round(tuned, 2).tolist()}")
    head = " | ".join(f"R = {r:g}" for r in RADII)
    print(f"\n| certified F1 (%) | {head} |\n|---|" + "---:|" * RADII.size)
    for name, m in rows:
        print(f"| {name} | " + " | ".join(f"{100 * v:.1f}" for v in m.f1) + " |")
    print("| best MultiGuard top-k (k = 1..5, k' = 1..3) | "
          + " | ".join(f"{100 * v:.1f} (k={k}, k'={kp})" for v, (k, kp) in zip(best["f1"], argbest, strict=True))
          + " |")
    for k_prime in K_PRIMES:
        for k in KS:
            if (k, k_prime) in argbest or k == 3:
                print(f"| MultiGuard top-{k}, k' = {k_prime} | "
                      + " | ".join(f"{100 * v:.1f}" for v in top[(k, k_prime)]["f1"]) + " |")
    print("\nthresholded rows in detail (precision / recall / F1 / Hamming accuracy %, labels certified on and "
          "undecided per input):")
    for name, m in rows:
        cells = [f"R={r:g}: {100 * p:.1f}/{100 * rc:.1f}/{100 * f:.1f}/{100 * h:.1f}, on {o:.2f}, undecided {u:.2f}"
                 for r, p, rc, f, h, o, u in zip(RADII, m.precision, m.recall, m.f1, m.hamming, m.certified_on,
                                                 m.undecided, strict=True)]
        print(f"  {name}: " + "; ".join(cells))
    print("  best top-k precision / recall at each R: "
          + "; ".join(f"R={r:g}: {100 * p:.1f}/{100 * rc:.1f}" for r, p, rc in
                      zip(RADII, best["precision"], best["recall"], strict=True)))
    main_row = rows[0][1].f1
    gaps = 100 * (main_row - best["f1"])
    print("\nthresholded (logit > 0, q = 1/2) minus best top-k, F1 points: "
          + ", ".join(f"R={r:g}: {g:+.1f}" for r, g in zip(RADII, gaps, strict=True)))
    (work / "results.json").write_text(json.dumps({
        "settings": key, "seconds": seconds, "radii": RADII.tolist(),
        "thresholded": {name: {"f1": m.f1.tolist(), "precision": m.precision.tolist(), "recall": m.recall.tolist(),
                               "hamming": m.hamming.tolist(), "undecided": m.undecided.tolist()} for name, m in rows},
        "top_k": {f"k={k},k'={kp}": {metric: v.tolist() for metric, v in entry.items()}
                  for (k, kp), entry in top.items()},
    }, indent=1))


if __name__ == "__main__":
    main()
