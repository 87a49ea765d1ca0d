"""Time ``multiguard serve`` against the offline per-image rate of ``predict`` in one process.

    python benchmarks/bench_serve.py --checkpoint model.pt [--images 16] [--requests 16] [--clients 1 2 4 8]
                                     [--n 1000] [--threads 1] [--small-n 100] [--small-clients 8]

Baseline: :func:`multiguard.serving.predict.predict_images` on ``--images`` multidigits test images in one
process (the model loaded once), after a warm-up call; its per-image time is the offline rate. Then a real
``multiguard serve`` process at the same defaults (n0 = 100, n = 1000, alpha = 0.001, fresh noise) on a free port,
and ``C`` client threads each posting ``--requests`` / C one-image requests to ``/v1/predict`` with a plain HTTP
client (urllib): latency p50/p95/p99 and throughput per C. Printed ratios: median latency over (offline per-image
time + 50 ms) (goal <= 1.5) and throughput over the offline rate (goal >= 2/3 at 8 clients). Both sides use the
same thread count (``OMP_NUM_THREADS``). Without ``--checkpoint`` it trains the tests' tiny small_cnn first.

Dynamic batching: then two more servers at ``--small-n`` (default 100, below the forward batch of 1000), one
with batching on (``--max-batch-images 32``, the default) and one with it off (``--max-batch-images 1``),
``--small-clients`` (default 8) clients each; printed: requests per second of both, their ratio and the mean
``batched_requests`` of the answers. ``--small-n 0`` skips it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from servetools import Server, digit_images  # noqa: E402


def offline_per_image(checkpoint: Path, images: list[Path], n: int) -> float:
    """Seconds per image of ``predict`` on all ``images`` in one call (the model loaded once, warmed up)."""
    import torch

    from multiguard.data import load_image
    from multiguard.serving.predict import load_model

    model = load_model(checkpoint, device="cpu")
    batch = torch.stack([load_image(p, model.image_size, model.channels) for p in images])
    names = [p.name for p in images]
    model.predict(batch[:1], names[:1], n=n, seed=1)  # warm-up
    started = time.perf_counter()
    model.predict(batch, names, n=n, seed=2)
    return (time.perf_counter() - started) / len(images)


def served(server: Server, files: list[tuple[str, bytes]], clients: int, requests: int,
           merged: list[int] | None = None) -> tuple[np.ndarray, float]:
    """Latencies (s) of ``requests`` one-image requests from ``clients`` threads, and requests per second;
    each answer's ``batched_requests`` is appended to ``merged`` when given."""
    def one(i: int) -> float:
        started = time.perf_counter()
        status, answer, _ = server.predict([files[i % len(files)]])
        if status != 200:
            raise RuntimeError(f"request {i}: {status} {answer}")
        if merged is not None:
            merged.append(answer["batched_requests"])
        return time.perf_counter() - started

    server.predict([files[0]])  # warm-up
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = np.array(list(pool.map(one, range(requests))))
    return latencies, requests / (time.perf_counter() - started)


def batching_on_off(checkpoint: Path, files: list[tuple[str, bytes]], n: int, clients: int, requests: int) -> None:
    """Throughput at small n with dynamic batching on and off (one server each, in this run)."""
    rates = {}
    print(f"\ndynamic batching: n = {n}, {clients} clients, {requests} one-image requests")
    print("| batching | p50 ms | p95 ms | req/s | mean batched_requests |")
    print("| --- | --- | --- | --- | --- |")
    for label, cap in (("on (--max-batch-images 32)", "32"), ("off (--max-batch-images 1)", "1")):
        server = Server(checkpoint, "--n", str(n), "--max-queue", str(clients + 1), "--max-batch-images", cap)
        try:
            merged: list[int] = []
            latencies, rates[cap] = served(server, files, clients, requests, merged)
        finally:
            server.stop()
        p50, p95 = np.percentile(latencies, [50, 95]) * 1000
        print(f"| {label} | {p50:.0f} | {p95:.0f} | {rates[cap]:.2f} | {np.mean(merged):.2f} |", flush=True)
    print(f"throughput ratio, batching on / off: {rates['32'] / rates['1']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--requests", type=int, default=16, help="requests per client count")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--small-n", type=int, default=100, help="n of the batching on/off case (0: skip it)")
    parser.add_argument("--small-clients", type=int, default=8)
    parser.add_argument("--small-requests", type=int, default=64)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    folder = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    checkpoint = args.checkpoint
    if checkpoint is None:
        checkpoint = folder / "model.pt"
        subprocess.run([sys.executable, "-m", "multiguard", "train", "--dataset", "multidigits", "--arch",
                        "small_cnn", "--sigma", "0.5", "--epochs", "1", "--train-size", "200", "--test-size", "100",
                        "--quiet", "--device", "cpu", "--out", str(checkpoint)], check=True)
    images = digit_images(folder, args.images)
    per_image = offline_per_image(checkpoint, images, args.n)
    print(f"offline predict: {per_image * 1000:.1f} ms per image ({1 / per_image:.2f} images/s), n = {args.n}, "
          f"{args.images} images, {args.threads} thread(s)")
    files = [(p.name, p.read_bytes()) for p in images]
    server = Server(checkpoint, "--n", str(args.n), "--max-queue", str(max(args.clients) + 1))
    try:
        print("| clients | p50 ms | p95 ms | p99 ms | req/s | p50 / (offline + 50 ms) | throughput / offline |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        for clients in args.clients:
            latencies, rate = served(server, files, clients, args.requests)
            p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) * 1000
            print(f"| {clients} | {p50:.0f} | {p95:.0f} | {p99:.0f} | {rate:.2f} | "
                  f"{p50 / (per_image * 1000 + 50):.2f} | {rate * per_image:.2f} |", flush=True)
    finally:
        server.stop()
    if args.small_n:
        batching_on_off(checkpoint, files, args.small_n, args.small_clients, args.small_requests)


if __name__ == "__main__":
    main()
