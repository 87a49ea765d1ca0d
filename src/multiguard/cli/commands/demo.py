"""``multiguard demo``: the whole method offline on the embedded data.

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import os
import time
from typing import TYPE_CHECKING

from multiguard.cli.console import echo
from multiguard.cli.options import (
    DEMO_COMPILE,
    DEMO_PRECISION,
    add_device,
    add_mode,
    add_noise,
    add_output,
    mode_args,
)

if TYPE_CHECKING:
    from multiguard.demo import DemoResult


def _cmd_demo_denoised(args: argparse.Namespace) -> int:
    from multiguard.demo import run_denoised_demo

    started = time.perf_counter()
    out = os.path.join(args.out, "denoised")
    echo(f"MultiGuard denoised-smoothing demo: offline, on the embedded multidigits dataset; files go to {out}/")
    result = run_denoised_demo(out, device=args.device, log=echo)
    echo()
    echo(result.report.summary.rstrip())
    echo()
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result.seconds.items())
    echo(f"done in {time.perf_counter() - started:.0f} s ({timings}). Report: {result.report.out}/")
    return 0


def _section(summary: str, heading: str) -> str:
    """The section of a report's ``summary.md`` that starts with ``heading`` (without its ``## ``), up to the
    next section."""
    start = summary.find(heading)
    end = summary.find("\n## ", start + 3)
    return summary[start + 3 : end if end > 0 else len(summary)].strip()


def _echo_tables(result: DemoResult) -> None:
    """The demo's tables: the comparison's ``summary.md``, the F1 table of each ablation, the thresholded, sigma
    and attack tables (those the demo made)."""
    reports = result.reports
    echo()
    echo(reports["report"].summary.rstrip())
    echo()
    ablations = (("report-k-prime", "Impact of k' (k = 3)"), ("report-k", "Impact of k (k' = 1)"),
                 ("report-n", "Impact of n (k' = 1, k = 3)"), ("report-alpha", "Impact of alpha (k' = 1, k = 3)"))
    for key, label in ablations:
        if key in reports:
            echo(f"### {label}: " + _section(reports[key].summary, "## Certified top-k f1-score@R"))
            echo()
    if "report-thresholded" in reports:
        from multiguard.demo import thresholded_vs_top_k

        echo("### Thresholded vs top-k (the same run's samples; a label is on in a noisy copy when its probability > "
             "0.5; docs/certificate.md)")
        echo()
        echo(thresholded_vs_top_k(reports["report-thresholded"].curves))
        echo()
    if "report-sigma" in reports:
        from multiguard.demo import sigma_table

        echo("### Impact of sigma (k' = 1, k = 3; one model per sigma, the same inputs and n)")
        echo()
        echo(sigma_table(reports["report-sigma"].curves))
        echo()
    if "report-attack" in reports:
        echo("### Certified vs attacked (the sigma = 0.5 model; the attack's inputs, certified at its own n)")
        echo()
        echo(_section(reports["report-attack"].summary, "## Under attack"))
        echo()
    if result.findings is not None:
        from multiguard.evaluation.findings import findings_summary

        echo("### The paper's findings on these numbers (findings.md)")
        echo()
        echo(findings_summary(result.paper_findings))
        echo()


def _cmd_demo(args: argparse.Namespace) -> int:
    from multiguard.demo import run_demo
    from multiguard.evaluation.report import REPORT_FILES

    if args.denoised:
        return _cmd_demo_denoised(args)
    started = time.perf_counter()
    mode = "quick demo" if args.quick else "demo"
    echo(f"MultiGuard {mode}: offline, on the embedded multidigits dataset; files go to {args.out}/")
    from multiguard.common.devices import resolve_device

    mode = mode_args(args, resolve_device(args.device), echo)
    result = run_demo(args.out, quick=args.quick, device=args.device, log=echo, noise=args.noise,
                      shared_noise=args.shared_noise, **mode)
    _echo_tables(result)
    from multiguard.runs.folder import load_run, run_noise, sampling_mode

    recorded = load_run(result.run_dir).metadata
    echo(f"These tables are reproducible in sampling mode {sampling_mode(recorded)} with noise: {run_noise(recorded)} "
         "(the seeds fix the model, the inputs and every noise sample; another mode is another base classifier).")
    echo()
    total = time.perf_counter() - started
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result.seconds.items())
    echo(f"done in {total:.0f} s ({timings}). Files:")
    for sigma, checkpoint in result.checkpoints.items():
        echo(f"  {f'model σ={sigma:g}':<15} {checkpoint}")
        echo(f"  {f'counts σ={sigma:g}':<15} {result.run_dirs[sigma]}/ (metadata.json, counts.npz, chunks/)")
    for key, rep in result.reports.items():
        echo(f"  {key:<15} {rep.out}/ ({', '.join(REPORT_FILES)})")
    echo(f"  {'figure':<15} {result.figure} (the paper's Figure 1: one row per comparison, P, R, F1)")
    if result.sigma_figure is not None:
        echo(f"  {'sigma row':<15} {result.sigma_figure}")
    if result.attack_dir is not None:
        echo(f"  {'attack':<15} {result.attack_dir}/ (empirical.csv, per_input.npz, attack.json)")
    if result.findings is not None:
        echo(f"  {'findings':<15} {result.findings} (which of the paper's findings these numbers reproduce)")
    return 0


def _demo_options(p: argparse.ArgumentParser) -> None:
    add_output(p, metavar=None, help="folder for the demo's files", required=False, default="multiguard-demo",
               quiet=None)
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo")
    p.add_argument("--denoised", action="store_true",
                   help="instead: denoised smoothing, a classifier trained without noise alone, behind an MSE and a "
                   "stability denoiser, and a noise-trained one, certified on the same 100 inputs (into OUT/denoised)")
    add_device(p)
    add_mode(p, default=DEMO_PRECISION, compile_default=DEMO_COMPILE)
    add_noise(p)


# ---------------------------------------------------------------------------------------- the command table

#: The commands of ``multiguard``, in the order ``--help`` lists them.
