"""What a training trains, as frozen values: :class:`TrainSettings` (a base classifier) and
:class:`DenoiserTrainSettings` (a denoiser), and the door for training objectives. No torch: the command line
builds the ``train`` and ``train-denoiser`` options from these fields.

Each field declares once its check, whether a resumed training must share it (``identity``), and its
command-line option and help (:func:`multiguard.common.settings.add_arguments`)::

    parser = argparse.ArgumentParser()
    add_arguments(parser, TrainSettings)                  # --dataset ... --num-workers, as `multiguard train`
    settings = from_namespace(TrainSettings, parser.parse_args(["--epochs", "2"]))

The objectives, losses, augmentations and recipes these settings name are the registries of
:mod:`multiguard.training.registries` (imported here under the same names).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multiguard.common.settings import Choices, Interval, OneOf, Optional, Settings, setting
from multiguard.common.validation import check_bool
from multiguard.data import DATASETS, dataset_names
from multiguard.denoising.architectures import DENOISER_ARCHITECTURES
from multiguard.models.architectures import ARCHITECTURES, prefix_forms
from multiguard.training.registries import (
    AUGMENTATIONS,
    LOSSES,
    RECIPES,
    TRAINING_OBJECTIVES,
    check_loss,
    objective_names,
    recipe_values,
)

__all__ = [
    "DEFAULT_STABILITY_EPOCHS",
    "DenoiserTrainSettings",
    "TrainSettings",
    "parse_options",
    "with_recipe",
]

#: The default denoiser recipe (measured on multidigits, benchmarks/bench_denoiser_recipe.py): the unet denoiser
#: (width 32, levels 2, depth 2), 4 MSE epochs, then this many stability epochs through the classifier.
DEFAULT_STABILITY_EPOCHS = 8


def with_recipe(explicit: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(fields, recipe record)``: ``explicit`` fields (what the caller gave) over the values of the recipe it
    names (``explicit["recipe"]``; none: ``explicit`` unchanged and an empty record). The record is what a
    checkpoint stores and the trainer prints: ``{name, values (the recipe's), overridden (explicit fields that
    replaced a recipe value: {field: [recipe value, value used]})}``."""
    name = explicit.get("recipe")
    if not name:
        return dict(explicit), {}
    values = recipe_values(name)
    fields = {**values, **explicit}
    overridden = {key: [values[key], explicit[key]] for key in values
                  if key in explicit and explicit[key] != values[key]}
    return fields, {"name": name, "values": values, "overridden": overridden}


def _option_value(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(value: Any, option: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings (a repeated command-line ``option``) or a mapping, as a dict; values become
    bool, int or float where they read as one, keys have ``-`` as ``_``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    options: dict[str, Any] = {}
    for pair in value:
        key, sep, text = str(pair).partition("=")
        if not sep or not key:
            raise ValueError(f"{option} must look like KEY=VALUE, got {pair!r}")
        options[key.replace("-", "_")] = _option_value(text)
    return options


def _dataset(value: Any, name: str) -> str:
    if value not in DATASETS:
        raise ValueError(f"{name}: unknown dataset {value!r}; known datasets are {sorted(DATASETS)}")
    return value


def _dataset_options(value: Any, name: str) -> dict[str, Any]:
    return parse_options(value, "dataset-option")


def _arch_options(value: Any, name: str) -> dict[str, int]:
    options = parse_options(value, "arch-option")
    for key, v in options.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"arch-option {key}: expected an integer, got {v!r}")
    return options


def _objective_options(value: Any, name: str) -> dict[str, Any]:
    return parse_options(value, "objective-option")


def _augmentations(value: Any, name: str) -> tuple[str, ...]:
    names = (value,) if isinstance(value, str) else tuple(value)
    for item in names:
        if item not in AUGMENTATIONS:
            raise ValueError(f"{name}: unknown augmentation {item!r}; known: {', '.join(AUGMENTATIONS.names())}")
    return names


def _flag(value: Any, name: str) -> bool:
    return bool(value)


def _absolute(value: Any, name: str) -> str:
    """Absolute: a checkpoint is used from other folders."""
    return os.path.abspath(os.fspath(value))


def _weights(value: Any, name: str) -> str:
    """``imagenet``, a name a model library resolves, or a local file (made absolute)."""
    text = os.fspath(value)
    return text if text.lower() == "imagenet" or not os.path.exists(text) else os.path.abspath(text)


def _path(value: Any, name: str) -> str:
    return os.fspath(value)


def _floats(value: Any, name: str) -> tuple[float, ...]:
    return tuple(float(v) for v in value)


_SIZE = Optional(Interval(int, 1))


@dataclass(frozen=True)
class TrainSettings(Settings):
    """What :func:`multiguard.training.classifier.train` trains (a base classifier, noise on every batch); the
    identity fields
    must match the checkpoint a resumed training continues. See :func:`multiguard.training.classifier.train` for each
    field."""

    option_names = False  # messages name fields as the library's arguments, e.g. "sigma must be ..."

    dataset: str = setting("multidigits", identity=True, check=_dataset, help=dataset_names)
    data_root: str | None = setting(
        None, check=Optional(_absolute),
        help="dataset folder (all datasets but multidigits; stored absolute in the checkpoint)")
    arch: str = setting(
        "small_cnn", identity=True,
        help=lambda: f"{', '.join((*ARCHITECTURES.names(), *prefix_forms()))}, path/to/file.py:factory "
        "or module:factory (your function: takes num_classes, returns an nn.Module giving logits (B, num_classes); a "
        "module is found in the current folder or on sys.path; the checkpoint records the file's absolute path)")
    sigma: float = setting(0.5, identity=True, check=Interval(float, 0.0),
                           help="noise standard deviation (pixels in [0, 1])")
    epochs: int = setting(8, check=Interval(int, 0), help=
                          "epochs (a resumed run trains the missing ones; 0: import --pretrained without training)")
    batch_size: int = setting(32, identity=True, check=Interval(int, 1), help="training batch size")
    lr: float = setting(1e-3, identity=True, check=Interval(float, 0.0, open_low=True),
                        help="learning rate (the peak of a --schedule)")
    loss: str = setting("asl", identity=True, check=check_loss, choices=Choices(LOSSES.names), help="training loss")
    clamp: bool = setting(False, identity=True, check=_flag, action="store_true",
                          help="clamp noisy inputs to [0, 1] (also when certifying)")
    seed: int = setting(0, identity=True, check=Interval(int, 0), help="seeds initialisation, data order and noise")
    image_size: int | None = setting(None, check=_SIZE, type=int,
                                     help="image side (default: 32 multidigits, 224 others)")
    train_size: int | None = setting(None, check=_SIZE, type=int, help="train on a random subset of this many images")
    test_size: int | None = setting(None, check=_SIZE, type=int,
                                    help="evaluate on a random subset of this many images")
    train_split: str | None = setting(None, help="training split (default: the dataset's)")
    test_split: str | None = setting(None, help="evaluation split (default: the dataset's)")
    dataset_options: dict[str, Any] = setting(
        default_factory=dict, check=_dataset_options, flag="--dataset-option", action="append", metavar="KEY=VALUE",
        help="dataset option, e.g. difficult_positive=true (repeatable)")
    pretrained: str | None = setting(
        None, check=Optional(_weights),
        help="weights to start from: imagenet (timm:/torchvision: models, downloaded into their own cache) or a local "
        "state_dict file (torch.save(model.state_dict(), PATH)) or checkpoint; with --epochs 0 they are the "
        "classifier, imported as they are (every tensor must fit) to certify without training")
    mean: tuple[float, ...] | None = setting(
        None, check=Optional(_floats), type=float, nargs="+", metavar="M",
        help="normalisation mean inside the model, 1 or C values (default: ImageNet statistics for timm:/torchvision:, "
        "none for small_cnn and your own models)")
    std: tuple[float, ...] | None = setting(None, check=Optional(_floats), type=float, nargs="+", metavar="S", help=
                                            "normalisation std inside the model, 1 or C values (default: as --mean)")
    num_threads: int | None = setting(
        None, check=Optional(Interval(int, 1)), flag="--threads",
        help="CPU threads for torch while training (default: torch's; 1 is often fastest for small models on a busy "
        "machine)")
    num_workers: int = setting(0, check=Interval(int, 0), help="data loader workers for image files")
    objective: str = setting("gaussian", identity=True, check=OneOf(lambda: objective_names("classifier")),
                             legacy="gaussian", choices=Choices(lambda: objective_names("classifier")),
                             help="training objective (docs/training.md: what each optimises)")
    objective_options: dict[str, Any] = setting(
        default_factory=dict, identity=True, check=_objective_options, legacy={}, flag="--objective-option",
        action="append", metavar="KEY=VALUE",
        help="objective option, e.g. weight=5 copies=2 (consistency: copies, weight, entropy, warmup; vote: copies, "
        "weight, temperature, consistency, warmup) (repeatable)")

    recipe: str | None = setting(
        None, check=Optional(OneOf(lambda: RECIPES.names())), choices=Choices(lambda: RECIPES.names()),
        help="a registered recipe: the settings it names (printed in full, recorded in the checkpoint); every "
        "option given explicitly overrides its value")
    optimizer: str = setting("adam", identity=True, check=OneOf(("adam", "adamw")), legacy="adam",
                             choices=("adam", "adamw"), help="optimiser (adamw: decoupled weight decay)")
    weight_decay: float = setting(0.0, identity=True, check=Interval(float, 0.0), legacy=0.0,
                                  help="weight decay (not on biases and normalisation weights)")
    schedule: str = setting("constant", identity=True, check=OneOf(("constant", "cosine", "onecycle")),
                            legacy="constant", choices=("constant", "cosine", "onecycle"),
                            help="learning-rate schedule, stepped every optimiser step (lr is its peak)")
    warmup: float = setting(0.0, identity=True, check=Interval(float, 0.0, 1.0), legacy=0.0,
                            help="fraction of the optimiser steps the schedule warms up over")
    ema: float | None = setting(
        None, identity=True, check=Optional(Interval(float, 0.0, 1.0, open_low=True)), legacy=None, type=float,
        metavar="DECAY", help="keep an exponential moving average of the weights with this decay (e.g. 0.999; timm "
        "ModelEmaV3): evaluated each epoch and saved as the checkpoint's weights")
    augment: tuple[str, ...] = setting(
        (), identity=True, check=_augmentations, legacy=(), nargs="+", metavar="NAME",
        help="image augmentations before the noise: flip, cutout, randaugment (none by default; multidigits' "
        "digits should not be flipped)")
    precision: str = setting("fp32", check=OneOf(("fp32", "bf16", "fp16", "auto")),
                             choices=("fp32", "bf16", "fp16", "auto"),
                             help="training precision: autocast to bf16 or fp16 (fp16 with a gradient scaler); auto: "
                             "bf16 + channels_last where the device computes bf16 natively, else fp32")
    channels_last: bool = setting(False, check=_flag, action="store_true",
                                  help="channels_last memory format for the model and batches")
    compile: bool = setting(False, check=_flag, action="store_true", help="train through torch.compile")
    accumulate: int = setting(1, check=Interval(int, 1), metavar="K",
                              help="split each batch into K micro-batches, gradients accumulated (same result, less "
                              "memory)")

    def _check(self) -> None:
        if self.epochs == 0 and self.pretrained is None:
            raise ValueError("epochs: 0 epochs imports pretrained weights without training: pass pretrained "
                             "(--pretrained), the weights of the classifier to certify")

    @classmethod
    def resume_fields(cls) -> tuple[str, ...]:
        """The fields a resumed training must share with its checkpoint (its identity fields)."""
        return cls.identity_fields()


@dataclass(frozen=True, kw_only=True)
class DenoiserTrainSettings(Settings):
    """What :func:`multiguard.training.denoiser.train_denoiser` trains; the identity fields must match the checkpoint a
    resumed training continues. See :func:`multiguard.training.denoiser.train_denoiser` for each field."""

    option_names = False

    dataset: str | None = setting(None, identity=True, check=Optional(_dataset),
                                  help=lambda: f"{dataset_names()} (default: the --classifier's dataset, else "
                                  "multidigits)")
    data_root: str | None = setting(None, check=Optional(_path), help="dataset folder (default: the --classifier's)")
    sigma: float = setting(check=Interval(float, 0.0, open_low=True), identity=True, required=True,
                           help="the noise level to remove (pixels in [0, 1])")
    arch: str = setting("unet", identity=True, help=lambda: f"{', '.join(DENOISER_ARCHITECTURES.names())}, "
                        f"path/to/file.py:factory or package.module:factory ({DENOISER_ARCHITECTURES.help_text()})")
    arch_options: dict[str, int] = setting(
        default_factory=dict, identity=True, check=_arch_options, flag="--arch-option", action="append",
        metavar="KEY=VALUE",
        help=lambda: "options of a registered architecture: " + "; ".join(
            f"{e.name}: {', '.join(e.record.options) or 'none'}" for e in DENOISER_ARCHITECTURES.entries())
        + " (repeatable)")
    objective: str = setting("mse", identity=True, check=OneOf(lambda: objective_names("denoiser")),
                             choices=Choices(lambda: objective_names("denoiser")), help="training objective")
    classifier: str | None = setting(
        None, check=Optional(_path),
        help="classifier checkpoint: needed for stability; with mse its top-1 agreement is reported")
    pretrained: str | None = setting(None, check=Optional(_path),
                                     help="denoiser checkpoint to start from (same arch)")
    epochs: int = setting(4, check=Interval(int, 1), help="epochs (a resumed run trains the missing ones)")
    stability_epochs: int | None = setting(
        None, check=Optional(Interval(int, 0)), type=int,
        help=f"epochs of the stability objective through --classifier after the --epochs of --objective mse, in the "
        f"same command, with a fresh optimiser (default: {DEFAULT_STABILITY_EPOCHS} with a --classifier and "
        "--objective mse, else 0; 0: MSE only)")
    batch_size: int = setting(64, identity=True, check=Interval(int, 1), help="training batch size")
    lr: float = setting(1e-3, identity=True, check=Interval(float, 0.0, open_low=True),
                        help="Adam learning rate")
    clamp: bool = setting(False, identity=True, check=check_bool, action="store_true",
                          help="clamp noisy images to [0, 1] before the denoiser")
    seed: int = setting(0, identity=True, check=Interval(int, 0), help="seeds initialisation, data order and noise")
    image_size: int | None = setting(None, check=_SIZE, type=int,
                                     help="image side (default: the classifier's, else the dataset's)")
    train_size: int | None = setting(None, check=_SIZE, type=int, help="train on a random subset of this many images")
    test_size: int | None = setting(None, check=_SIZE, type=int, help="measure on a random subset of this many images")
    train_split: str | None = setting(None, help="training split (default: the dataset's)")
    test_split: str | None = setting(None, help="held-out split (default: the dataset's)")
    dataset_options: dict[str, Any] = setting(default_factory=dict, check=_dataset_options, flag="--dataset-option",
                                              action="append", metavar="KEY=VALUE", help="dataset option (repeatable)")
    num_threads: int | None = setting(None, check=Optional(Interval(int, 1)), flag="--threads", cli=False,
                                      help="CPU threads for torch while training (default: torch's)")
    precision: str = setting("fp32", check=OneOf(("fp32", "bf16", "fp16", "auto")),
                             choices=("fp32", "bf16", "fp16", "auto"),
                             help="training precision: autocast to bf16 or fp16 (fp16 with a gradient scaler); auto: "
                             "bf16 + channels_last where the device computes bf16 natively, else fp32")
    channels_last: bool = setting(False, check=check_bool, action="store_true",
                                  help="channels_last memory format for the denoiser and batches")

    def _check(self) -> None:
        if TRAINING_OBJECTIVES.record(self.objective).needs_classifier and self.classifier is None:
            raise ValueError(f"classifier: the {self.objective} objective needs a classifier checkpoint (--classifier)")
        if self.stability_epochs:
            if self.objective != "mse":
                raise ValueError(f"stability_epochs: stability epochs follow --objective mse, not {self.objective}")
            if self.classifier is None:
                raise ValueError("classifier: stability epochs train through a classifier checkpoint (--classifier)")
        self._check_arch_options()

    @property
    def stability_epochs_resolved(self) -> int:
        """The stability epochs this training runs: ``stability_epochs``, or by default
        :data:`DEFAULT_STABILITY_EPOCHS` after MSE with a classifier and 0 otherwise."""
        if self.stability_epochs is not None:
            return self.stability_epochs
        return DEFAULT_STABILITY_EPOCHS if self.objective == "mse" and self.classifier is not None else 0

    def _check_arch_options(self) -> None:
        """A registered architecture's ``--arch-option`` values, before any data is read or net built: known
        names, each at least the entry's ``minima``, and an image side (``--image-size`` or the dataset's
        default, when known) that is a multiple of what the options need (``image_size_multiple``)."""
        if self.arch not in DENOISER_ARCHITECTURES:
            return  # a factory: its own signature speaks when it is called
        record = DENOISER_ARCHITECTURES.record(self.arch)
        allowed = record.options
        unknown = sorted(set(self.arch_options) - set(allowed))
        if unknown:
            raise ValueError(f"arch-option: {self.arch!r} takes {list(allowed) or 'no options'}, got {unknown}")
        for key, least in record.minima.items():
            if key in self.arch_options and self.arch_options[key] < least:
                raise ValueError(f"arch-option {key}: {self.arch} needs {key} >= {least}, got {self.arch_options[key]}")
        multiple = record.image_size_multiple
        dataset = self.dataset if self.dataset is not None else "multidigits"
        side = self.image_size if self.image_size is not None else (
            DATASETS[dataset].image_size if self.classifier is None and dataset in DATASETS else None)
        if multiple is not None and side is not None and side % multiple(dict(self.arch_options)):
            raise ValueError(f"arch-option: {self.arch} with {dict(self.arch_options)} needs an image side that is a "
                             f"multiple of {multiple(dict(self.arch_options))}, the images are {side}x{side}; choose "
                             "smaller options (e.g. fewer levels) or another --image-size")
