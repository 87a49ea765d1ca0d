"""The command line's parts: the parser that never abbreviates, the help formatter, and the option groups
that several commands share (each option is written once, here).

No torch here: ``multiguard --help`` builds every parser from these groups and the torch-free registries
(datasets, architectures, methods, precision modes, futility rules).
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

__all__ = [
    "DEBUG_ENV",
    "DEMO_COMPILE",
    "DEMO_PRECISION",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "Parser",
    "CERTIFICATE",
    "HARDWARE",
    "MODEL_AND_DATA",
    "OUTPUT",
    "SAMPLING",
    "SEQUENTIAL",
    "THRESHOLDED",
    "add_device",
    "add_mode",
    "add_model_source",
    "add_noise",
    "add_dataset_folder",
    "add_output",
    "add_sampling",
    "add_shard",
    "refuse_rule_options_without_radius",
    "add_stop_rule",
    "add_thresholds",
    "add_threads",
    "apply_threads",
    "dataset_options",
    "group",
    "mode_args",
    "wrap",
]

EXIT_FAILURE = 1  # the machine failed (disk full, read-only, out of memory) or something unexpected happened
EXIT_USAGE = 2  # the user's input is wrong
DEBUG_ENV = "MULTIGUARD_DEBUG"  # set to 1 to see tracebacks (as --debug does)


def __getattr__(name: str) -> Any:
    if name == "FUTILITY_CHOICES":  # the futility rules' names, read from their registry at use
        from multiguard.certificates.sequential import FUTILITY_RULES

        return FUTILITY_RULES.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# The demo's default mode: fp32 + compile, the mode the README's tables were measured in, so that a plain
# `multiguard demo` prints them (--precision auto picks bf16 where the CPU or GPU has it: faster, another base
# classifier, other last digits).
DEMO_PRECISION = "fp32"
DEMO_COMPILE = True


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown (unless the help already says it), descriptions wrapped by :func:`wrap`, and the help of
    an option on its line up to 32 columns in (most options fit: fewer lines)."""

    def __init__(self, prog: str, **kwargs: Any) -> None:
        kwargs.setdefault("max_help_position", 32)
        super().__init__(prog, **kwargs)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if "default" in text or default is None or default is False or default == argparse.SUPPRESS:
            return text
        return super()._get_help_string(action)


def wrap(text: str, width: int = 88) -> str:
    """Wrap each blank-line separated paragraph of ``text`` (for RawDescriptionHelpFormatter)."""
    return "\n\n".join(textwrap.fill(" ".join(par.split()), width) for par in text.split("\n\n"))


class Parser(argparse.ArgumentParser):
    """argparse without prefix matching (a half-typed option is an error, never another option: ``--n`` is not
    ``--names``), whose usage errors are one line on stderr with exit status 2. Subparsers inherit both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """Print ``multiguard: error: <message> (see <prog> --help)`` and exit with status 2."""
        line = " ".join(message.split())
        self.exit(EXIT_USAGE, f"multiguard: error: {line} (see {self.prog} --help)\n")


def dataset_options(pairs: list[str] | None) -> dict[str, Any]:
    """``KEY=VALUE`` pairs (``--dataset-option``, ``--arch-option``) as a dict, values typed."""
    from multiguard.training.settings import parse_options

    return parse_options(pairs, "dataset-option")


# ------------------------------------------------------------------------------------------ option groups

#: The titles of the option groups of ``--help``, in the order a command's help lists them (each shared helper
#: below puts its options in one of them; a command's own options go in with :func:`group`).
MODEL_AND_DATA = "model and data"
SAMPLING = "sampling"
HARDWARE = "device and mode"
CERTIFICATE = "certificate"
SEQUENTIAL = "sequential certification"
THRESHOLDED = "thresholded certificate"
OUTPUT = "output"


def group(p: argparse.ArgumentParser | argparse._ArgumentGroup, title: str) -> argparse._ArgumentGroup:
    """The option group ``title`` of parser ``p`` (made on first use, so groups list in the order first used);
    given a group, that group."""
    if isinstance(p, argparse._ArgumentGroup):
        return p
    for existing in p._action_groups:
        if existing.title == title:
            return existing
    return p.add_argument_group(title)

DENOISER_HELP = "a denoiser before the classifier: a multiguard train-denoiser checkpoint (same sigma, image size)"


def denoiser_help() -> str:
    """--denoiser's help: a checkpoint, or one of the registered source forms (read when the parser is built)."""
    from multiguard.denoising.sources import denoiser_source_forms

    return f"{DENOISER_HELP}; or {denoiser_source_forms()}"


def add_model_source(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    """The base classifier: --checkpoint and --denoiser; with ``data``, the inputs: --dataset, --data-root and
    --split, each defaulting to the checkpoint's."""
    p = group(p, MODEL_AND_DATA)
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="model checkpoint from multiguard train")
    p.add_argument("--denoiser", default=None, metavar="FILE|SOURCE", help=denoiser_help())
    if data:
        p.add_argument("--dataset", default=None, metavar="NAME", help="dataset (default: the checkpoint's)")
        p.add_argument("--data-root", default=None, metavar="DIR", help="dataset folder (default: the checkpoint's)")
        p.add_argument("--split", default=None, help="split (default: the checkpoint's test split)")


def add_device(p: argparse.ArgumentParser) -> None:
    """--device, in the group of the device and the sampling mode."""
    group(p, HARDWARE).add_argument("--device", default="auto", help="auto (default; cuda if available), cpu, cuda:1")


def add_threads(p: argparse.ArgumentParser) -> None:
    """--threads (as train has), in the group of the device and the sampling mode; :func:`apply_threads` sets it."""
    group(p, HARDWARE).add_argument("--threads", type=int, default=None, metavar="N",
                                    help="CPU threads for torch (default: torch's)")


def apply_threads(args: argparse.Namespace, say: Callable[[str], None]) -> None:
    """``torch.set_num_threads(args.threads)`` for the rest of the command, announced in one line; nothing
    without --threads. Raises ValueError("threads: ...") for a number below 1."""
    if getattr(args, "threads", None) is None:
        return
    import torch

    from multiguard.common.validation import check_int

    torch.set_num_threads(check_int(args.threads, "threads", 1))
    say(f"CPU threads: {torch.get_num_threads()} (--threads)")


def add_noise(p: argparse.ArgumentParser, *, shared: bool = True, default: str | None = None) -> None:
    """--noise {float,sound} (the noise kind, part of the run's identity) and, with ``shared``, --shared-noise:
    generated from those fields of :class:`multiguard.runs.spec.RunSpec`, as certify's are; --noise defaults to
    ``default`` (images: :data:`multiguard.common.noise_kinds.IMAGE_DEFAULT_NOISE`)."""
    from multiguard.common.noise_kinds import IMAGE_DEFAULT_NOISE
    from multiguard.common.settings import add_arguments
    from multiguard.runs.spec import RunSpec

    names = ("noise", "shared_noise") if shared else ("noise",)
    add_arguments(p, RunSpec, only=names, groups=dict.fromkeys(names, SAMPLING), parsed_defaults=True,
                  defaults={"noise": IMAGE_DEFAULT_NOISE if default is None else default})


def add_mode(p: argparse.ArgumentParser, default: str = "fp32", compile_default: bool = False) -> None:
    """--precision, --channels-last and --compile: the sampling mode, part of the base classifier."""
    from multiguard.sampling.modes import PRECISION_MODES

    p = group(p, HARDWARE)
    p.add_argument(
        "--precision", choices=PRECISION_MODES.names(), default=None,
        help=f"the model's forward pass, as the certificate holds for it (default: {default}); auto picks bf16 + "
        "channels_last where the GPU or CPU has native bf16 (docs/sampling-modes.md)",
    )
    p.add_argument("--channels-last", action="store_true", default=None,
                   help="feed batches in channels_last memory format (implied where --precision auto picks bf16)")
    if compile_default:
        p.add_argument("--no-compile", dest="compile", action="store_false", default=True,
                       help="do not compile the model with torch.compile (compiled by default)")
    else:
        p.add_argument("--compile", action="store_true", default=False,
                       help="torch.compile the model first (where it cannot, one line says so)")
    p.set_defaults(default_precision=default)


def add_sampling(p: argparse.ArgumentParser, *, n_help: str | None, seed_help: str = "seeds the noise") -> None:
    """The noise and how it is drawn: --n, --seed, --sigma, --batch-size, --device and the sampling mode
    (``n_help=None``: without --n, --seed and --batch-size, which the command declares itself, as certify does
    from :class:`multiguard.runs.spec.RunSpec`)."""
    parser, p = p, group(p, SAMPLING)
    if n_help is not None:
        p.add_argument("--n", type=int, default=1000, metavar="N", help=n_help)
        p.add_argument("--seed", type=int, default=0, metavar="S", help=seed_help)
    p.add_argument("--sigma", type=float, default=None, help="noise level (default: the checkpoint's training sigma)")
    if n_help is not None:
        p.add_argument("--batch-size", type=int, default=1000, metavar="B", help="noisy samples per forward pass")
    add_device(parser)
    add_threads(parser)
    add_mode(parser)


def add_stop_rule(p: argparse.ArgumentParser, stop_help: str, futility_help: str, *,
                  rule_values: Mapping[str, Any] | None = None) -> None:
    """Sequential certification, generated from the fields of :class:`multiguard.certificates.stop_rule.StopRule`
    (their options, checks and defaults are declared there): --stop-at-radius, --futility (the entries of
    :data:`multiguard.certificates.sequential.FUTILITY_RULES`), --futility-margin, --schedule (the entries of
    :data:`multiguard.certificates.sequential.SCHEDULES`), --spending and --bounds; left out, the last five are
    the rule's defaults (or a resumed run's: ``StopRule.procedure_from``). With ``rule_values`` (``{"k": 3,
    "k_prime": 1, "alpha": 0.001}``) the rule's own --k, --k-prime and --alpha too, parsed with those
    defaults (certify's rule; predict's come from its certificate options)."""
    from multiguard.certificates.stop_rule import StopRule
    from multiguard.common.settings import add_arguments

    helps = {"radius": stop_help, "futility": f"{futility_help} (each rule: docs/sequential.md)",
             "k": "k of the stopping rule", "k_prime": "k' of the stopping rule", "alpha": "alpha of the stopping rule"}
    names = ("radius", "futility", "margin", "schedule", "spending", "k", "k_prime", "alpha", "bounds")
    groups = dict.fromkeys(names, SEQUENTIAL)
    add_arguments(p, StopRule, only=names[:5], groups=groups, helps=helps)
    if rule_values is not None:
        add_arguments(p, StopRule, only=names[5:8], groups=groups, helps=helps, defaults=rule_values,
                      parsed_defaults=True)
    add_arguments(p, StopRule, only=names[8:], groups=groups, helps=helps)


def refuse_rule_options_without_radius(args: argparse.Namespace, consequence: str, *,
                                       names: tuple[str, ...] = ()) -> None:
    """The options of a stopping rule's procedure (``StopRule.procedure_dests``) and those of ``names``
    (destinations) set the rule of --stop-at-radius: given without it they would be ignored, so they are refused
    in one line naming them and ``consequence`` (what happens instead)."""
    from multiguard.certificates.stop_rule import StopRule

    names = (*names, *StopRule.procedure_dests().values())
    given = [name for name in names if name in getattr(args, "given", ())]
    if given and args.stop_at_radius is None:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        verb = "sets" if len(given) == 1 else "set"
        raise ValueError(f"{given[0]}: {flags} only {verb} the stopping rule of --stop-at-radius, which is not "
                         f"given; {consequence}")


def add_shard(p: argparse.ArgumentParser) -> None:
    """--shard: this job's part of a run's chunks, ``I/N`` or ``auto`` (from a SLURM job array,
    :mod:`multiguard.runs.shards`)."""
    group(p, OUTPUT).add_argument("--shard", default=None, metavar="I/N|auto",
                   help="do only shard I of N (e.g. 0/4) of the chunks; auto: this task's shard of a SLURM job "
                   "array")


def add_dataset_folder(p: argparse.ArgumentParser, *, names: list[str], root_help: str) -> None:
    """A dataset in a folder: NAME (one of ``names``), --root and --manifest (a user's manifest of URLs, sizes,
    checksums and official counts that replaces the shipped entries it names)."""
    p.add_argument("name", metavar="NAME", choices=names, help=" or ".join([", ".join(names[:-1]), names[-1]])
                   if len(names) > 1 else names[0])
    p.add_argument("--root", required=True, help=root_help)
    p.add_argument("--manifest", default=None, metavar="FILE",
                   help="your own manifest (same format as the shipped one, see docs/datasets.md): its datasets "
                   "replace the shipped entries, e.g. to use an institutional mirror")


def add_thresholds(p: argparse.ArgumentParser, *, rule: bool = True) -> None:
    """A thresholded base classifier: --threshold (a number or a file with one per label), --threshold-scale,
    and with ``rule`` --threshold-rule (choices and help from
    :data:`multiguard.certificates.thresholds.THRESHOLD_RULES`),
    --threshold-split, --threshold-inputs."""
    p = group(p, THRESHOLDED)
    p.add_argument("--threshold", default=None, metavar="TAU|FILE",
                   help="certify per-label decisions too: a label is on when its score passes its threshold (one "
                   "number, or a file of one per label: docs/certificate.md) (default: none)")
    p.add_argument("--threshold-scale", default="probability", choices=["probability", "score"],
                   help="--threshold is on sigmoid(score) or on the raw score")
    if rule:
        from multiguard.certificates.thresholds import THRESHOLD_RULES

        p.add_argument("--threshold-rule", default=None, choices=THRESHOLD_RULES.names(),
                       help="choose per-label thresholds on images none of which is certified (docs/certificate.md)")
        p.add_argument("--threshold-split", default=None, metavar="SPLIT",
                       help="split to choose thresholds on (default: the checkpoint's training split)")
        p.add_argument("--threshold-inputs", type=int, default=300, metavar="N", help="images to choose them on")


def check_q_given(args: argparse.Namespace) -> None:
    """Refuse ``--q`` without ``--threshold`` (or ``--threshold-rule``): q is the cut of the thresholded
    certificate, and a top-k certificate alone would silently ignore it. Raises ValueError("q: ...")."""
    if "q" in getattr(args, "given", ()) and getattr(args, "threshold", None) is None \
            and getattr(args, "threshold_rule", None) is None:
        raise ValueError("q: --q is the cut of the thresholded certificate and does nothing without --threshold; "
                         "give --threshold TAU|FILE too, or leave out --q")


def add_output(p: argparse.ArgumentParser, *, metavar: str | None, help: str, required: bool = True,  # noqa: A002
               resume: str | None = None, overwrite: str | None = None, quiet: str | None = "no progress output",
               default: str | None = None) -> None:
    """Where results go: --out, with --resume, --overwrite and --quiet where the command has them."""
    p = group(p, OUTPUT)
    if resume is not None:
        p.add_argument("--resume", action="store_true", help=resume)
    if overwrite is not None:
        p.add_argument("--overwrite", action="store_true", help=overwrite)
    if quiet is not None:
        p.add_argument("--quiet", action="store_true", help=quiet)
    p.add_argument("--out", required=required, default=default, metavar=metavar, help=help)


def mode_args(args: argparse.Namespace, device: object, say: Callable[[str], None]) -> dict[str, Any]:
    """The mode arguments of a command, resolved for ``device`` and announced in one line."""
    from multiguard.sampling.acceleration import resolve_mode

    precision = args.precision or args.default_precision
    mode = resolve_mode(precision, args.channels_last, args.compile, device)
    how = f" (--precision auto on {device})" if precision == "auto" else ""
    say(f"sampling mode: {mode.describe()}{how}")
    return {"precision": mode.precision, "channels_last": mode.channels_last, "compile": mode.compile}


# The same choices as multiguard.data._common.RESIZE_CHOICES (not imported here: that module loads torch, and
# --help should not); tests/cli/test_bad_days_4.py checks that the two agree.
RESIZE_CHOICES = ("stretch", "pad", "refuse")


def add_resize(p: argparse.ArgumentParser) -> None:
    """--resize: how an image file of another size than the model's square is fitted to it."""
    group(p, MODEL_AND_DATA).add_argument("--resize", default="stretch", choices=RESIZE_CHOICES,
                   help="an image of another size than the model's: stretch it to the model's square (aspect ratio "
                   "not kept), pad it (scaled to fit, aspect ratio kept, black borders) or refuse it; the radii are "
                   "in the pixels of the image certified, not the file's")
