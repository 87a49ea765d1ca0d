"""``multiguard certify``: sample counts into a RUN_DIR (resumable, shardable, optionally sequential).

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from multiguard.cli.console import echo, next_k
from multiguard.cli.options import (
    OUTPUT,
    SAMPLING,
    add_model_source,
    add_output,
    add_sampling,
    add_shard,
    add_stop_rule,
    add_thresholds,
    apply_threads,
    mode_args,
    refuse_rule_options_without_radius,
)

_STOP_RULE_OPTIONS = ("k", "k_prime", "alpha", "futility")
# the options of a stopping rule a resumed run's stop rule gives when they are not given (with its radius)


# certify's options that a --resume takes from the run's metadata.json when they are not given: (dest, key)


_RUN_SETTINGS = (("n", "n"), ("seed", "seed"), ("num_inputs", "num_inputs"), ("chunk_size", "chunk_size"),
                 ("max_k_prime", "max_k_prime"), ("sigma", "sigma"), ("batch_size", "batch_size"),
                 ("dataset", "dataset"), ("data_root", "data_root"), ("split", "split"),
                 ("denoiser", "denoiser"), ("precision", "precision"), ("channels_last", "channels_last"),
                 ("compile", "compile"), ("noise", "noise"), ("shared_noise", "shared_noise"))


def _check_stop_rule_options(args: argparse.Namespace) -> None:
    """--k, --k-prime, --alpha and the rule's procedure options set the stopping rule: without --stop-at-radius
    they would be ignored, so they are refused (a fixed-n run stores counts for every k, k' and alpha)."""
    refuse_rule_options_without_radius(args, "a fixed-n run stores counts for every k, k' and alpha: choose them "
                                       "in multiguard report", names=("k", "k_prime", "alpha"))


def _settings_from_run(args: argparse.Namespace) -> list[str]:
    """On ``--resume``: every setting of the run not given on the command line is taken from its metadata.json
    (so that ``certify --checkpoint C --out RUN_DIR --resume`` continues the run as it was made; the sampling
    mode only as a whole, when none of its options is given). Returns the
    ``name = value`` of those that differ from the command's defaults; nothing when the run has no readable
    metadata (the run folder's own checks then speak)."""
    from multiguard.runs.folder import recorded_settings

    meta = recorded_settings(args.out)
    if meta is None:
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
    from multiguard.runs.folder import recorded_settings

    return (recorded_settings(run_dir) or {}).get("stop_rule")


def _cmd_certify(args: argparse.Namespace) -> int:
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.common.distributed import init_distributed
    from multiguard.common.progress import ProgressPrinter
    from multiguard.models.base_classifier import ModeSpec
    from multiguard.runs.certify_step import sample_checkpoint

    place, shard = _shard(args.shard)
    from_run = _settings_from_run(args) if args.resume else []  # a sequential run resumes with its own rule
    _check_stop_rule_options(args)
    context = init_distributed(args.device)
    try:
        say = echo if context.rank == 0 else (lambda line: None)
        prefix = _prefix(context, shard)
        if place is not None and not args.quiet:
            say(f"{prefix}: --shard auto: {place.source}")
        quiet_say = (lambda line: None) if args.quiet else say
        mode = mode_args(args, context.device, quiet_say)
        apply_threads(args, quiet_say)
        started = time.perf_counter()
        header = f"n = {args.n} samples per input into {args.out} on {context.device}"
        quiet = args.quiet or context.rank != 0
        printer = None if quiet else ProgressPrinter(say, args.n, prefix=prefix, header=header)
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
                **StopRule.procedure_from(args, _stored_stop_rule(args.out) if args.resume else None)),
            log=quiet_say,
            denoiser=args.denoiser,
            on_progress=printer,
            thresholds=args.threshold,
            threshold_scale=args.threshold_scale,
            threshold_rule=args.threshold_rule,
            threshold_split=args.threshold_split, threshold_inputs=args.threshold_inputs,
            noise=args.noise, shared_noise=args.shared_noise,
        )
        for line in result.repairs:  # what was damaged and redone, unless the progress lines said so already
            if printer is None or line not in printer.repairs_shown:
                say(f"{prefix}: {line}")
        _say_outcome(args, result, time.perf_counter() - started, quiet_say)
        return 0
    finally:
        context.close()


def _shard(text: str | None) -> tuple[Any, tuple[int, int]]:
    """--shard: ``(None, (i, n))`` from ``I/N`` (``(0, 1)`` without one), or ``(placement, (i, n))`` for ``auto``
    (the SLURM job array's task)."""
    from multiguard.runs import job as _job
    from multiguard.runs.shards import auto_shard

    place = auto_shard() if str(text).strip().lower() == "auto" else None
    return place, _job.parse_shard(text) if place is None else (place.index, place.count)


def _prefix(context: Any, shard: tuple[int, int]) -> str:
    """``certify``, with this worker's rank and shard where the job has several: ``certify (rank 1 of 4, shard
    0/2)``."""
    where = f"rank {context.rank} of {context.world_size}" if context.world_size > 1 else ""
    if shard[1] > 1:
        where = (where + ", " if where else "") + f"shard {shard[0]}/{shard[1]}"
    return f"certify ({where})" if where else "certify"


def _say_outcome(args: argparse.Namespace, result: Any, wall: float, say: Callable[[str], None]) -> None:
    """The last lines of certify: the run complete (with the samples a sequential run used, or the report to
    run next), or this worker's part done while other shards are still sampling."""
    from multiguard.runs import folder as _folder

    meta = result.metadata
    times = f"sampling time {meta.get('wall_time_s', 0):.1f} s (this session {wall:.1f} s)"
    if result.complete and meta.get("stop_rule"):
        used = _folder.load_run(args.out).samples
        say(f"run complete: {meta['num_inputs']} inputs, sequential at R = {args.stop_at_radius:g} (at most "
            f"n = {meta['n']}): {used.mean():.0f} samples per input on average, counts for k' <= "
            f"{meta['max_k_prime']}, {times}")
    elif result.complete:
        say(f"run complete: {meta['num_inputs']} inputs x n = {meta['n']}, counts for k' <= {meta['max_k_prime']}, "
            f"{times}")
        k, why = next_k(args.out)
        methods = " --methods multiguard threshold" if meta.get("thresholds") else ""
        say(f"next: multiguard report {args.out} --k {k} --k-prime 1{methods} --out REPORT_DIR   ({why})")
    else:
        status = _folder.run_status(args.out)
        say(f"this worker is done ({wall:.1f} s); the run has {status['chunks_done']} of {status['num_chunks']} "
            "chunks: the last shard to finish writes counts.npz")


def _certify_options(p: argparse.ArgumentParser) -> None:
    """certify's options: the run's plan generated from :class:`multiguard.runs.spec.RunSpec`'s fields
    (``RunSpec.PLAN_FIELDS``), the stopping rule from :class:`multiguard.certificates.stop_rule.StopRule`'s."""
    from multiguard.common.noise_kinds import IMAGE_DEFAULT_NOISE
    from multiguard.common.settings import add_arguments
    from multiguard.runs.spec import RunSpec

    add_model_source(p)
    groups = {**dict.fromkeys(RunSpec.PLAN_FIELDS, SAMPLING), "chunk_size": OUTPUT}
    plan = {"only": RunSpec.PLAN_FIELDS[:-1], "groups": groups, "parsed_defaults": True,
            "helps": {"max_k_prime": "store counts for every k' <= this (default: min(5, number of classes))"},
            "defaults": {"noise": IMAGE_DEFAULT_NOISE, "max_k_prime": None}}
    add_arguments(p, RunSpec, **plan)
    add_sampling(p, n_help=None)
    add_shard(p)
    add_stop_rule(
        p, stop_help="each input stops once its certified size at R (for --k, --k-prime, --alpha) is settled; n is "
        "then the most samples (docs/sequential.md)", futility_help="when to give up on an input",
        rule_values={"k": 3, "k_prime": 1, "alpha": 0.001})
    add_thresholds(p)
    add_output(p, metavar="RUN_DIR", help="the run folder to write",
               resume="continue the run in --out (its settings must agree)")
    add_arguments(p, RunSpec, **{**plan, "only": RunSpec.PLAN_FIELDS[-1:]})
