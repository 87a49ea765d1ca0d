"""Time a whole certified curve: multiguard.certificates.topk against the plain loop of the tests, on the same counts.

    python benchmarks/bench_certify.py [--inputs 500] [--loop-inputs 10] [--seed 0]

Two settings, as in the paper: MS-COCO-like (c = 80, k = 10, k' = 3) and the VOC 2007 default (c = 20, k = 3,
k' = 1); n = 1000, alpha = 0.001, sigma = 0.5, 301 radii from 0 to 3. The counts come from a simulated top-k'
base classifier whose ground-truth labels score higher (about 2.9 labels per input). The vectorised path is
``certified_radii`` + ``intersection_size_from_radii`` for all inputs; the loop evaluates Eq. 8 at every
radius for each e' (tests/plain_loop.py) on the first ``--loop-inputs`` inputs, and its time is scaled to all
inputs. Both must give identical sizes on the inputs the loop sees.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import plain_loop  # noqa: E402

from multiguard.certificates.bounds import label_probability_bounds
from multiguard.certificates.topk import certified_radii, intersection_size_from_radii


def simulated_counts(rng: np.random.Generator, num: int, c: int, k_prime: int, n: int, mean_labels: float):
    labels = rng.random((num, c)) < mean_labels / c
    labels[np.arange(num), rng.integers(0, c, num)] = True
    counts = np.zeros((num, c), dtype=np.int64)
    for row in range(num):
        mean = rng.normal(size=c) + 2.5 * labels[row] * rng.uniform(0.3, 1.5)
        scores = mean + rng.normal(size=(n, c))
        top = np.argpartition(-scores, k_prime - 1, axis=1)[:, :k_prime]
        counts[row] = np.bincount(top.ravel(), minlength=c)
    return counts, labels


def bench(name: str, c: int, k: int, k_prime: int, args: argparse.Namespace) -> None:
    n, alpha, sigma = 1000, 0.001, 0.5
    radius = np.linspace(0.0, 3.0, 301)
    rng = np.random.default_rng(args.seed)
    counts, labels = simulated_counts(rng, args.inputs, c, k_prime, n, 2.9)
    lower, upper = label_probability_bounds(counts, n, alpha)

    best = np.inf
    for _ in range(args.repeats):
        start = time.perf_counter()
        radii = certified_radii(lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma)
        sizes = intersection_size_from_radii(radii, radius)
        best = min(best, time.perf_counter() - start)

    m = min(args.loop_inputs, args.inputs)
    start = time.perf_counter()
    loop_sizes = np.array(
        [
            [
                plain_loop.intersection_size(
                    lower[i].tolist(), upper[i].tolist(), labels[i].tolist(), k=k, k_prime=k_prime, sigma=sigma,
                    radius=float(r),
                )
                for r in radius
            ]
            for i in range(m)
        ]
    )
    loop_time = (time.perf_counter() - start) * args.inputs / m
    assert (loop_sizes == sizes[:m]).all(), "vectorised and plain-loop sizes differ"
    print(
        f"{name:<28} inputs={args.inputs} radii={radius.size}: vectorised {best:.3f} s, "
        f"plain loop {loop_time:.1f} s (scaled from {m} inputs), speed-up {loop_time / best:.0f}x, "
        f"mean e(0) = {sizes[:, 0].mean():.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=500)
    parser.add_argument("--loop-inputs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    bench("MS-COCO-like c=80 k=10 k'=3", 80, 10, 3, args)
    bench("VOC default c=20 k=3 k'=1", 20, 3, 1, args)


if __name__ == "__main__":
    main()
