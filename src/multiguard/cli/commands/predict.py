"""``multiguard predict``: certified labels for image files.

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from multiguard.cli.console import echo
from multiguard.cli.options import (
    CERTIFICATE,
    HARDWARE,
    OUTPUT,
    THRESHOLDED,
    add_model_source,
    add_noise,
    add_resize,
    add_sampling,
    add_stop_rule,
    add_thresholds,
    apply_threads,
    check_q_given,
    group,
    mode_args,
    refuse_rule_options_without_radius,
)


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


def apply_mode_of(args: argparse.Namespace) -> None:
    """--mode-of: take the sampling mode the run recorded (refused beside --precision, --channels-last,
    --compile, and for a run of another checkpoint)."""
    if args.mode_of is not None:
        from multiguard.runs.folder import load_run

        if args.precision is not None or args.channels_last is not None or args.compile:
            raise ValueError("mode-of: the mode comes from the run; leave out --precision, --channels-last, --compile")
        recorded = load_run(args.mode_of).metadata
        _check_same_checkpoint(recorded, args.checkpoint, args.mode_of)
        args.precision = recorded.get("precision", "fp32")
        args.channels_last = bool(recorded.get("channels_last", False))
        args.compile = bool(recorded.get("compile", False))


def _cmd_predict(args: argparse.Namespace) -> int:
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.common.devices import resolve_device
    from multiguard.serving.predict import predict_images

    refuse_rule_options_without_radius(args, "without it every image gets --n samples")
    check_q_given(args)
    apply_mode_of(args)
    mode = mode_args(args, resolve_device(args.device), (lambda line: None) if args.json else echo)
    apply_threads(args, (lambda line: None) if args.json else echo)
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
        stop_rule=None if args.stop_at_radius is None else StopRule(radius=args.stop_at_radius,
                                                                  **StopRule.procedure_from(args)),
        denoiser=args.denoiser,
        thresholds=args.threshold,
        threshold_scale=args.threshold_scale,
        q=args.q,
        noise=args.noise,
        resize=args.resize,
        log=lambda line: print(line, file=sys.stderr, flush=True),
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
        echo(f"{p.path}{_size_note(p)}: {', '.join(p.labels)}{used}")
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
    side = predictions[0].certified_size
    echo(f"(for each image, its lines hold together with probability >= {1 - args.alpha:g} over the sampling; "
          f"radii are l2 norms in the pixels, in [0, 1], of the {side[0]}x{side[1]} image certified; "
          f"noise: {predictions[0].noise})")
    return 0


def _size_note(p: Any) -> str:
    """`` (20x50 file stretched to 32x32: radii in the 32x32 image's pixels)`` for a file of another size than
    the image certified; empty for one of the model's size."""
    if not p.resized:
        return ""
    (fw, fh), (cw, ch) = p.file_size, p.certified_size
    how = {"stretch": "stretched", "pad": "scaled and padded"}[p.resize]
    return f" ({fw}x{fh} file {how} to {cw}x{ch}: radii in the {cw}x{ch} image's pixels, not the file's)"


def _echo_thresholded(p: Any, q: float) -> None:
    """The thresholded certificate of one image: labels certified on and off (each with the l2 radius below
    which it stays so), and the undecided ones."""

    def listed(pairs: list[tuple[str, float]]) -> str:
        return ", ".join(f"{name} < {r:.3f}" if math.isfinite(r) else f"{name} (any radius)" for name, r in pairs)

    echo(f"  per label (thresholded, q = {q:g}; each label with the l2 radius below which its state is certified):")
    echo("    certified on:  " + (listed(p.certified_on) if p.certified_on else "none"))
    echo("    undecided:     " + (", ".join(p.undecided) if p.undecided else "none"))
    echo("    certified off: " + (listed(p.certified_off) if p.certified_off else "none"))


def _predict_options(p: argparse.ArgumentParser, images: bool = True) -> None:
    add_model_source(p, data=False)
    if images:
        p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_sampling(p, n_help="samples that certify them")
    certificate = group(p, CERTIFICATE)
    certificate.add_argument("--k", type=int, default=3, metavar="K", help="labels to predict")
    certificate.add_argument("--k-prime", type=int, default=1, metavar="K", help="labels the base classifier predicts")
    certificate.add_argument("--n0", type=int, default=100, metavar="N", help="samples that select the labels")
    certificate.add_argument("--alpha", type=float, default=0.001, help="failure probability")
    add_stop_rule(
        p, stop_help="stop sampling an image once how many of its labels are certified at R is settled (--n is then "
        "the most samples)", futility_help="with --stop-at-radius: when to give up on an image (see certify --help)")
    add_thresholds(p, rule=False)
    add_noise(p, shared=False)
    add_resize(p)
    group(p, THRESHOLDED).add_argument(
        "--q", type=float, default=0.5,
        help="with --threshold: a label is predicted when it is on in more than a share q of the noise")
    group(p, HARDWARE).add_argument("--mode-of", default=None, metavar="RUN_DIR",
                                    help="use the sampling mode a certify run recorded (to claim its certificate)")
    if images:
        group(p, OUTPUT).add_argument("--json", action="store_true", help="print JSON")
