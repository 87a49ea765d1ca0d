"""``multiguard report``: curves, plots and tables from saved runs (no model).

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import os

from multiguard.cli.console import echo, fail
from multiguard.cli.options import EXIT_FAILURE, add_output


def _cmd_report(args: argparse.Namespace) -> int:
    from multiguard.evaluation.curves import parse_radius_grid
    from multiguard.evaluation.report import make_report
    from multiguard.evaluation.results import RESULTS_FILE, compare_results, differing_fields, read_results

    if not args.runs and not args.compare:
        raise ValueError("runs: give RUN_DIRs to report (with --out), or --compare RESULTS.json ... to compare reports")
    compared = list(args.compare or ())
    if not args.runs and args.out is not None:
        raise ValueError("out: --compare alone prints its table and writes no files into --out; leave out --out "
                         "(redirect the table to keep it: > compare.md), or give RUN_DIRs to report into --out")
    _check_q_has_thresholds(args)
    if args.runs:
        if args.out is None:
            raise ValueError("out: give --out REPORT_DIR, the folder for the report of the runs")
        summary_radii = ([float(r) for r in parse_radius_grid(args.summary_radii, "--summary-radii")]
                         if args.summary_radii else [])
        if args.radii is not None:
            parse_radius_grid(args.radii, "--radii")  # fail on a bad grid before reading any run
        result = make_report(
            args.runs,
            args.out,
            k=args.k,
            k_prime=args.k_prime,
            alpha=args.alpha,
            radius_grid=args.radii,
            summary_radii=summary_radii,
            methods=args.methods,
            names=args.names,
            attacks=args.attack or (),
            overwrite=args.overwrite,
            n=args.n or (),
            q=args.q,
        )
        if not args.quiet:
            echo(result.summary)
        echo("wrote " + ", ".join(str(p) for p in result.files))
        compared = [os.path.join(args.out, RESULTS_FILE), *compared] if compared else []
    if args.strict and not compared:
        raise ValueError("strict: --strict checks a comparison: give --compare RESULTS.json ...")
    if compared:
        echo(compare_results(compared, metrics=args.metric).rstrip())
        if args.strict:
            from multiguard.evaluation.results import STRICT_FIELDS

            differ = [name for name in differing_fields([read_results(p) for p in compared]) if name in STRICT_FIELDS]
            if differ:
                return fail(f"compare --strict: the runs differ in {', '.join(differ)}: their numbers are not of the "
                            "same experiment (compare runs of the same data, noise and thresholds, or leave out "
                            "--strict)", EXIT_FAILURE)
    return 0


def _check_q_has_thresholds(args: argparse.Namespace) -> None:
    """Refuse --q where no threshold curve is computed (``--methods`` without ``threshold``, or no run certified
    with thresholds): q is the cut of those curves only, and the report would silently ignore it."""
    if "q" not in getattr(args, "given", ()) or not args.runs:
        return
    if args.methods is not None and "threshold" not in args.methods:
        raise ValueError("q: --q is the cut of the threshold curves, and --methods leaves them out; add threshold "
                         "to --methods, or leave out --q")
    from multiguard.runs.folder import recorded_settings

    for run in args.runs:
        meta = recorded_settings(run)
        if meta is None or meta.get("thresholds"):  # not a run, or damaged: make_report names it
            return
    raise ValueError("q: --q is the cut of the threshold curves, and no run here was certified with thresholds "
                     "(certify --threshold); leave out --q")


def _report_options(p: argparse.ArgumentParser) -> None:
    from multiguard.certificates.methods import METHODS

    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help="runs written by multiguard certify")
    p.add_argument("--k", type=int, nargs="+", default=[3], help="labels the smoothed classifier predicts")
    p.add_argument("--k-prime", type=int, nargs="+", default=[1], help="labels the base classifier predicts")
    p.add_argument("--alpha", type=float, nargs="+", default=[0.001], help="failure probability of the bounds")
    p.add_argument("--radii", default=None,
                   help="radius grid START:STOP:STEP or a comma list (default: 0 to 4 sigma of the runs in steps of "
                   "sigma/20, e.g. 0:2:0.025 at sigma = 0.5)")
    p.add_argument("--summary-radii", default=None,
                   help="radii added to the summary table's 0, 0.25, 0.5, 1 (comma list)")
    p.add_argument("--methods", nargs="+", default=None, metavar="METHOD", choices=list(METHODS),
                   help="any of: " + "; ".join(f"{name}: {m.description.rstrip('.')}" for name, m in METHODS.items())
                   + " (default: every method the runs support, except "
                   + ", ".join(name for name, m in METHODS.items() if not m.default) + ", computed only when named)")
    p.add_argument("--q", type=float, nargs="+", default=[0.5],
                   help="per-label (threshold) curves: a label is predicted when it is on in more than a share q of "
                   "the noise (a smaller q: more recall, less precision)")
    p.add_argument("--names", nargs="+", default=None, help="a name per RUN_DIR (default: folder names)")
    p.add_argument("--n", type=int, nargs="+", default=None,
                   help="read each run at these sample sizes (from its stored nested counts), e.g. 100 200 500 1000")
    p.add_argument("--attack", nargs="+", default=None, metavar="ATTACK_DIR",
                   help="overlay the empirical curves of multiguard attack runs")
    p.add_argument("--compare", nargs="+", default=None, metavar="RESULTS",
                   help="put these results.json files (or report folders) in one table, after the report of the "
                   "RUN_DIRs if any; see docs/results.md")
    p.add_argument("--strict", action="store_true",
                   help="with --compare: exit 1 when the runs differ in what they are measured on (dataset, split, "
                   "inputs, sigma, n, noise or thresholds); the model, mode and denoiser may differ")
    p.add_argument("--metric", nargs="+", default=["f1"], choices=["precision", "recall", "f1"],
                   help="with --compare: the certified metrics to tabulate")
    add_output(p, metavar="REPORT_DIR", help="folder for the report files (needed with RUN_DIRs)", required=False,
               quiet="do not print the summary",
               overwrite="write into an --out that holds other files (a previous report is always replaced)")
