"""``multiguard attack``: the empirical (attacked) curves of a smoothed classifier.

Each handler parses nothing, calls the library and prints; ``*_options`` adds the command's options."""

from __future__ import annotations

import argparse

from multiguard.cli.console import echo
from multiguard.cli.options import (
    CERTIFICATE,
    SAMPLING,
    THRESHOLDED,
    add_model_source,
    add_noise,
    add_output,
    add_sampling,
    add_thresholds,
    apply_threads,
    check_q_given,
    group,
    mode_args,
)

ATTACK = "attack"  # the --help group of the attack's own options


def _cmd_attack(args: argparse.Namespace) -> int:
    from multiguard.common.devices import resolve_device
    from multiguard.evaluation.attack_run import run_attack
    from multiguard.evaluation.curves import parse_radius_grid

    check_q_given(args)
    parse_radius_grid(args.radii, "--radii")  # a bad list is refused before the model is loaded
    mode = mode_args(args, resolve_device(args.device), (lambda line: None) if args.quiet else echo)
    apply_threads(args, (lambda line: None) if args.quiet else echo)
    result = run_attack(
        args.checkpoint, out_dir=args.out, radii=args.radii, k=args.k, k_prime=args.k_prime,
        dataset=args.dataset, data_root=args.data_root, split=args.split, num_inputs=args.num_inputs or None,
        steps=args.steps, samples=args.samples, n=args.n, alpha=args.alpha, seed=args.seed, sigma=args.sigma,
        certify=not args.no_certify, batch_size=args.batch_size, device=args.device,
        log=None if args.quiet else echo, denoiser=args.denoiser, overwrite=args.overwrite, resume=args.resume,
        attack=args.attack, restarts=args.restarts, **mode, noise=args.noise,
        thresholds=args.threshold, threshold_scale=args.threshold_scale, q=args.q,
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
    if result.thresholded is not None:
        _echo_thresholded(result, args.alpha)
    echo(f"wrote {result.out_dir}/empirical.csv (overlay it with: multiguard report RUN_DIR --attack {args.out})")
    return 0


def _echo_thresholded(result, alpha: float) -> None:  # noqa: ANN001
    """The thresholded table (empirical beside certified) and, loudly, any violation of the certificate."""
    table, settings = result.thresholded.table, result.curves.settings
    certified = result.thresholded.violations is not None
    echo(f"thresholded set under attack (q = {settings['q']:g}; thresholds {settings['threshold_source']}):")
    echo("  radius  precision  recall      f1" + ("  certified: precision  recall      f1  violations"
                                                 if certified else ""))
    for j, radius in enumerate(table["radius"]):
        line = (f"  {radius:6g}  {table['precision'][j]:9.3f}  {table['recall'][j]:6.3f}  {table['f1'][j]:6.3f}")
        if certified:
            line += (f"  {table['certified_precision'][j]:20.3f}  {table['certified_recall'][j]:6.3f}  "
                     f"{table['certified_f1'][j]:6.3f}  {int(table['violations'][j]):>10d}")
        echo(line)
    if certified and result.thresholded.violations.sum() > 0:
        echo(f"VIOLATIONS: at radii {table['radius'].tolist()} the attack flipped "
             f"{result.thresholded.violated_labels.tolist()} label decisions the certificate held on or off, on "
             f"{result.thresholded.violations.tolist()} inputs: each a certificate failure (probability at most "
             f"alpha = {alpha:g} per input) or Monte Carlo error of the measurement on a near tie")
    echo(f"wrote {result.out_dir}/empirical_thresholded.csv")


def add_attack_choice(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--attack NAME`` and ``--restarts``: which attack (:data:`multiguard.evaluation.attacks.ATTACKS`)."""
    from multiguard.evaluation.attacks import ATTACKS, DEFAULT_ATTACK

    names = ATTACKS.help_text()
    parser.add_argument("--attack", default=DEFAULT_ATTACK, metavar="NAME",
                        help=f"the attack (default {DEFAULT_ATTACK}): {names}")
    parser.add_argument("--restarts", type=int, default=None,
                        help="restarts per input and radius of an attack that has them (default 3 for apgd-targeted)")


def _attack_options(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    add_sampling(p, n_help="fresh samples that measure the attacked prediction",
                 seed_help="chooses the inputs and seeds the noise")
    group(p, SAMPLING).add_argument("--num-inputs", type=int, default=100, metavar="N",
                                    help="random test inputs to attack (0: all)")
    attack = group(p, ATTACK)
    attack.add_argument("--radii", default="0.25,0.5,1.0", help="l2 radii to attack at (comma list)")
    attack.add_argument("--steps", type=int, default=None,
                        help="gradient steps (per restart; default: the attack's, 30 for apgd-targeted, 20 for pgd)")
    attack.add_argument("--samples", type=int, default=None, help="noise samples per gradient step (default 32)")
    add_attack_choice(attack)
    certificate = group(p, CERTIFICATE)
    certificate.add_argument("--k", type=int, default=3, metavar="K", help="labels the smoothed classifier predicts")
    certificate.add_argument("--k-prime", type=int, default=1, metavar="K", help="labels the base classifier predicts")
    certificate.add_argument("--alpha", type=float, default=0.001, help="failure probability of the certified sizes")
    certificate.add_argument("--no-certify", action="store_true",
                             help="skip the certified sizes and the violation count")
    add_thresholds(p, rule=False)
    group(p, THRESHOLDED).add_argument(
        "--q", type=float, default=None,
        help="with --threshold: a label is predicted when it is on in more than a share q of the noise (default "
        "0.5); the per-label decisions are attacked too (empirical_thresholded.csv)")
    add_noise(p, shared=False)
    add_output(p, metavar="ATTACK_DIR", help="folder for the attack's files",
               resume="continue the killed attack in --out from its finished blocks (its settings must agree)",
               overwrite="replace the attack in --out")
