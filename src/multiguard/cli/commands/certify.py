"""``multiguard certify``: sample counts into a RUN_DIR (resumable, shardable, optionally sequential).

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from multiguard.cli.console import echo, next_k
from multiguard.cli.options import (
    add_bounds,
    add_model_source,
    add_output,
    add_sampling,
    add_shard,
    add_stop_rule,
    add_thresholds,
    mode_args,
    stop_rule_options,
)

_STOP_RULE_OPTIONS = ("k", "k_prime", "alpha", "futility")
# the options that only set the procedure of a stopping rule (a resumed run's come from its stop rule)


_PROCEDURE_OPTIONS = ("futility_margin", "schedule", "spending", "bounds")
# certify's options that a --resume takes from the run's metadata.json when they are not given: (dest, key)


_RUN_SETTINGS = (("n", "n"), ("seed", "seed"), ("num_inputs", "num_inputs"), ("chunk_size", "chunk_size"),
                 ("max_k_prime", "max_k_prime"), ("sigma", "sigma"), ("batch_size", "batch_size"),
                 ("dataset", "dataset"), ("data_root", "data_root"), ("split", "split"),
                 ("denoiser", "denoiser"), ("precision", "precision"), ("channels_last", "channels_last"),
                 ("compile", "compile"))


def _check_stop_rule_options(args: argparse.Namespace) -> None:
    """--k, --k-prime, --alpha, --futility, --futility-margin, --schedule and --spending set the stopping rule:
    without --stop-at-radius they would be ignored, so they are refused (a fixed-n run stores counts for every
    k, k' and alpha)."""
    given = [name for name in (*_STOP_RULE_OPTIONS, *_PROCEDURE_OPTIONS) if name in getattr(args, "given", ())]
    if given and args.stop_at_radius is None and "stop_at_radius" not in getattr(args, "given", ()):
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise ValueError(f"{given[0]}: {flags} only set the stopping rule of --stop-at-radius, which is not given; "
                         "a fixed-n run stores counts for every k, k' and alpha: choose them in multiguard report")


def _settings_from_run(args: argparse.Namespace) -> list[str]:
    """On ``--resume``: every setting of the run not given on the command line is taken from its metadata.json
    (so that ``certify --checkpoint C --out RUN_DIR --resume`` continues the run as it was made; the sampling
    mode only as a whole, when none of its options is given). Returns the
    ``name = value`` of those that differ from the command's defaults; nothing when the run has no readable
    metadata (the run folder's own checks then speak)."""
    path = os.path.join(args.out, "metadata.json")
    try:
        with open(path, encoding="utf-8") as handle:
            meta = json.load(handle)
    except (OSError, ValueError):
        return []
    if not isinstance(meta, dict):
        return []
    given = getattr(args, "given", frozenset())
    taken = []
    settings = list(_RUN_SETTINGS)
    rule = meta.get("stop_rule")
    if isinstance(rule, dict) and "stop_at_radius" not in given:
        settings += [("stop_at_radius", "radius"), *((name, name) for name in _STOP_RULE_OPTIONS)]
        meta = {**meta, **{key: rule.get(key) for key in ("radius", *_STOP_RULE_OPTIONS)}}
    mode = {"precision", "channels_last", "compile"}
    if given & mode:  # a sampling mode is taken whole: one given on the command line is compared as it is
        settings = [(dest, key) for dest, key in settings if dest not in mode]
    for dest, key in settings:
        if dest in given or meta.get(key) is None or not hasattr(args, dest):
            continue
        value = meta[key]
        if getattr(args, dest) != value:
            taken.append(f"{dest} = {value}")
        setattr(args, dest, value)
    return taken


def _stored_stop_rule(run_dir: str) -> dict | None:
    """The stop rule a run folder was written with (None without one), so that --resume continues it with its
    own rule where the command line leaves the rule's options out."""
    path = Path(run_dir) / "metadata.json"
    try:
        return json.loads(path.read_text()).get("stop_rule")
    except (OSError, ValueError):
        return None


def _cmd_certify(args: argparse.Namespace) -> int:
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.common.distributed import init_distributed
    from multiguard.common.progress import ProgressPrinter
    from multiguard.models.base_classifier import ModeSpec
    from multiguard.runs import folder as _folder
    from multiguard.runs import job as _job
    from multiguard.runs.certify_step import sample_checkpoint
    from multiguard.runs.shards import auto_shard

    place = auto_shard() if str(args.shard).strip().lower() == "auto" else None
    shard = _job.parse_shard(args.shard) if place is None else (place.index, place.count)
    _check_stop_rule_options(args)
    from_run = _settings_from_run(args) if args.resume else []
    context = init_distributed(args.device)
    try:
        where = f"rank {context.rank} of {context.world_size}" if context.world_size > 1 else ""
        if shard[1] > 1:
            where = (where + ", " if where else "") + f"shard {shard[0]}/{shard[1]}"
        say = echo if context.rank == 0 else (lambda line: None)
        prefix = f"certify ({where})" if where else "certify"
        if place is not None and not args.quiet:
            say(f"{prefix}: --shard auto: {place.source}")
        quiet_say = (lambda line: None) if args.quiet else say
        mode = mode_args(args, context.device, quiet_say)
        started = time.perf_counter()
        printer = None if args.quiet or context.rank != 0 else ProgressPrinter(
            say, args.n, prefix=prefix, header=f"n = {args.n} samples per input into {args.out} on {context.device}"
        )
        if from_run:
            quiet_say(f"resume: as the run was made (not given here): {', '.join(from_run)}")
        result = sample_checkpoint(
            args.checkpoint,
            args.out,
            mode=ModeSpec(**mode),
            dataset=args.dataset,
            data_root=args.data_root,
            split=args.split,
            n=args.n,
            max_k_prime=args.max_k_prime,
            num_inputs=args.num_inputs,
            seed=args.seed,
            sigma=args.sigma,
            batch_size=args.batch_size,
            chunk_size=args.chunk_size,
            shard=shard,
            resume=args.resume,
            context=context,
            stop_rule=None if args.stop_at_radius is None else StopRule(
                radius=args.stop_at_radius, k=args.k, k_prime=args.k_prime, alpha=args.alpha,
                **stop_rule_options(args, _stored_stop_rule(args.out) if args.resume else None)),
            log=quiet_say,
            denoiser=args.denoiser,
            on_progress=printer,
            thresholds=args.threshold,
            threshold_scale=args.threshold_scale,
            threshold_rule=args.threshold_rule,
            threshold_split=args.threshold_split,
            threshold_inputs=args.threshold_inputs,
        )
        wall = time.perf_counter() - started
        meta = result.metadata
        for line in result.repairs:  # what was damaged and redone, unless the progress lines said so already
            if printer is None or line not in printer.repairs_shown:
                say(f"{prefix}: {line}")
        if result.complete and meta.get("stop_rule"):
            used = _folder.load_run(args.out).samples
            quiet_say(f"run complete: {meta['num_inputs']} inputs, sequential at R = {args.stop_at_radius:g} (at most "
                f"n = {meta['n']}): {used.mean():.0f} samples per input on average, counts for k' <= "
                f"{meta['max_k_prime']}, sampling time {meta.get('wall_time_s', 0):.1f} s (this session {wall:.1f} s)")
        elif result.complete:
            quiet_say(f"run complete: {meta['num_inputs']} inputs x n = {meta['n']}, counts for k' <= "
                f"{meta['max_k_prime']}, sampling time {meta.get('wall_time_s', 0):.1f} s (this session {wall:.1f} s)")
            k, why = next_k(args.out)
            methods = " --methods multiguard threshold" if meta.get("thresholds") else ""
            quiet_say(f"next: multiguard report {args.out} --k {k} --k-prime 1{methods} --out REPORT_DIR   ({why})")
        else:
            status = _folder.run_status(args.out)
            quiet_say(f"this worker is done ({wall:.1f} s); the run has {status['chunks_done']} of "
                f"{status['num_chunks']} chunks: the last shard to finish writes counts.npz")
        return 0
    finally:
        context.close()


def _certify_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    add_sampling(p, n_aliases=("--num-samples",),
                 n_help="noisy samples per input (write --num-samples under torchrun, whose parser reads --n as an "
                 "abbreviation of its own options)")
    p.add_argument("--max-k-prime", type=int, default=None,
                   help="store counts for every k' <= this (default: min(5, number of classes))")
    p.add_argument("--num-inputs", type=int, default=500,
                   help="random test inputs to certify (0: all; more than the split holds: all, with a message)")
    p.add_argument("--chunk-size", type=int, default=10, help="inputs per saved chunk (a kill loses at most one)")
    add_shard(p)
    add_stop_rule(
        p, stop_help="sequential certification: n becomes the most samples per input, and each input stops once its "
        "certified size at R (for --k, --k-prime, --alpha) is settled; see docs/sequential.md",
        futility_help="with --stop-at-radius: give up on an input when none of these outcomes of its remaining "
        "samples could raise its size at R")
    p.add_argument("--k", type=int, default=3, help="with --stop-at-radius: k of the stopping rule")
    p.add_argument("--k-prime", type=int, default=1, help="with --stop-at-radius: k' of the stopping rule")
    p.add_argument("--alpha", type=float, default=0.001, help="with --stop-at-radius: alpha of the stopping rule")
    add_bounds(p)
    add_thresholds(p)
    add_output(p, metavar="RUN_DIR", help="the run folder to write",
               resume="continue the run in --out (its settings must agree)")
