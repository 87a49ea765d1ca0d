"""Noise-augmented training of base multi-label classifiers, and their checkpoints.

Usage::

    from multiguard.training.classifier import train; from multiguard.models.checkpoints import load_checkpoint

    # small_cnn on the embedded multidigits dataset, Gaussian noise sigma = 0.5 on every batch
    model, meta = train("multidigits", arch="small_cnn", sigma=0.5, epochs=8, out="runs/md.pt")
    print(meta["metrics"][-1])        # {'epoch': 8, 'train_loss': ..., 'clean_map': ..., 'noisy_map': ...}

    # later, or in another process: the checkpoint alone rebuilds the model (eval mode)
    model, meta = load_checkpoint("runs/md.pt")
    logits = model(images)            # images (N, C, S, S) in [0, 1] -> logits (N, c)

    # continue an interrupted run (or extend it: a larger `epochs`) from its last saved epoch
    train("multidigits", sigma=0.5, epochs=12, out="runs/md.pt", resume=True)

Every training batch gets fresh noise ``N(0, sigma^2 I)`` in [0, 1] pixel space (optionally
clamped back to [0, 1]); the loss is ASL (gamma+ = 0, gamma- = 4, m = 0.05) or BCE, the
optimiser Adam. After each epoch the mean average precision (scikit-learn's
``average_precision_score``, macro over the classes with at least one positive) is measured
on the clean test set and on the test set with one fixed draw of the same noise, and a
checkpoint is written atomically (temporary file in the same folder, then renamed).

Randomness: the model's initialisation, the order of the data and the noise of epoch e all
come from generators seeded from ``(seed, e)``; the global RNG state is left as it was. A run
is deterministic for a seed on a given machine, and a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import os
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from torch.utils.data import Dataset

from multiguard import __version__
from multiguard.common.devices import resolve_device
from multiguard.common.seeds import training_seed
from multiguard.common.torch_files import CHECKPOINT_FORMAT, CHECKPOINT_MARKER, read_checkpoint, write_checkpoint
from multiguard.models.architectures import ARCH_PREFIXES, arch_prefix
from multiguard.models.checkpoints import load_checkpoint
from multiguard.models.factory import create_model, looks_like_probabilities
from multiguard.training.engine import (
    Log,
    NonFiniteOutputsError,
    TrainingLoop,
    add_noise,
    base_and_indices,
    batches,
    finish_job,
    fork_rng,
    global_batches,
    identity_now,
    legacy_values,
    load_splits,
    make_optimizer,
    make_scheduler,
    resolve_precision,
    resume_from,
    settings_from,
    start_job,
    torch_threads,
)
from multiguard.training.objectives import ObjectiveContext, TrainingClock
from multiguard.training.registries import TRAINING_OBJECTIVES, compose_augmentations, make_loss
from multiguard.training.settings import TrainSettings, with_recipe

__all__ = ["CHECKPOINT_MARKER", "TrainSettings", "evaluate_map", "load_checkpoint", "read_checkpoint", "train"]

# Metadata keys, beyond the settings' identity fields, that a resume compares: they follow from the settings and
# the data (a resumed run must see the same split and classes).
_DERIVED_RESUME_KEYS = ("image_size", "train_split", "train_size", "num_classes")
# Metadata keys a resumed run takes from its checkpoint.
_RESTORED_KEYS = ("epoch", "metrics", "train_seconds", "mean", "std", "pretrained", "updated")


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _normalisation_origin(arch: str, mean: Any, std: Any) -> str:
    if mean is not None or std is not None:
        return "given"
    prefix = arch_prefix(arch)
    if prefix is not None and ARCH_PREFIXES.record(prefix).imagenet:
        return f"the ImageNet statistics of {prefix}; --mean/--std choose others"
    return "none: the default for small_cnn and your own models; --mean/--std choose others"


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Macro mean of scikit-learn's average precision over the classes with at least one positive.

    Shapes: ``labels`` ``(N, c)`` in {0, 1}, ``scores`` ``(N, c)``. NaN if no class has a positive; scores that
    are NaN or infinite raise :class:`multiguard.training.engine.NonFiniteOutputsError` saying how many.
    """
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        raise NonFiniteOutputsError(f"the model's outputs hold NaN or infinity ({bad} of {scores.size} scores on "
                                    "the test split)")
    has_positive = labels.sum(axis=0) > 0
    if not has_positive.any():
        return float("nan")
    return float(average_precision_score(labels[:, has_positive], scores[:, has_positive], average="macro"))


@torch.no_grad()
def evaluate_map(
    model: nn.Module,
    dataset: Dataset,
    sigma: float = 0.0,
    clamp: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
) -> float:
    """mAP of ``model`` on ``dataset``, with one draw of ``N(0, sigma^2)`` noise per image if sigma > 0.

    The noise comes from a generator seeded from ``seed``; the model is put in eval mode.
    """
    device = resolve_device(device)
    model.eval()
    generator = torch.Generator(device=device).manual_seed(training_seed(seed, "eval_noise"))
    order = torch.arange(len(dataset))
    all_scores, all_labels = [], []
    for images, labels in batches(dataset, order, batch_size, num_workers):
        images = add_noise(images.to(device), sigma, clamp, generator)
        all_scores.append(model(images).float().cpu())
        all_labels.append(labels.cpu())
    return mean_average_precision(torch.cat(all_labels).numpy(), torch.cat(all_scores).numpy())


def _evaluate_clean_and_noisy(model: nn.Module, test_set: Dataset, sigma: float, clamp: bool, seed: int,
                              device: torch.device, num_workers: int) -> dict[str, float]:
    """``{clean_map, noisy_map}``; without noise (sigma = 0) the two are the same number, measured once."""
    clean_map = evaluate_map(model, test_set, 0.0, clamp, seed, device=device, num_workers=num_workers)
    if sigma == 0:
        return {"clean_map": clean_map, "noisy_map": clean_map}
    noisy_map = evaluate_map(model, test_set, sigma, clamp, seed, device=device, num_workers=num_workers)
    return {"clean_map": clean_map, "noisy_map": noisy_map}


def train(
    settings: TrainSettings | str = "multidigits",
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Log | None = None,
    **fields: Any,
) -> tuple[nn.Module, dict]:
    """Train a base classifier on inputs carrying Gaussian noise; save a checkpoint after each epoch.

    ``train(TrainSettings(...), out=...)``, or as before ``train("multidigits", sigma=0.5, ..., out=...)``: the
    first argument is the settings or the dataset's name, and ``fields`` are :class:`TrainSettings` fields (given
    with settings, they replace those fields).

    Args (the settings' fields, then how to run):
        dataset: a name from ``multiguard.data.DATASETS`` (``multidigits``, ``voc2007``, ``coco2014``,
            ``nuswide``, ``csv``).
        data_root: the dataset folder (not needed for multidigits); recorded as an absolute path.
        arch: see :func:`multiguard.models.factory.create_model` (``small_cnn``, ``timm:<name>``, ...).
        sigma: standard deviation of the training noise, in [0, 1] pixel units (0: no noise: a clean
            classifier, to certify behind a denoiser, see :mod:`multiguard.denoising.denoisers`).
        epochs: total number of epochs (a resumed run trains the epochs still missing). 0: no training, the
            ``pretrained`` weights (which must then fit the model exactly) are measured once and saved as a
            checkpoint (one metrics entry with epoch 0 and ``train_loss`` None), ready to certify.
        batch_size, lr: Adam's batch size and learning rate (paper: 32 and 1e-3).
        loss: ``'asl'`` (gamma+ 0, gamma- 4, clip 0.05) or ``'bce'``.
        clamp: clamp noisy inputs to [0, 1] (training and noisy evaluation).
        seed: seeds everything (initialisation, data order, noise; multidigits' composition).
        image_size: side S of the images; ``None``: the dataset's default (32 multidigits, 224 for the paper's
            datasets, from the images for csv).
        train_size, test_size: number of training / test images (multidigits: composed images,
            defaults 8000 / 2000; others: a seeded random subset; ``None``: all).
        train_split, test_split: split names; ``None``: the dataset's (e.g. trainval / test for VOC).
        dataset_options: extra options for :func:`multiguard.data.get_dataset`
            (e.g. ``{'difficult_positive': True}``).
        pretrained, mean, std: passed to :func:`multiguard.models.factory.create_model`.
        num_threads: CPU threads torch uses while training (``torch.set_num_threads``, restored
            afterwards); ``None`` leaves torch's setting. On a busy 2-core machine 1 thread is much
            faster for small models and batches (see docs/training.md).
        num_workers: DataLoader workers for file-based datasets.
        objective: a classifier objective of :data:`multiguard.training.registries.TRAINING_OBJECTIVES`
            (``gaussian``).
        out: checkpoint path, rewritten atomically after each epoch; ``None``: no file. An existing file
            there is never replaced unless asked: ``resume`` continues it, ``overwrite`` replaces it, and
            without either ValueError is raised before any work.
        resume: continue from the checkpoint at ``out`` (from its last completed epoch) if it exists;
            its settings (the identity fields: dataset, arch, sigma, clamp, loss, lr, batch_size, seed; and
            image_size, split, train_size, classes) must match, ``epochs`` may be larger. Starts afresh if
            there is no file.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ... or ``'auto'``.
        progress: show tqdm progress bars and one line per epoch.
        log: called with one line per epoch (default: tqdm.write when ``progress``, else silent).

    Returns:
        ``(model, meta)``: the trained model (eval mode) and the checkpoint metadata, a dict with
        ``format_version, multiguard_version, torch_version, dataset, data_root, dataset_options,
        train_split, test_split, train_size, test_size, class_names, num_classes, arch, image_size,
        in_channels, mean, std, pretrained, sigma, clamp, loss, lr, batch_size, seed, epochs, epoch,
        metrics, train_seconds, updated``; ``metrics`` a list with one dict per epoch: ``epoch,
        train_loss, clean_map, noisy_map, seconds``.
    """
    recipe: dict[str, Any] = {}
    if isinstance(settings, TrainSettings):
        if fields.get("recipe", settings.recipe):
            # a settings value: the fields it sets away from their defaults count as given
            explicit = {**_non_default_fields(settings), **fields}
            fields, recipe = with_recipe({**explicit, "recipe": fields.get("recipe", settings.recipe)})
            settings = TrainSettings(**fields)
            fields = {}
    elif fields.get("recipe"):
        # the dataset argument counts as given where it is not the default (a recipe names its dataset)
        explicit = {**({"dataset": settings} if settings != "multidigits" else {}), **fields}
        fields, recipe = with_recipe(explicit)
        settings = fields.pop("dataset", "multidigits")
    settings = settings_from(TrainSettings, settings, "dataset", fields)
    with torch_threads(settings.num_threads):
        return _train(settings, out=out, resume=resume, overwrite=overwrite, device=device, progress=progress, log=log,
                      recipe=recipe)


def checkpoint_metadata(settings: TrainSettings, train_set: Dataset, test_set: Dataset, train_split: str,
                        test_split: str) -> dict[str, Any]:
    """The checkpoint's metadata before training: the settings as recorded, and what follows from the data."""
    s = settings
    base, _ = base_and_indices(train_set)
    class_names = list(base.class_names)
    return {
        "format_version": CHECKPOINT_FORMAT, "multiguard_version": __version__, "torch_version": str(torch.__version__),
        "dataset": s.dataset, "data_root": s.data_root, "dataset_options": dict(s.dataset_options),
        "train_split": train_split, "test_split": test_split, "train_size": len(train_set), "test_size": len(test_set),
        "class_names": class_names, "num_classes": len(class_names), "arch": s.arch,
        "image_size": int(base.image_size), "in_channels": int(getattr(base, "in_channels", 3)),
        "pretrained": s.pretrained, "sigma": s.sigma, "clamp": bool(s.clamp), "loss": s.loss, "objective": s.objective,
        "objective_options": dict(s.objective_options), "lr": s.lr,
        "batch_size": s.batch_size, "seed": s.seed, "epochs": s.epochs, "epoch": 0, "metrics": [],
        "train_seconds": 0.0, "optimizer": s.optimizer, "weight_decay": s.weight_decay, "schedule": s.schedule,
        "warmup": s.warmup, "ema": s.ema, "augment": list(s.augment), "precision": s.precision,
        "channels_last": bool(s.channels_last), "compile": bool(s.compile), "accumulate": s.accumulate,
        "weights": "trained" if s.ema is None else "ema", "recipe": {},
    }  # fmt: skip


def _build_model(settings: TrainSettings, meta: dict[str, Any], device: torch.device) -> nn.Module:
    """The model to train, initialised from ``(seed, "init")``; ``meta`` records how to rebuild it."""
    s = settings
    with fork_rng(device):
        torch.manual_seed(training_seed(s.seed, "init"))
        model = create_model(s.arch, meta["num_classes"], meta["image_size"], meta["in_channels"],
                             pretrained=s.pretrained, mean=s.mean, std=s.std, strict=s.epochs == 0).to(device)
    meta["arch"] = model.arch  # what rebuilds it from any folder (a factory file's absolute path)
    if getattr(model, "arch_file_sha256", None):  # a file factory: its code is part of the model
        meta["arch_file_sha256"] = model.arch_file_sha256
    meta["pretrained"] = model.pretrained
    meta["mean"], meta["std"] = model.mean, model.std
    return model


def _warn_if_probabilities(arch: str):
    def check(model: nn.Module, logits: torch.Tensor) -> None:
        # After a first epoch, not at initialisation: a fresh logits model with small weights can put every
        # output of a batch in [0, 1] by chance; once trained on labels, logits of absent labels go negative.
        reason = looks_like_probabilities(model, logits)
        if reason:
            warnings.warn(
                f"the model {arch} seems to output probabilities, not logits ({reason}); MultiGuard's "
                "losses apply the sigmoid themselves: return the scores before any sigmoid",
                UserWarning, stacklevel=5)

    return check


def _describe(sigma: float):
    def describe(epoch: int, epochs: int, loss: float, measures: dict[str, Any], seconds: float) -> str:
        return (f"epoch {epoch}/{epochs}: loss {loss:.4f}, test mAP clean {measures['clean_map']:.4f}"
                + (f", noisy (sigma={sigma:g}) {measures['noisy_map']:.4f}" if sigma > 0 else " (no noise)")
                + f", {seconds:.1f} s")

    return describe


def _train(settings: TrainSettings, *, out: str | os.PathLike | None, resume: bool, overwrite: bool,
           device: str | torch.device, progress: bool, log: Log | None,
           recipe: dict[str, Any] | None = None) -> tuple[nn.Module, dict]:
    s = settings
    dist, device, out_path, log = start_job(device, out, resume=resume, overwrite=overwrite, progress=progress,
                                            log=log, example="model.pt")
    if recipe:
        _announce_recipe(recipe, log)
    train_set, test_set, train_split, test_split = load_splits(
        s.dataset, s.data_root, s.image_size, s.seed, s.train_split, s.test_split, s.train_size, s.test_size,
        dict(s.dataset_options))
    meta = checkpoint_metadata(s, train_set, test_set, train_split, test_split)
    meta["recipe"] = dict(recipe or {})
    meta["world_size"] = 1 if dist is None else dist.world_size
    model = _build_model(s, meta, device)
    autocast_dtype, implied_channels_last = resolve_precision(s.precision, device)
    channels_last = s.channels_last or implied_channels_last
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, s.lr, s.optimizer, s.weight_decay)
    world = 1 if dist is None else dist.world_size
    steps_per_epoch = len(global_batches(torch.arange(len(train_set)), s.batch_size, 0, world))
    scheduler = (None if s.schedule == "constant" and s.warmup == 0
                 else make_scheduler(optimizer, s.schedule, max(1, s.epochs) * steps_per_epoch, s.warmup))
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    ema = None
    if s.ema is not None:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=s.ema)

    def restore(state: dict[str, Any]) -> None:
        for name, part in (("scheduler", scheduler), ("scaler", scaler), ("ema", ema)):
            if part is not None and name in state:
                (part.module if name == "ema" else part).load_state_dict(state[name])

    if resume and out_path is not None and out_path.exists():
        resume_from(out_path, read_checkpoint, meta, identity_now(s, meta, _DERIVED_RESUME_KEYS), _RESTORED_KEYS,
                    model, optimizer, log, legacy_values(TrainSettings), restore=restore)
    _announce(s, meta, base_and_indices(train_set)[0], log)

    forward = _forward_module(model, dist, device, s.compile)

    def evaluate(trained: nn.Module) -> dict[str, float]:
        return _evaluate_clean_and_noisy(trained, test_set, s.sigma, s.clamp, s.seed, device, s.num_workers)

    def save(meta: dict[str, Any]) -> None:
        _save_training(out_path, model, ema, optimizer, scheduler, scaler, meta)

    clock = TrainingClock()
    objective = TRAINING_OBJECTIVES.get(s.objective)(ObjectiveContext(
        s.sigma, s.clamp, criterion=make_loss(s.loss), options=dict(s.objective_options), clock=clock))
    loop = TrainingLoop(model=model, optimizer=optimizer, objective=objective, train_set=train_set,
                        batch_size=s.batch_size, seed=s.seed, device=device, evaluate=evaluate,
                        describe=_describe(s.sigma), save=save, check_outputs=_warn_if_probabilities(s.arch),
                        num_workers=s.num_workers, progress=progress, clock=clock, forward=forward, dist=dist,
                        scheduler=scheduler, scaler=scaler, ema=ema, autocast_dtype=autocast_dtype,
                        channels_last=channels_last, accumulate=s.accumulate, augment=compose_augmentations(s.augment))
    loop.run(meta, s.epochs, log)
    model = (model if ema is None else ema.module).to(memory_format=torch.contiguous_format)  # the EMA is served
    if s.epochs == 0 and not meta["metrics"]:  # imported weights: measured once, saved as a checkpoint
        _measure_imported(s, model, meta, evaluate, save, log)
    meta["epochs"] = max(s.epochs, meta["epoch"])
    model.class_names = list(meta["class_names"])
    finish_job(dist)
    return model.eval(), meta


def _save_training(out_path: Any, model: nn.Module, ema: Any, optimizer: Any, scheduler: Any, scaler: Any,
                   meta: dict[str, Any]) -> None:
    """Write the checkpoint (the EMA weights served where there is an EMA) with the state a resume restores;
    nothing without ``out_path``."""
    if out_path is not None:
        served = model if ema is None else ema.module
        state: dict[str, Any] = {}
        if ema is not None:
            state["model"], state["ema"] = model.state_dict(), ema.module.state_dict()
        if scheduler is not None:
            state["scheduler"] = scheduler.state_dict()
        if scaler is not None:
            state["scaler"] = scaler.state_dict()
        write_checkpoint(out_path, served, meta, optimizer.state_dict(), state or None)

def _forward_module(model: nn.Module, dist: Any, device: torch.device, compile: bool) -> nn.Module:
    """The module the training loop calls: ``model``, wrapped for distributed training and compiled as asked."""
    forward: nn.Module = model
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if compile:
        forward = torch.compile(forward)
    return forward


def _measure_imported(s: TrainSettings, model: nn.Module, meta: dict[str, Any],
                      evaluate: Callable[[nn.Module], dict[str, float]], save: Callable[[dict[str, Any]], None],
                      log: Log) -> None:
    """Imported weights without training: measured once, logged, and saved as a checkpoint."""
    started = time.perf_counter()
    measures = evaluate(model)
    meta["metrics"].append({"epoch": 0, "train_loss": None, **measures, "seconds": time.perf_counter() - started})
    meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    log(f"imported {s.pretrained} without training: test mAP clean {measures['clean_map']:.4f}"
        + (f", noisy (sigma={s.sigma:g}) {measures['noisy_map']:.4f}" if s.sigma > 0 else ""))
    save(meta)


def _non_default_fields(settings: TrainSettings) -> dict[str, Any]:
    defaults = TrainSettings()
    return {f.name: getattr(settings, f.name) for f in dataclasses.fields(TrainSettings)
            if getattr(settings, f.name) != getattr(defaults, f.name)}


def _announce_recipe(recipe: dict[str, Any], log: Log) -> None:
    """Print every value the recipe sets, and which explicit options replaced which of them."""
    values = ", ".join(f"{key} {_shown_value(value)}" for key, value in recipe["values"].items())
    log(f"recipe {recipe['name']}: {values}")
    for key, (was, now) in recipe["overridden"].items():
        log(f"  {key}: {_shown_value(now)} (given; the recipe says {_shown_value(was)})")


def _shown_value(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _announce(settings: TrainSettings, meta: dict[str, Any], base_train: Dataset, log: Log) -> None:
    """On a fresh start (a resumed run said it the first time): the dataset's note and the normalisation."""
    if meta["epoch"] != 0:
        return
    note = getattr(base_train, "image_size_note", None)
    if note:
        log(f"{settings.dataset}: {note}")
    log(f"normalisation inside the model: mean {_short(meta['mean'])}, std {_short(meta['std'])} "
        f"({_normalisation_origin(settings.arch, settings.mean, settings.std)}; recorded in the checkpoint)")
