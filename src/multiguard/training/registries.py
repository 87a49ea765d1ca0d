"""The training doors, torch-free: training objectives, losses, augmentations and recipes, and the lookups
by name that build from them (:func:`make_loss`, :func:`compose_augmentations`).

Every built-in target is registered by its path (``"multiguard.training.losses:paper_asl"``) and imported on
first use, so that the command line lists the names without torch. This module imports nothing of the modules
its targets live in, and they import nothing of it (``tests/test_structure.py`` checks that no lazy target
imports its registering module back): the readers of these registries are this module,
:mod:`multiguard.training.settings` and the trainers.

Registering is one call each::

    TRAINING_OBJECTIVES.register("mine", "my_package.objectives:mine", record=ObjectiveRecord(trains="classifier"))
    LOSSES.register("focal", "my_package.losses:focal")            # focal() -> loss(logits, targets)
    AUGMENTATIONS.register("jitter", "my_package.augment:jitter")  # jitter() -> f(images (N, C, S, S))
    RECIPES.register("mine", {"epochs": 10, "lr": 0.01})          # TrainSettings fields and values
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multiguard.common.registry import Registry

__all__ = [
    "AUGMENTATIONS",
    "LOSSES",
    "RECIPES",
    "TRAINING_OBJECTIVES",
    "ObjectiveRecord",
    "check_loss",
    "compose_augmentations",
    "make_loss",
    "objective_names",
    "recipe_values",
]

TRAINS = ("classifier", "denoiser")


@dataclass(frozen=True)
class ObjectiveRecord:
    """What a training objective trains.

    Attributes:
        trains: ``"classifier"`` (a choice of ``train --objective``) or ``"denoiser"`` (of ``train-denoiser``).
        needs_classifier: the objective reads a frozen classifier (``train-denoiser --classifier``).
    """

    trains: str
    needs_classifier: bool = False

    def __post_init__(self) -> None:
        if self.trains not in TRAINS:
            raise ValueError(f"trains must be 'classifier' or 'denoiser', got {self.trains!r}")


#: Training objectives by name (``--objective``): a factory ``factory(context:
#: multiguard.training.objectives.ObjectiveContext) -> step`` with ``step(model, images, labels, noise_generator)
#: -> (loss, outputs)``, and an :class:`ObjectiveRecord`.
TRAINING_OBJECTIVES: Registry[Callable[..., Any], ObjectiveRecord] = Registry(
    "training objective", argument="--objective", record=ObjectiveRecord)
TRAINING_OBJECTIVES.register("gaussian", "multiguard.training.objectives:gaussian",
                             record=ObjectiveRecord(trains="classifier"),
                             help="the loss on inputs with fresh Gaussian noise on every batch")
TRAINING_OBJECTIVES.register("consistency", "multiguard.training.objectives:consistency",
                             record=ObjectiveRecord(trains="classifier"),
                             help="the loss on m noisy copies plus lambda times their per-label disagreement "
                             "(options copies, weight, entropy, warmup)")
TRAINING_OBJECTIVES.register("vote", "multiguard.training.objectives:vote", record=ObjectiveRecord(trains="classifier"),
                             help="the loss on m noisy copies plus lambda times the cross-entropy of their soft "
                             "top-1 vote on the label set (options copies, weight, temperature, consistency, warmup)")
TRAINING_OBJECTIVES.register("mse", "multiguard.training.objectives:mse", record=ObjectiveRecord(trains="denoiser"),
                             help="mean squared error between the denoised noisy image and the clean one")
TRAINING_OBJECTIVES.register("stability", "multiguard.training.objectives:stability",
                             record=ObjectiveRecord(trains="denoiser", needs_classifier=True),
                             help="the frozen classifier says on denoised noisy images what it says on clean ones")


#: Multi-label losses by name (``--loss``): a factory ``factory() -> loss`` with ``loss(logits (N, c), targets
#: (N, c) in {0, 1}) -> scalar`` (a ``torch.nn.Module``).
LOSSES: Registry[Callable[[], Any], None] = Registry("loss", argument="--loss")
LOSSES.register("asl", "multiguard.training.losses:paper_asl",
                help="asymmetric loss, the paper's (gamma+ 0, gamma- 4, clip 0.05)")
LOSSES.register("bce", "multiguard.training.losses:bce", help="binary cross-entropy")


#: Training augmentations by name (``--augment``): a factory ``factory() -> augment`` with ``augment(images (N, C,
#: S, S) in [0, 1]) -> images`` of the same shape, applied to each clean batch before the noise.
AUGMENTATIONS: Registry[Callable[[], Callable[[Any], Any]], None] = Registry("augmentation", argument="--augment")
AUGMENTATIONS.register("flip", "multiguard.training.augment:flip", help="horizontal flip with probability 1/2")
AUGMENTATIONS.register("cutout", "multiguard.training.augment:cutout",
                       help="cutout: one random rectangle (up to half the side) set to random noise, probability 1/2 "
                       "(torchvision RandomErasing)")
AUGMENTATIONS.register("randaugment", "multiguard.training.augment:randaugment",
                       help="RandAugment, 2 operations of magnitude 9 (torchvision)")

# The paper's base classifiers as ASL trains them (Ridnik et al. 2021, section on MS-COCO training: TResNet-L
# pretrained on ImageNet, 448 px, Adam with true weight decay 1e-4, one-cycle up to lr 2e-4, batch 128, EMA of the
# weights, cutout + RandAugment, mixed precision, ASL gamma- 4, gamma+ 0, clip 0.05) and MultiGuard's noise.
_ASL_RECIPE = {
    "arch": "timm:tresnet_l", "pretrained": "imagenet", "image_size": 448, "loss": "asl", "sigma": 0.5,
    "batch_size": 128, "lr": 2e-4, "optimizer": "adamw", "weight_decay": 1e-4, "schedule": "onecycle",
    "warmup": 0.2, "ema": 0.9997, "augment": ("flip", "cutout", "randaugment"), "precision": "auto",
    "channels_last": True,
}  # fmt: skip

#: Named training recipes (``--recipe``): a mapping of :class:`multiguard.training.settings.TrainSettings` fields
#: to the values the recipe sets (explicit options win; docs/recipes.md).
RECIPES: Registry[Mapping[str, Any], None] = Registry("recipe", argument="--recipe")
RECIPES.register("asl-voc2007", {**_ASL_RECIPE, "dataset": "voc2007", "epochs": 40},
                 help="the paper's VOC 2007 classifier (5,011 trainval images), ASL's recipe")
RECIPES.register("asl-coco2014", {**_ASL_RECIPE, "dataset": "coco2014", "epochs": 40},
                 help="the paper's MS-COCO 2014 classifier (82,081 train images), ASL's recipe")
RECIPES.register("asl-nuswide", {**_ASL_RECIPE, "dataset": "nuswide", "epochs": 40},
                 help="the paper's NUS-WIDE classifier (about 154,000 train images), ASL's recipe")


def recipe_values(name: str) -> dict[str, Any]:
    """The settings the recipe ``name`` sets (a copy); UnknownNameError naming the recipes otherwise."""
    return dict(RECIPES.get(name))


def objective_names(trains: str) -> tuple[str, ...]:
    """The registered objectives that train a ``trains`` (``"classifier"`` or ``"denoiser"``)."""
    return tuple(e.name for e in TRAINING_OBJECTIVES.entries() if e.record.trains == trains)


def check_loss(value: Any, name: str = "loss") -> str:
    """``value`` if it names a registered loss; ``ValueError("loss must be 'asl' or 'bce', got ...")`` otherwise."""
    if value not in LOSSES:
        quoted = [repr(n) for n in LOSSES.names()]
        allowed = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def make_loss(name: str = "asl") -> Any:
    """The loss registered as ``name`` in :data:`LOSSES`, built: ``'asl'`` (AsymmetricLoss(0, 4, 0.05) as in the
    paper) or ``'bce'`` (binary cross-entropy, the same reduction: summed over labels, averaged over inputs);
    ValueError naming the losses otherwise."""
    return LOSSES.get(check_loss(name))()


def compose_augmentations(names: Sequence[str]) -> Callable[[Any], Any] | None:
    """The registered augmentations ``names`` applied in order to a batch ``(N, C, S, S)`` (``None`` if there are
    none)."""
    steps = [AUGMENTATIONS.get(name)() for name in names]
    if not steps:
        return None

    def apply(images: Any) -> Any:
        for step in steps:
            images = step(images)
        return images

    return apply
