"""``multiguard train`` and ``multiguard train-denoiser``: train a base classifier or a denoiser (the options
come from the settings dataclasses of :mod:`multiguard.training.settings`).

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import dataclasses
import os

from multiguard.cli.console import echo, shown
from multiguard.cli.options import (
    HARDWARE,
    MODEL_AND_DATA,
    add_device,
    add_output,
)


def _check_threads(args: argparse.Namespace) -> None:
    """--threads below 1 named as the option is (``threads``, as certify, predict and attack name it), not by
    the settings field behind it (``num_threads``)."""
    from multiguard.common.validation import check_int

    if getattr(args, "num_threads", None) is not None:
        check_int(args.num_threads, "threads", 1)


def _cmd_train(args: argparse.Namespace) -> int:
    from multiguard.common.settings import from_namespace
    from multiguard.training.classifier import train
    from multiguard.training.settings import TrainSettings

    _check_threads(args)
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
            what = f"imported {meta['pretrained']} as {shown(meta['arch'])} without training"
        else:
            what = f"trained {shown(meta['arch'])} for {meta['epoch']} epochs"
        echo(f"{what} on {meta['dataset']} ({meta['num_classes']} classes, sigma = {meta['sigma']:g}): "
              f"test mAP clean {last['clean_map']:.4f}{noisy}")
    echo(f"checkpoint: {args.out}")
    return 0


def _cmd_train_denoiser(args: argparse.Namespace) -> int:
    from multiguard.common.settings import from_namespace
    from multiguard.training.denoiser import train_denoiser
    from multiguard.training.settings import DenoiserTrainSettings

    _check_threads(args)
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


_MODEL_AND_DATA = ("dataset", "data_root", "arch", "arch_options", "pretrained", "mean", "std", "image_size",
                   "train_size", "test_size", "train_split", "test_split", "dataset_options", "classifier")
_HARDWARE = ("num_threads", "num_workers", "precision", "channels_last", "compile")
#: The --help group of each training setting (the others are listed under "training").
_TRAIN_GROUPS = {**dict.fromkeys(_MODEL_AND_DATA, MODEL_AND_DATA), **dict.fromkeys(_HARDWARE, HARDWARE)}


def _groups(cls: type) -> dict[str, str]:
    return {f.name: _TRAIN_GROUPS.get(f.name, "training") for f in dataclasses.fields(cls)}


def _train_options(p: argparse.ArgumentParser) -> None:
    from multiguard.common.settings import add_arguments
    from multiguard.training.settings import TrainSettings

    add_arguments(p, TrainSettings, groups=_groups(TrainSettings))  # every setting once, on its field
    add_device(p)
    add_output(p, metavar=None, help="checkpoint file to write (e.g. model.pt)",
               resume="continue the checkpoint at --out", overwrite="replace an existing checkpoint at --out")


def _train_denoiser_options(p: argparse.ArgumentParser) -> None:
    from multiguard.common.settings import add_arguments
    from multiguard.training.settings import DenoiserTrainSettings

    add_arguments(p, DenoiserTrainSettings, groups=_groups(DenoiserTrainSettings))
    add_device(p)
    add_output(p, metavar=None, help="denoiser checkpoint to write (e.g. denoiser.pt)",
               resume="continue the checkpoint at --out", overwrite="replace an existing denoiser at --out")
