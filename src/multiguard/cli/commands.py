"""The commands of ``multiguard``: one handler each (parse nothing, call the library, print), and the table
:data:`COMMANDS` that the parser is built from.

A command is one entry of :data:`COMMANDS` (a :class:`~multiguard.common.registry.Registry` of :class:`Command`):
its name, its handler, a one-line help, a description and a function that adds its options (mostly the
shared groups of :mod:`multiguard.cli.options`). Registering one makes ``multiguard NAME`` exist.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multiguard.cli.options import (
    DEMO_COMPILE,
    EXIT_FAILURE,
    EXIT_USAGE,
    add_dataset_folder,
    add_device,
    add_mode,
    add_model_source,
    add_output,
    add_sampling,
    add_shard,
    add_stop_rule,
    add_thresholds,
    dataset_options,
    mode_args,
    stop_rule_options,
    wrap,
)
from multiguard.common.registry import Registry

__all__ = ["COMMANDS", "Command"]


@dataclass(frozen=True)
class Command:
    """One ``multiguard`` command: ``handler(args) -> exit status``, the ``description`` of its ``--help``,
    ``options(parser)`` adding its options, and ``subcommands`` (a command with actions, as ``datasets``)."""

    handler: Callable[[argparse.Namespace], int] | None
    description: str
    options: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    subcommands: tuple[tuple[str, str, Command], ...] = ()  # (name, help, command)


def _shown(text: str) -> str:
    """A path, or an arch ``PATH.py:factory``, relative to the current folder where that is shorter."""
    path, sep, rest = text.rpartition(":") if ".py:" in text else (text, "", "")
    if not os.path.isabs(path):
        return text
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive
        return text
    return relative + sep + rest if len(relative) < len(path) else text


def _next_k(run_dir: str) -> tuple[int, str]:
    """A k for the `next:` hint from the run's labels: about the mean label count, well below the classes."""
    from multiguard.runs.folder import load_run

    labels = load_run(run_dir).labels
    classes = labels.shape[1]
    mean = float(labels.sum(1).mean()) if len(labels) else 1.0
    k = max(1, min(int(-(-mean // 1)), max(1, classes // 2)))
    return k, (f"k = {k}: about the {mean:.1f} labels per input, at most half the {classes} classes; "
               "k' = 1 as in the paper")


class OutputStreamError(OSError):
    """Writing to stdout failed (e.g. it is redirected to a full disk): the output, not --out, is at fault."""


def echo(line: str = "") -> None:
    """Print one line to stdout now; a failing stdout raises :class:`OutputStreamError` (a closed pipe, as
    ``| head`` makes, stays a BrokenPipeError: the command stops quietly)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        raise
    except OSError as exc:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - nothing more to it, nor at interpreter shutdown
        raise OutputStreamError(exc.errno, exc.strerror or str(exc)) from exc


def fail(message: str, code: int = EXIT_USAGE) -> int:
    line = " ".join(str(message).split())  # one line, whatever the message held
    print(f"multiguard: error: {line}", file=sys.stderr, flush=True)
    return code



# ------------------------------------------------------------------------------------------ handlers


def _cmd_train(args: argparse.Namespace) -> int:
    from multiguard.common.settings import from_namespace
    from multiguard.training.classifier import train
    from multiguard.training.settings import TrainSettings

    run = {"out": args.out, "resume": args.resume, "overwrite": args.overwrite, "device": args.device,
           "progress": not args.quiet, "log": None if not args.quiet else (lambda line: None)}
    if getattr(args, "recipe", None):  # the recipe's values, each replaced by an option given explicitly
        given = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainSettings)
                 if getattr(args, f.name, None) is not None}
        _, meta = train(**given, **run)
    else:
        _, meta = train(from_namespace(TrainSettings, args), **run)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for the job
        return 0
    last = meta["metrics"][-1] if meta["metrics"] else None
    if args.quiet:  # --quiet: nothing on stdout (the checkpoint's metrics hold what these lines say)
        return 0
    if last is not None:
        noisy = f", noisy {last['noisy_map']:.4f}" if meta["sigma"] > 0 else ""
        if meta["epoch"] == 0:
            what = f"imported {meta['pretrained']} as {_shown(meta['arch'])} without training"
        else:
            what = f"trained {_shown(meta['arch'])} for {meta['epoch']} epochs"
        echo(f"{what} on {meta['dataset']} ({meta['num_classes']} classes, sigma = {meta['sigma']:g}): "
              f"test mAP clean {last['clean_map']:.4f}{noisy}")
    echo(f"checkpoint: {args.out}")
    return 0


def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    from multiguard.common.settings import from_namespace
    from multiguard.training.denoiser import train_denoiser
    from multiguard.training.settings import DenoiserTrainSettings

    _, meta = train_denoiser(from_namespace(DenoiserTrainSettings, args), out=args.out, resume=args.resume,
                             overwrite=args.overwrite, device=args.device, progress=not args.quiet,
                             log=None if not args.quiet else (lambda line: None))
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports for the job
        return 0
    last = meta["metrics"][-1]
    agreement = f", top-1 agreement {last['top1_agreement']:.3f}" if "top1_agreement" in last else ""
    if args.quiet:
        return 0
    stability = meta.get("stability_epochs") or 0
    objective = (f"{meta['objective']}, then {stability} stability epoch{'s' if stability != 1 else ''}" if stability
                 else meta["objective"])
    echo(f"trained a {meta['arch']} denoiser ({objective}) for sigma = {meta['sigma']:g} on "
          f"{meta['dataset']} ({meta['in_channels']}x{meta['image_size']}x{meta['image_size']}) for {meta['epoch']} "
          f"epochs: held-out MSE {last['test_mse']:.5f} (noisy input {last['noisy_mse']:.5f}){agreement}")
    echo(f"denoiser: {args.out} (use it with: multiguard certify --checkpoint CLASSIFIER --denoiser {args.out} ...)")
    return 0


def _cmd_datasets_list(args: argparse.Namespace) -> int:
    from multiguard.data import DATASETS

    if args.json:
        echo(json.dumps({name: {"description": info.description, "train_split": info.train_split,
                                 "test_split": info.test_split, "image_size": info.image_size,
                                 "needs_root": info.needs_root, "options": list(info.options)}
                          for name, info in DATASETS.items()}, indent=2))
        return 0
    width = max(len(name) for name in DATASETS)
    for name, info in DATASETS.items():
        echo(f"{name.ljust(width)}  {info.description} (splits {info.train_split}/{info.test_split})")
    return 0


def _cmd_datasets_describe(args: argparse.Namespace) -> int:
    from multiguard.data import default_splits, describe, format_description, get_dataset

    splits = args.split or list(dict.fromkeys(default_splits(args.dataset)))
    options = dataset_options(args.dataset_option)
    descriptions = [
        describe(get_dataset(args.dataset, root=args.data_root, split=split, image_size=args.image_size,
                             seed=args.seed, **options), check_images=not args.labels_only)
        for split in splits
    ]
    if args.json:
        echo(json.dumps(descriptions[0] if len(descriptions) == 1 else descriptions, indent=2))
    else:
        echo(format_description(descriptions))
    unreadable = sum(len(d.get("unreadable_images", ())) for d in descriptions)
    if unreadable:
        return fail(f"{unreadable} image file{'s' if unreadable > 1 else ''} cannot be read (listed above); fix or "
                     "remove them from the dataset before training")
    return 0


def _cmd_datasets_download(args: argparse.Namespace) -> int:
    from multiguard.data.download import DownloadError, download_dataset

    say = (lambda line: None) if args.quiet else echo
    try:
        result = download_dataset(args.name, args.root, manifest=args.manifest, progress=False if args.quiet else None,
                                  retries=args.retries, keep_archives=args.keep_archives, log=say)
    except DownloadError as exc:  # one line per URL tried, then what to do
        for line in exc.lines:
            print(f"multiguard: error: {line.rstrip()}", file=sys.stderr, flush=True)
        return EXIT_FAILURE
    for name in result.present:
        say(f"{name}: already in {args.root} (left alone)")
    for name in result.fetched:
        say(f"{name}: fetched, checked and unpacked into {args.root}")
    if result.manual:
        for line in result.manual:
            echo(line)
        return fail(f"{args.name} in {args.root} is not complete: do the steps above by hand, then run this command "
                    "again", EXIT_FAILURE)
    if not result.fetched:
        echo(f"{args.name} in {args.root} is complete: nothing to download")
    else:
        echo(f"{args.name} is in {args.root}")
    echo(f"next: multiguard datasets verify {args.name} --root {args.root}")
    return 0


def _cmd_datasets_verify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from multiguard.data.verify import verify_dataset

    report = verify_dataset(args.name, args.root, splits=args.split, manifest=args.manifest,
                            check_images=not args.labels_only, progress=False if args.json else None)
    if args.json:
        echo(json.dumps({"name": report.name, "root": str(report.root), "ok": report.ok,
                         "splits": [{**asdict(check), "ok": check.ok} for check in report.splits]}, indent=2))
    else:
        echo(report.text())
    if not report.ok:
        return fail(f"{len(report.problems)} problem(s) in {args.root} (listed above): fix them, or fetch the "
                    f"data again (multiguard datasets download {args.name} --root {args.root})", EXIT_FAILURE)
    return 0


_STOP_RULE_OPTIONS = ("k", "k_prime", "alpha", "futility")
# the options that only set the procedure of a stopping rule (a resumed run's come from its stop rule)
_PROCEDURE_OPTIONS = ("futility_margin", "schedule", "spending")
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
            k, why = _next_k(args.out)
            methods = " --methods multiguard threshold" if meta.get("thresholds") else ""
            quiet_say(f"next: multiguard report {args.out} --k {k} --k-prime 1{methods} --out REPORT_DIR   ({why})")
        else:
            status = _folder.run_status(args.out)
            quiet_say(f"this worker is done ({wall:.1f} s); the run has {status['chunks_done']} of "
                f"{status['num_chunks']} chunks: the last shard to finish writes counts.npz")
        return 0
    finally:
        context.close()


def _cmd_report(args: argparse.Namespace) -> int:
    from multiguard.evaluation.curves import parse_radius_grid
    from multiguard.evaluation.report import make_report
    from multiguard.evaluation.results import RESULTS_FILE, compare_results

    if not args.runs and not args.compare:
        raise ValueError("runs: give RUN_DIRs to report (with --out), or --compare RESULTS.json ... to compare reports")
    compared = list(args.compare or ())
    if args.runs:
        if args.out is None:
            raise ValueError("out: give --out REPORT_DIR, the folder for the report of the runs")
        summary_radii = [float(r) for r in parse_radius_grid(args.summary_radii)] if args.summary_radii else []
        if args.radii is not None:
            parse_radius_grid(args.radii)  # fail on a bad grid before reading any run
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
    if compared:
        echo(compare_results(compared, metrics=args.metric).rstrip())
    return 0


def _cmd_attack(args: argparse.Namespace) -> int:
    from multiguard.common.devices import resolve_device
    from multiguard.evaluation.attack_run import run_attack

    mode = mode_args(args, resolve_device(args.device), (lambda line: None) if args.quiet else echo)
    result = run_attack(
        args.checkpoint, out_dir=args.out, radii=args.radii, k=args.k, k_prime=args.k_prime,
        dataset=args.dataset, data_root=args.data_root, split=args.split, num_inputs=args.num_inputs or None,
        steps=args.steps, samples=args.samples, n=args.n, alpha=args.alpha, seed=args.seed, sigma=args.sigma,
        certify=not args.no_certify, batch_size=args.batch_size, device=args.device,
        log=None if args.quiet else echo, denoiser=args.denoiser, overwrite=args.overwrite, resume=args.resume,
        **mode,
    )
    if args.quiet:  # the numbers are in ATTACK_DIR
        return 0
    curves = result.curves
    echo(f"empirical under attack ({curves.num_inputs} inputs, k = {args.k}, k' = {args.k_prime}):")
    echo("  radius  precision  recall      f1" + ("  below certificate" if result.violations is not None else ""))
    for i, r in enumerate(curves.radius):
        line = f"  {r:6g}  {curves.precision[i]:9.3f}  {curves.recall[i]:6.3f}  {curves.f1[i]:6.3f}"
        if result.violations is not None:
            line += f"  {int(result.violations[i]):>18d}"
        echo(line)
    echo(f"wrote {result.out_dir}/empirical.csv (overlay it with: multiguard report RUN_DIR --attack {args.out})")
    return 0


def _check_same_checkpoint(recorded: dict, checkpoint: str, run_dir: str) -> None:
    """--mode-of: the run's mode is claimed for the run's own model only; a run of another checkpoint (by the
    SHA-256 it recorded) is refused, naming both."""
    from multiguard.common.files import file_sha256

    if not os.path.isfile(checkpoint):
        return  # the checkpoint's own loading names the missing file
    theirs, ours = recorded.get("checkpoint_sha256"), file_sha256(checkpoint)
    if theirs is not None and theirs != ours:
        raise ValueError(f"mode-of: {run_dir} was certified with another checkpoint ({recorded.get('checkpoint')}, "
                         f"SHA-256 {str(theirs)[:12]}...) than --checkpoint {checkpoint} (SHA-256 {ours[:12]}...); "
                         "its certificate holds for its own model: give the run of this checkpoint")


def _cmd_predict(args: argparse.Namespace) -> int:
    from multiguard.common.devices import resolve_device
    from multiguard.serving.predict import predict_images

    if args.mode_of is not None:
        from multiguard.runs.folder import load_run

        if args.precision is not None or args.channels_last is not None or args.compile:
            raise ValueError("mode-of: the mode comes from the run; leave out --precision, --channels-last, --compile")
        recorded = load_run(args.mode_of).metadata
        _check_same_checkpoint(recorded, args.checkpoint, args.mode_of)
        args.precision = recorded.get("precision", "fp32")
        args.channels_last = bool(recorded.get("channels_last", False))
        args.compile = bool(recorded.get("compile", False))
    mode = mode_args(args, resolve_device(args.device), (lambda line: None) if args.json else echo)
    predictions = predict_images(
        args.checkpoint,
        args.images,
        k=args.k,
        k_prime=args.k_prime,
        n0=args.n0,
        n=args.n,
        alpha=args.alpha,
        seed=args.seed,
        sigma=args.sigma,
        batch_size=args.batch_size,
        device=args.device,
        **mode,
        stop_at_radius=args.stop_at_radius,
        **stop_rule_options(args),
        denoiser=args.denoiser,
        thresholds=args.threshold,
        threshold_scale=args.threshold_scale,
        q=args.q,
    )
    if args.json:
        echo(json.dumps([p.as_dict() for p in predictions], indent=2))
        return 0
    if args.stop_at_radius is not None and predictions:
        used = [p.samples for p in predictions]
        echo(f"sequential at R = {args.stop_at_radius:g} (at most n = {args.n}): {len(predictions)} image(s), "
             f"{sum(used) / len(used):.0f} estimation samples per image on average, "
             f"{predictions[0].batch_seconds:.2f} s for all of them")
    for p in predictions:
        used = f" ({p.samples} samples)" if args.stop_at_radius is not None else ""
        echo(f"{p.path}: {', '.join(p.labels)}{used}")
        for e, radius in enumerate(p.radii, start=1):
            if e <= p.trivial:
                echo(f"  at least {e} of them: trivial, not a guarantee about the model: any {args.k} of the "
                      f"{p.num_classes} classes keep at least {p.trivial} of these {args.k} labels (k well below "
                      "the number of classes avoids this)")
            elif radius > 0:
                bound = "of any size" if radius == float("inf") else f"of l2 norm < {radius:.3f}"
                echo(f"  at least {e} of them stay{'s' if e == 1 else ''} predicted under every perturbation {bound}")
            else:
                echo(f"  {e} of them: no guarantee")
        if p.certified_on is not None:
            _echo_thresholded(p, args.q)
    echo(f"(for each image, its lines hold together with probability >= {1 - args.alpha:g} over the sampling; "
          "pixels in [0, 1])")
    return 0


def _echo_thresholded(p: Any, q: float) -> None:
    """The thresholded certificate of one image: labels certified on and off (each with the l2 radius below
    which it stays so), and the undecided ones."""

    def listed(pairs: list[tuple[str, float]]) -> str:
        return ", ".join(f"{name} < {r:.3f}" if math.isfinite(r) else f"{name} (any radius)" for name, r in pairs)

    echo(f"  per label (thresholded, q = {q:g}; each label with the l2 radius below which its state is certified):")
    echo("    certified on:  " + (listed(p.certified_on) if p.certified_on else "none"))
    echo("    undecided:     " + (", ".join(p.undecided) if p.undecided else "none"))
    echo("    certified off: " + (listed(p.certified_off) if p.certified_off else "none"))


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
    result = run_demo(args.out, quick=args.quick, device=args.device, log=echo, **mode)
    main_report = result.reports["report"]
    echo()
    echo(main_report.summary.rstrip())
    echo()
    for key, label in (("report-k-prime", "Impact of k' (k = 3)"), ("report-k", "Impact of k (k' = 1)"),
                       ("report-n", "Impact of n (k' = 1, k = 3)")):
        if key not in result.reports:
            continue
        text = result.reports[key].summary
        start = text.find("## Certified top-k f1-score@R")
        end = text.find("\n## ", start + 3)
        echo(f"### {label}: " + text[start + 3 : end if end > 0 else len(text)].strip())
        echo()
    if "report-thresholded" in result.reports:
        from multiguard.demo import thresholded_vs_top_k

        echo("### Thresholded vs top-k (the same run's samples; a label is on in a noisy copy when its probability > "
             "0.5; docs/certificate.md)")
        echo()
        echo(thresholded_vs_top_k(result.reports["report-thresholded"].curves))
        echo()
    from multiguard.runs.folder import load_run, sampling_mode

    echo(f"These tables are reproducible in sampling mode {sampling_mode(load_run(result.run_dir).metadata)} (the "
         "seeds fix the model, the inputs and every noise sample; another mode is another base classifier).")
    echo()
    total = time.perf_counter() - started
    timings = ", ".join(f"{name} {secs:.0f} s" for name, secs in result.seconds.items())
    echo(f"done in {total:.0f} s ({timings}). Files:")
    echo(f"  {'model':<15} {result.checkpoint}")
    echo(f"  {'counts':<15} {result.run_dir}/ (metadata.json, counts.npz, chunks/)")
    for key, rep in result.reports.items():
        echo(f"  {key:<15} {rep.out}/ ({', '.join(REPORT_FILES)})")
    echo(f"  {'figure':<15} {result.figure}")
    return 0



# --------------------------------------------------------------------------------------- options per command


def _train_options(p: argparse.ArgumentParser) -> None:
    from multiguard.common.settings import add_arguments
    from multiguard.training.settings import TrainSettings

    add_arguments(p, TrainSettings)  # every setting once, on its field: flag, default, check, help
    add_device(p)
    add_output(p, metavar=None, help="checkpoint file to write (e.g. model.pt)",
               resume="continue the checkpoint at --out", overwrite="replace an existing checkpoint at --out")


def _train_denoiser_options(p: argparse.ArgumentParser) -> None:
    from multiguard.common.settings import add_arguments
    from multiguard.training.settings import DenoiserTrainSettings

    add_arguments(p, DenoiserTrainSettings)
    add_device(p)
    add_output(p, metavar=None, help="denoiser checkpoint to write (e.g. denoiser.pt)",
               resume="continue the checkpoint at --out", overwrite="replace an existing denoiser at --out")


def _datasets_list_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def _datasets_describe_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data import DATASETS, dataset_names

    composed = [name for name, info in DATASETS.items() if info.composed]
    p.add_argument("--dataset", required=True, help=dataset_names())
    p.add_argument("--data-root", default=None, help="dataset folder (all datasets but multidigits)")
    p.add_argument("--split", action="append", default=None,
                   help="split to describe (repeatable; default: the train and test splits)")
    p.add_argument("--image-size", type=int, default=None, help="image side (labels do not depend on it)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"{' and '.join(composed) or 'composed datasets'} only: the seed that composes it")
    p.add_argument("--dataset-option", action="append", metavar="KEY=VALUE", help="dataset option (repeatable)")
    p.add_argument("--labels-only", action="store_true",
                   help="do not open the images (quick on large datasets; missing or corrupt files go unnoticed)")
    p.add_argument("--json", action="store_true", help="print the description as JSON")


def _stored_stop_rule(run_dir: str) -> dict | None:
    """The stop rule a run folder was written with (None without one), so that --resume continues it with its
    own rule where the command line leaves the rule's options out."""
    path = Path(run_dir) / "metadata.json"
    try:
        return json.loads(path.read_text()).get("stop_rule")
    except (OSError, ValueError):
        return None


def _datasets_download_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data.download import downloadable_names

    add_dataset_folder(p, names=downloadable_names(),
                       root_help="the dataset folder to fill (made if missing): give it as --data-root when training")
    p.add_argument("--keep-archives", action="store_true",
                   help="keep the checked archives in ROOT/.multiguard-downloads after unpacking them")
    p.add_argument("--retries", type=int, default=3,
                   help="resumes of a dropped connection per URL (while bytes keep arriving) before the next URL")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _datasets_verify_options(p: argparse.ArgumentParser) -> None:
    from multiguard.data import DATASETS

    add_dataset_folder(p, names=[name for name, info in DATASETS.items() if info.needs_root],
                       root_help="the dataset folder (as given to --data-root)")
    p.add_argument("--split", action="append", default=None,
                   help="split to check (repeatable; default: the train and test splits)")
    p.add_argument("--labels-only", action="store_true",
                   help="do not open the images (counts and label files only; missing or corrupt images go unnoticed)")
    p.add_argument("--json", action="store_true", help="print the findings as JSON")


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
    add_thresholds(p)
    add_output(p, metavar="RUN_DIR", help="the run folder to write",
               resume="continue the run in --out (its settings must agree)")


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
    p.add_argument("--metric", nargs="+", default=["f1"], choices=["precision", "recall", "f1"],
                   help="with --compare: the certified metrics to tabulate")
    add_output(p, metavar="REPORT_DIR", help="folder for the report files (needed with RUN_DIRs)", required=False,
               quiet="do not print the summary",
               overwrite="write into an --out that holds other files (a previous report is always replaced)")


def _attack_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    add_sampling(p, n_help="fresh samples that measure the attacked prediction")
    p.add_argument("--radii", default="0.25,0.5,1.0", help="l2 radii to attack at (comma list)")
    p.add_argument("--k", type=int, default=3, help="labels the smoothed classifier predicts")
    p.add_argument("--k-prime", type=int, default=1, help="labels the base classifier predicts")
    p.add_argument("--num-inputs", type=int, default=100, help="random test inputs to attack (0: all)")
    p.add_argument("--steps", type=int, default=20, help="PGD steps")
    p.add_argument("--samples", type=int, default=32, help="noise samples per gradient step")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability of the certified sizes")
    p.add_argument("--no-certify", action="store_true", help="skip the certified sizes and the violation count")
    add_output(p, metavar="ATTACK_DIR", help="folder for the attack's files",
               resume="continue the killed attack in --out from its finished blocks (its settings must agree)",
               overwrite="replace the attack in --out")


def _predict_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p, data=False)
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_sampling(p, n_help="samples that certify them", seed_help="seeds the noise")
    p.add_argument("--k", type=int, default=3, help="labels to predict")
    p.add_argument("--k-prime", type=int, default=1, help="labels the base classifier predicts")
    p.add_argument("--n0", type=int, default=100, help="samples that select the labels")
    p.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    add_stop_rule(
        p, stop_help="stop sampling an image once how many of its labels are certified at R is settled (--n is then "
        "the most samples)", futility_help="with --stop-at-radius: when to give up on an image (see certify --help)")
    add_thresholds(p, rule=False)
    p.add_argument("--q", type=float, default=0.5,
                   help="with --threshold: a label is predicted when it is on in more than a share q of the noise")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--mode-of", default=None, metavar="RUN_DIR",
                   help="use the sampling mode a certify run recorded (to claim that run's certificate)")


def _demo_options(p: argparse.ArgumentParser) -> None:
    add_output(p, metavar=None, help="folder for the demo's files", required=False, default="multiguard-demo",
               quiet=None)
    p.add_argument("--quick", action="store_true", help="a smaller, faster demo")
    p.add_argument("--denoised", action="store_true",
                   help="instead: denoised smoothing, a classifier trained without noise alone, behind an MSE and a "
                   "stability denoiser, and a noise-trained one, certified on the same 100 inputs (into OUT/denoised)")
    add_device(p)
    add_mode(p, default="auto", compile_default=DEMO_COMPILE)


# ---------------------------------------------------------------------------------------- the command table

#: The commands of ``multiguard``, in the order ``--help`` lists them.
COMMANDS: Registry[Command] = Registry("command")
COMMANDS.register("train", Command(_cmd_train, wrap(
    "Train a base multi-label classifier with Gaussian noise on every batch (ASL loss, Adam), saving a checkpoint "
    "after each epoch."), _train_options), help="train a base classifier on noisy inputs")
COMMANDS.register("train-denoiser", Command(_cmd_train_denoiser, wrap(
    "Train a denoiser that removes Gaussian noise of --sigma from a dataset's images (denoised smoothing): then "
    "`certify --denoiser` puts it in front of a classifier trained on clean images, and the base classifier becomes "
    "classifier(denoiser(x + noise)). Objective mse needs no labels and no classifier; stability makes the frozen "
    "--classifier say on denoised noisy images what it says on clean ones (no labels either). The default recipe, "
    "given --classifier: the unet denoiser, --epochs of mse, then --stability-epochs of stability through the "
    "classifier, in one command; at the end the classifier's top-1 agreement on noisy held-out images is shown "
    "with and without the denoiser. A checkpoint is saved after each epoch."), _train_denoiser_options),
    help="train a denoiser for a classifier trained without noise")
COMMANDS.register("datasets", Command(None, wrap(
    "List the dataset families, describe one dataset's labels, download a dataset into the layout its loader reads, "
    "or verify a dataset folder."),
    subcommands=(
        ("list", "the dataset families", Command(_cmd_datasets_list, "", _datasets_list_options)),
        ("describe", "label statistics of a dataset", Command(_cmd_datasets_describe, wrap(
            "Label counts and frequencies of a dataset's splits, and a check of every image file: it is opened and "
            "decoded, and the sizes and colour modes found are listed with the input size the model will use. "
            "Unreadable images (missing or corrupt) are listed and make the command exit with code 2."),
            _datasets_describe_options)),
        ("download", "fetch a dataset into the layout its loader reads", Command(_cmd_datasets_download, wrap(
            "Fetch and unpack voc2007 or coco2014 into --root, from the URLs of the manifest shipped with multiguard "
            "(official hosts first, then mirrors; --manifest FILE for your own): each file is resumed after an "
            "interruption (HTTP Range), checked against its published size and checksums before it gets its final "
            "name, and unpacked into the exact layout the loaders read. Files already there are left alone. A file "
            "no URL could deliver: one line per URL tried and what to do, exit status 1. nuswide: fetches the ASL "
            "split and says exactly which files to fetch by hand and where to put them, then checks them (exit status "
            "1 until they are there). See docs/datasets.md."), _datasets_download_options)),
        ("verify", "check a dataset folder before training", Command(_cmd_datasets_verify, wrap(
            "Check a dataset folder: every file the loader needs is present and parses, each split's image count "
            "against the official one (VOC 2007 trainval 5,011 and test 4,952; COCO 2014 train 82,783 and val "
            "40,504 images, 82,081 and 40,137 of them labelled; NUS-WIDE: every image its csv lists), every image "
            "opened and decoded, and the label statistics `datasets describe` prints. Each problem is one line "
            "naming the split and the file (missing image, corrupt image, wrong split count); any problem: exit "
            "status 1."), _datasets_verify_options)),
    )), help="list, describe, download and verify datasets")
COMMANDS.register("certify", Command(_cmd_certify, wrap(
    "Draw n noisy samples of each of --num-inputs random inputs (chosen from --seed) and save, for every k' <= "
    "--max-k-prime, how often each label is in the model's top k'. Chunks are saved atomically: a killed run "
    "continues with --resume.\n\nScale out: `torchrun --nproc-per-node G -m multiguard certify --num-samples 1000 "
    "...` (one GPU per rank), or --shard I/N for job arrays (--shard auto in a SLURM job array: the task's shard from "
    "SLURM_ARRAY_TASK_ID); all write the same RUN_DIR and give the same counts as one process."), _certify_options),
    help="sample counts into a RUN_DIR (resumable, shardable)")
COMMANDS.register("report", Command(_cmd_report, wrap(
    "Certified top-k precision/recall/F1 curves of MultiGuard, MultiGuard with first terms only, and (where k' = 1) "
    "Jia et al., from the counts of one or more RUN_DIRs. Writes curves.csv, precision.png, recall.png, f1.png, "
    "summary.md and results.json (the curves as data, docs/results.md) into --out; --compare puts results.json files "
    "of several reports in one table.\n\nIn the tables and plots: R is the l2 norm of the perturbation (pixels in "
    "[0, 1]); e is the number of an input's true labels L certified to stay among the k predicted labels under every "
    "perturbation of norm < R; certified precision@R = e/k, recall@R = e/|L|, F1@R = 2e/(|L| + k), averaged over "
    "inputs; 'trivial: by counting alone' is the part that any k of the c labels keep whatever the model (e <= |L| "
    "- (c - k)); 'empirical (attack)' is measured at the inputs a PGD attack found (an upper bound, where "
    "certificates are lower bounds).\n\nThe impact of n from one run: --n 100 200 500 1000 reads each run at those "
    "sample sizes (a run stores its counts after 100, 200, 500, 1000, 2000, 5000, ... samples; each is the fixed-n "
    "experiment on the same samples). A sequential run (certify --stop-at-radius) is reported with anytime-valid "
    "bounds: its curves hold at every radius."), _report_options),
    help="curves, plots and tables from saved runs (no model)")
COMMANDS.register("attack", Command(_cmd_attack, wrap(
    "Attack the smoothed classifier of a checkpoint with l2 PGD in the manner of SmoothAdv (gradients of a soft "
    "top-k' surrogate averaged over --samples noise draws, --steps projected steps) at each radius, then measure "
    "|L ∩ top-k| at the attacked inputs with n fresh samples. Writes ATTACK_DIR/empirical.csv "
    "(radius,precision,recall,f1,num_inputs), per_input.npz and attack.json. The inputs are those of a certify run "
    "with the same --seed and --num-inputs; the certified sizes of the same inputs are computed too, and every input "
    "whose empirical size falls below its certified one is counted (each is a failure of probability at most "
    "alpha)."), _attack_options), help="l2 PGD attack on the smoothed classifier (empirical curves)")
COMMANDS.register("predict", Command(_cmd_predict, wrap(
    "Predict k labels per image with the smoothed classifier and, for each e, the l2 radius below which at least e "
    "of them provably stay predicted."), _predict_options), help="certified labels for image files")
COMMANDS.register("demo", Command(_cmd_demo, wrap(
    "The whole method on a laptop with no network: train small_cnn on multidigits with noise (sigma = 0.5), certify "
    "500 random test inputs with n = 1000 for every k' <= 3, and report MultiGuard vs Jia et al. (k' = 1, k = 3) "
    "plus the k and k' ablations. About 2 minutes on 2 CPU cores; --quick (100 inputs, a smaller model budget) well "
    "under 90 s. Running it again reuses what is finished."), _demo_options),
    help="train, certify and report offline on multidigits")
