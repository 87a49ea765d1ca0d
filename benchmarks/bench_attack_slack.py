"""Split an attack's gap: how much of it is the Monte Carlo slack of the certificate (n samples at alpha)?

    python benchmarks/bench_attack_slack.py ATTACK_DIR [--checkpoint multiguard-demo/model.pt] [--n 500]

Re-draws the certification counts of the attack's inputs (n samples, seed 0, as ``multiguard attack`` and a
certify run draw them) and prints top-3 recall per radius of: the certificate (bounds at alpha = 0.001); the
same estimated probabilities with n = 1e6 samples' bounds; the plug-in certificate (the estimates taken as
exact: NOT a certificate, a diagnostic); and the attacked sizes of ATTACK_DIR. Certified minus plug-in is the
Monte Carlo part of the gap; plug-in minus attacked is the theorem's worst-case slack plus the attack's
weakness (up to the estimates' own noise).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import topk as _topk
from multiguard.evaluation import attack_run as _attack_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack_dir")
    parser.add_argument("--checkpoint", default="multiguard-demo/model.pt")
    parser.add_argument("--n", type=int, default=500)
    args = parser.parse_args()
    arrays = np.load(Path(args.attack_dir) / "per_input.npz")
    indices, labels, radii = arrays["indices"], arrays["labels"], arrays["radii"]
    _, data, _, smoother, _, _, _ = _attack_run._load_for_attack(
        args.checkpoint, 3, 1, dataset=None, data_root=None, split=None, sigma=None, device="cpu",
        precision="fp32", channels_last=None, compile=False, denoiser=None)
    x, _ = _attack_run._attack_batch(smoother, data, indices, 1000, print)
    counts = np.asarray(smoother.sample_counts(x, args.n, seed=0, index=indices, batch_size=1000))

    def sizes(lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
        return _topk.certified_intersection_size(lower, upper, labels, k=3, k_prime=1, sigma=smoother.sigma,
                                                 radius=radii)

    big = 10**6
    p = counts / args.n
    rows = {
        f"certified (n = {args.n})": sizes(*_bounds.label_probability_bounds(counts, args.n, 0.001)),
        "same estimates, n = 1e6 bounds": sizes(*_bounds.label_probability_bounds(counts * (big // args.n), big,
                                                                                  0.001)),
        "plug-in (estimates as exact)": sizes(np.clip(p - 1e-9, 0, 1), np.clip(p + 1e-9, 0, 1)),
        "attacked": arrays["sizes"],
    }
    print(f"{len(indices)} inputs; top-3 recall at R = {', '.join(f'{r:g}' for r in radii)}")
    for name, values in rows.items():
        print(f"  {name:32s} " + "  ".join(f"{v:.3f}" for v in _metrics.certified_metrics(values, labels, 3).recall))


if __name__ == "__main__":
    main()
