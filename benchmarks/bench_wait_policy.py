"""Several torch processes on one CPU machine: OpenMP's default wait policy against ``OMP_WAIT_POLICY=PASSIVE``.

    python benchmarks/bench_wait_policy.py --checkpoint MODEL [--inputs 10] [--n 3000] [--batch-sizes 1000 64]

Each measurement is a fresh Python process (the policy is read when torch loads its OpenMP runtime) that loads
the checkpoint, builds its smoothed classifier on the CPU (torch's default threads), warms up on 2 inputs and times
``sample_counts`` of ``--inputs`` test inputs x ``--n`` samples. Alone and as two processes started together, with
the policy unset and PASSIVE; prints samples/s and the two-process total over one process alone (the ratio that
says whether two shards on one machine gain anything). Figures: benchmarks/README.md, "OpenMP wait policy".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

WORKER = """
import sys, time, torch
from multiguard.models.checkpoints import load_checkpoint, smoothed_from_checkpoint, dataset_for_checkpoint
from multiguard.runs.job import load_batch, select_inputs
checkpoint, inputs, n, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
model, meta = load_checkpoint(checkpoint, device="cpu")
data, _ = dataset_for_checkpoint(meta)
guard = smoothed_from_checkpoint(model, meta, k_prime=1, device="cpu")
images, _ = load_batch(data, select_inputs(len(data), inputs, 0))
x = torch.as_tensor(images)
guard.sample_counts(x[:2], 200, seed=0, batch_size=batch)
start = time.perf_counter()
guard.sample_counts(x, n, seed=0, batch_size=batch)
print(inputs * n / (time.perf_counter() - start))
"""


def rates(args: argparse.Namespace, policy: str | None, processes: int, batch: int) -> list[float]:
    """samples/s of each of ``processes`` workers started together under ``policy`` (None: unset)."""
    env = {key: value for key, value in os.environ.items() if key not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if policy is not None:
        env["OMP_WAIT_POLICY"] = policy
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    command = [sys.executable, "-c", WORKER, str(args.checkpoint), str(args.inputs), str(args.n), str(batch)]
    procs = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
    return [float(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a multiguard checkpoint (e.g. the demo's)")
    parser.add_argument("--inputs", type=int, default=10)
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1000, 64])
    args = parser.parse_args()
    print("| processes | policy | batch | samples/s | total over one process alone (default) |")
    print("|---|---|---|---|---|")
    for batch in args.batch_sizes:
        alone = None
        for processes in (1, 2):
            for policy in (None, "PASSIVE"):
                measured = rates(args, policy, processes, batch)
                alone = alone or measured[0]
                print(f"| {processes} | {policy or 'default'} | {batch:,} | "
                      f"{' + '.join(f'{r:,.0f}' for r in measured)} | {sum(measured) / alone:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
