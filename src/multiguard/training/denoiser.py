"""Training denoisers for denoised smoothing: MSE on noisy images, or stability through a frozen classifier.

Usage::

    from multiguard.training.denoiser import train_denoiser

    # the default recipe, one call: the unet denoiser, 4 MSE epochs, then 8 stability epochs through the classifier
    denoiser, meta = train_denoiser("multidigits", sigma=0.5, classifier="clean.pt", out="den.pt")

    # no labels: learn to remove N(0, 0.5^2) noise from multidigits images
    denoiser, meta = train_denoiser("multidigits", sigma=0.5, arch="dncnn", epochs=4, out="den-mse.pt")

    # stability (Salman et al., NeurIPS 2020): the frozen classifier on denoised noisy images should say what
    # it says on the clean images; usually started from the MSE denoiser
    denoiser, meta = train_denoiser("multidigits", sigma=0.5, objective="stability", classifier="clean.pt",
                                    pretrained="den-mse.pt", epochs=2, out="den-stab.pt")

Objectives, for a clean batch ``x`` and noise ``eps ~ N(0, sigma^2 I)`` fresh on every batch:

- ``mse``: ``mean((D(x + eps) - x)^2)`` over pixels. Needs no labels and no classifier.
- ``stability``: the Bernoulli KL divergence, averaged over labels, from ``sigmoid(f(x))`` to
  ``sigmoid(f(D(x + eps)))``, with f the frozen classifier (a :func:`multiguard.training.classifier.train` checkpoint).
  Needs no labels: the targets are the classifier's own outputs on the clean images.

After each epoch the held-out MSE ``mean((D(x + eps) - x)^2)`` on the test split with one fixed noise draw is
measured (beside ``noisy_mse``, the same for the noisy images themselves, i.e. no denoiser), and with a
classifier the top-1 agreement between ``f(D(x + eps))`` and ``f(x)``; a checkpoint is then written
atomically (see :func:`multiguard.common.torch_files.save_denoiser_checkpoint`). Randomness as in
:func:`multiguard.training.classifier.train`: initialisation, data order and noise come from generators seeded from
``(seed, epoch)``, the global RNG is left alone, and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from multiguard import __version__
from multiguard.common.devices import resolve_device
from multiguard.common.files import file_sha256
from multiguard.common.seeds import training_seed
from multiguard.common.torch_files import read_denoiser_checkpoint, save_denoiser_checkpoint
from multiguard.common.validation import RunMismatchError
from multiguard.denoising.denoisers import create_denoiser
from multiguard.models.checkpoints import load_checkpoint
from multiguard.training.engine import (
    Log,
    TrainingLoop,
    add_noise,
    base_and_indices,
    batches,
    finish_job,
    fork_rng,
    identity_now,
    load_splits,
    make_optimizer,
    path_or_none,
    resolve_precision,
    resume_from,
    settings_from,
    start_job,
    torch_threads,
)
from multiguard.training.objectives import ObjectiveContext, stability_loss
from multiguard.training.registries import TRAINING_OBJECTIVES, objective_names
from multiguard.training.settings import DEFAULT_STABILITY_EPOCHS, DenoiserTrainSettings

__all__ = ["OBJECTIVES", "DenoiserTrainSettings", "evaluate_denoiser", "stability_loss", "train_denoiser"]

OBJECTIVES = objective_names("denoiser")  # the built-in ones; TRAINING_OBJECTIVES holds any registered later

# Metadata keys, beyond the settings' identity fields, that a resume compares (they follow from the settings, the
# classifier and the data).
_DERIVED_RESUME_KEYS = ("classifier_sha256", "image_size", "in_channels", "train_split", "train_size")
_RESTORED_KEYS = ("epoch", "metrics", "train_seconds", "pretrained")


@torch.no_grad()
def evaluate_denoiser(
    denoiser: nn.Module,
    dataset: Dataset,
    sigma: float,
    *,
    classifier: nn.Module | None = None,
    clamp: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Held-out quality of ``denoiser`` on ``dataset`` with one fixed draw of ``N(0, sigma^2)`` noise per image.

    Returns ``{'mse': mean((D(x + eps) - x)^2), 'noisy_mse': mean((x + eps - x)^2)}`` over all pixels, plus
    ``'top1_agreement'`` (fraction of images where ``argmax f(D(x + eps)) == argmax f(x)``) with a classifier.
    The noise comes from a generator seeded from ``seed``; the modules are put in eval mode.
    """
    device = resolve_device(device)
    denoiser.eval()
    if classifier is not None:
        classifier.eval()
    generator = torch.Generator(device=device).manual_seed(training_seed(seed, "eval_noise"))
    squared, noisy_squared, agree, pixels, images_seen = 0.0, 0.0, 0, 0, 0
    for images, _ in batches(dataset, torch.arange(len(dataset)), batch_size, 0):
        images = images.to(device)
        noisy = add_noise(images, sigma, clamp, generator)
        restored = denoiser(noisy)
        squared += float(((restored - images) ** 2).sum())
        noisy_squared += float(((noisy - images) ** 2).sum())
        pixels += images.numel()
        images_seen += len(images)
        if classifier is not None:
            agree += int((classifier(restored).argmax(1) == classifier(images).argmax(1)).sum())
    result = {"mse": squared / pixels, "noisy_mse": noisy_squared / pixels}
    if classifier is not None:
        result["top1_agreement"] = agree / images_seen
    return result


def train_denoiser(
    settings: DenoiserTrainSettings | str | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    log: Log | None = None,
    **fields: Any,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a denoiser for noise ``N(0, sigma^2 I)`` on a dataset's images; save a checkpoint after each epoch.

    ``train_denoiser(DenoiserTrainSettings(sigma=0.5, ...), out=...)``, or as before
    ``train_denoiser("multidigits", sigma=0.5, ..., out=...)``: the first argument is the settings or the dataset's
    name, and ``fields`` are :class:`DenoiserTrainSettings` fields (given with settings, they replace those fields).

    Args (the settings' fields, then how to run):
        dataset: a name from ``multiguard.data.DATASETS``; only its images are used (no labels). ``None``: the
            classifier's dataset (with its data root and options) if there is a classifier, else multidigits.
        sigma: the noise level the denoiser removes (> 0); it can then serve only at this sigma.
        arch, arch_options: see :func:`multiguard.denoising.denoisers.create_denoiser` (``dncnn``, ``unet``, a factory).
        objective: a denoiser objective of :data:`multiguard.training.registries.TRAINING_OBJECTIVES`: ``'mse'`` or
            ``'stability'`` (needs ``classifier``); see the module docstring.
        classifier: path of a classifier checkpoint (:func:`multiguard.training.classifier.train`); required for
            ``stability``, optional for ``mse`` (then only measured: top-1 agreement). Its image size and
            channels set the denoiser's.
        pretrained: a denoiser checkpoint to start from (same arch and options), e.g. the MSE denoiser
            before stability training.
        epochs: epochs of ``objective`` (a resumed run trains the missing ones); batch_size, lr: Adam's.
        stability_epochs: epochs of the stability objective after the ``epochs`` of ``mse``, in the same call,
            with a fresh optimiser at the switch (``None``: ``DEFAULT_STABILITY_EPOCHS`` = 8 with a classifier
            and objective ``mse``, else 0). The metadata records ``stability_epochs`` and ``stability_after``;
            with a classifier it also holds ``check``: the classifier's top-1 agreement on the held-out noisy
            images with the denoiser and without it (``top1_agreement_without``), also logged at the end.
        clamp: clamp the noisy images to [0, 1] before the denoiser (as certification does with a
            classifier trained with ``clamp``).
        seed: seeds initialisation, data order and noise (and multidigits' composition).
        data_root, image_size, train_size, test_size, train_split, test_split, dataset_options, num_threads: as
            in :func:`multiguard.training.classifier.train`.
        out: checkpoint path, rewritten atomically after each epoch. An existing file there is never replaced
            unless asked: ``resume`` continues it (settings must match; ``epochs`` may be larger),
            ``overwrite`` replaces it; without either ValueError is raised before any work.
        device, progress, log: as in :func:`multiguard.training.classifier.train`.

    Returns:
        ``(denoiser, meta)``: the denoiser in eval mode ``(N, C, S, S) -> (N, C, S, S)`` and the metadata
        (``dataset, sigma, arch, arch_options, in_channels, image_size, objective, classifier,
        classifier_sha256, clamp, ..., epoch, metrics``; ``metrics`` one dict per epoch: ``epoch,
        train_loss, test_mse, noisy_mse[, top1_agreement], seconds``).
    """
    settings = settings_from(DenoiserTrainSettings, settings, "dataset", fields)
    with torch_threads(settings.num_threads):
        return _train_denoiser(settings, out=out, resume=resume, overwrite=overwrite, device=device,
                               progress=progress, log=log)


def _with_classifier(settings: DenoiserTrainSettings,
                     device: torch.device) -> tuple[DenoiserTrainSettings, nn.Module | None, dict[str, Any]]:
    """The settings completed from the classifier's checkpoint (image size; dataset, data root and options when
    not given), the frozen classifier and its metadata (``None, {}`` without one)."""
    s = settings
    if s.classifier is None:
        return (s.replace(dataset="multidigits") if s.dataset is None else s), None, {}
    frozen, meta = load_checkpoint(s.classifier, device=device)
    frozen.requires_grad_(False)
    changes: dict[str, Any] = {}
    if s.image_size is None:
        changes["image_size"] = int(meta["image_size"])
    if s.dataset is None:  # the images the classifier was trained on
        changes["dataset"] = meta["dataset"]
        changes["data_root"] = meta.get("data_root") if s.data_root is None else s.data_root
        changes["dataset_options"] = {**(meta.get("dataset_options") or {}), **s.dataset_options}
    return s.replace(**changes), frozen, meta


def denoiser_metadata(settings: DenoiserTrainSettings, train_set: Dataset, test_set: Dataset, train_split: str,
                      test_split: str) -> dict[str, Any]:
    """The denoiser checkpoint's metadata before training: the settings as recorded, and what follows from the
    data and the classifier."""
    s = settings
    base, _ = base_and_indices(train_set)
    return {
        "multiguard_version": __version__, "torch_version": str(torch.__version__), "dataset": s.dataset,
        "data_root": path_or_none(s.data_root), "dataset_options": dict(s.dataset_options),
        "train_split": train_split, "test_split": test_split, "train_size": len(train_set), "test_size": len(test_set),
        "in_channels": int(getattr(base, "in_channels", 3)), "image_size": int(base.image_size), "arch": s.arch,
        "arch_options": dict(s.arch_options), "sigma": s.sigma, "clamp": s.clamp, "objective": s.objective,
        "classifier": s.classifier, "classifier_sha256": None if s.classifier is None else file_sha256(s.classifier),
        "pretrained": s.pretrained, "lr": s.lr, "batch_size": s.batch_size, "seed": s.seed, "epochs": s.epochs,
        "epoch": 0, "metrics": [], "train_seconds": 0.0,
    }  # fmt: skip


def _build_denoiser(settings: DenoiserTrainSettings, meta: dict[str, Any], device: torch.device) -> nn.Module:
    """The denoiser to train: initialised from ``(seed, "init")``, or the ``pretrained`` one's weights."""
    s = settings
    with fork_rng(device):
        torch.manual_seed(training_seed(s.seed, "init"))
        denoiser = create_denoiser(s.arch, meta["in_channels"], meta["image_size"], **meta["arch_options"]).to(device)
    meta["arch"], meta["arch_options"] = denoiser.arch, dict(denoiser.arch_options)  # as recorded, defaults included
    if s.pretrained is not None:
        start = read_denoiser_checkpoint(s.pretrained)
        if (start["meta"]["arch"], start["meta"].get("arch_options") or {}) != (meta["arch"], meta["arch_options"]):
            raise ValueError(f"pretrained: {s.pretrained} is a {start['meta']['arch']} denoiser with options "
                             f"{start['meta'].get('arch_options')}, not {meta['arch']} with {meta['arch_options']}")
        denoiser.load_state_dict(start["state_dict"])
    return denoiser


def check_line(meta: dict[str, Any]) -> str:
    """The end-of-training check in words: how often the classifier's top-1 label on held-out noisy images equals
    its label on the clean images, without the denoiser and with it."""
    check = meta["check"]
    return (f"check on {check['images']} held-out images with noise sigma = {meta['sigma']:g}: the classifier's top-1 "
            f"label matches its clean-image label on {100 * check['top1_agreement_without']:.1f} % of them without "
            f"the denoiser, {100 * check['top1_agreement']:.1f} % with it (a noise-trained classifier's own noisy "
            "agreement is the bar to reach; if the gain is small, train longer or a larger --arch)")


def _describe(objective: str, classifier: nn.Module | None):
    def describe(epoch: int, epochs: int, loss: float, measures: dict[str, Any], seconds: float) -> str:
        agreement = f", top-1 agreement {measures['top1_agreement']:.3f}" if classifier is not None else ""
        return (f"epoch {epoch}/{epochs}: {objective} loss {loss:.4f}, test MSE {measures['test_mse']:.5f} "
                f"(noisy input {measures['noisy_mse']:.5f}){agreement}, {seconds:.1f} s")

    return describe


def _train_denoiser(settings: DenoiserTrainSettings, *, out: str | os.PathLike | None, resume: bool,
                    overwrite: bool, device: str | torch.device, progress: bool,
                    log: Log | None) -> tuple[nn.Module, dict[str, Any]]:
    dist, device, out_path, log = start_job(device, out, resume=resume, overwrite=overwrite, progress=progress,
                                            log=log, example="denoiser.pt")
    s, frozen, classifier_meta = _with_classifier(settings, device)
    train_set, test_set, train_split, test_split = load_splits(
        s.dataset, s.data_root, s.image_size, s.seed, s.train_split, s.test_split, s.train_size, s.test_size,
        dict(s.dataset_options))
    meta = denoiser_metadata(s, train_set, test_set, train_split, test_split)
    if frozen is not None:
        _check_classifier_fits(s, meta, classifier_meta)
    stability_epochs = s.stability_epochs_resolved
    if stability_epochs:  # the switch to stability is part of what a resumed training must continue
        meta["stability_epochs"], meta["stability_after"] = stability_epochs, s.epochs
        meta["epochs"] = s.epochs + stability_epochs
    denoiser = _build_denoiser(s, meta, device)
    optimizer = make_optimizer(denoiser.parameters(), s.lr)
    if resume and out_path is not None and out_path.exists():
        derived = (*_DERIVED_RESUME_KEYS, *(("stability_after",) if stability_epochs else ()))
        # an MSE-only checkpoint continues into stability epochs if it has not trained MSE past the switch
        resume_from(out_path, read_denoiser_checkpoint, meta, identity_now(s, meta, derived),
                    _RESTORED_KEYS, denoiser, optimizer, log, legacy={"stability_after": s.epochs})
        if stability_epochs and meta["epoch"] > s.epochs and meta["metrics"][s.epochs].get("objective") != "stability":
            raise RunMismatchError(f"resume: {out_path} trained {meta['epoch']} epochs of {s.objective}, past the "
                                   f"switch to stability after --epochs {s.epochs}")
    resumed_epoch = meta["epoch"]

    def evaluate(trained: nn.Module, objective_name: str) -> dict[str, Any]:
        quality = evaluate_denoiser(trained, test_set, s.sigma, classifier=frozen, clamp=s.clamp, seed=s.seed,
                                    device=device)
        return {"test_mse": quality["mse"], "noisy_mse": quality["noisy_mse"],
                **({"top1_agreement": quality["top1_agreement"]} if frozen is not None else {}),
                **({"objective": objective_name} if stability_epochs else {})}  # which stage, with two

    denoiser, forward, scaler, autocast_dtype, channels_last = _forward_setup(s, denoiser, device, dist)
    stages = [(s.objective, optimizer, s.epochs)]
    if stability_epochs:  # a fresh optimiser at the switch, as when started from an MSE denoiser (--pretrained)
        second = optimizer if resumed_epoch > s.epochs else make_optimizer(denoiser.parameters(), s.lr)
        stages.append(("stability", second, s.epochs + stability_epochs))
    for position, (objective_name, stage_optimizer, until) in enumerate(stages):
        if position < len(stages) - 1 and meta["epoch"] >= until:
            continue  # resumed past this stage (the last one refuses a checkpoint trained beyond the total)
        def save(meta: dict[str, Any], stage_optimizer: torch.optim.Optimizer = stage_optimizer) -> None:
            if out_path is not None:
                save_denoiser_checkpoint(out_path, denoiser, meta, stage_optimizer.state_dict())

        objective = TRAINING_OBJECTIVES.get(objective_name)(ObjectiveContext(s.sigma, s.clamp, classifier=frozen))
        loop = TrainingLoop(model=denoiser, optimizer=stage_optimizer, objective=objective, train_set=train_set,
                            batch_size=s.batch_size, seed=s.seed, device=device,
                            evaluate=lambda trained, name=objective_name: evaluate(trained, name),
                            describe=_describe(objective_name, frozen), save=save, progress=progress,
                            forward=forward, scaler=scaler, autocast_dtype=autocast_dtype,
                            channels_last=channels_last, dist=dist)
        loop.run(meta, until, log)
    meta["epochs"] = max(stages[-1][2], meta["epoch"])
    denoiser = denoiser.to(memory_format=torch.contiguous_format)
    _final_check(s, meta, frozen, test_set, device, log, rank_zero=dist is None or dist.rank == 0)
    finish_job(dist)
    return denoiser.eval(), meta


def _forward_setup(s: DenoiserTrainSettings, denoiser: nn.Module, device: torch.device, dist: Any) -> tuple[
        nn.Module, nn.Module, Any, Any, bool]:
    """The denoiser in its memory format, the module the loop calls (DDP under torchrun), the gradient scaler
    (fp16 only), the autocast dtype and whether channels_last is on."""
    autocast_dtype, implied_channels_last = resolve_precision(s.precision, device)
    channels_last = bool(s.channels_last or implied_channels_last)
    if channels_last:
        denoiser = denoiser.to(memory_format=torch.channels_last)
    forward: nn.Module = denoiser
    if dist is not None:
        from torch.nn.parallel import DistributedDataParallel

        forward = DistributedDataParallel(denoiser, device_ids=[device.index] if device.type == "cuda" else None)
    scaler = torch.amp.GradScaler(device.type) if autocast_dtype == torch.float16 else None
    return denoiser, forward, scaler, autocast_dtype, channels_last


def _check_classifier_fits(s: DenoiserTrainSettings, meta: dict[str, Any], classifier_meta: dict[str, Any]) -> None:
    """The --classifier takes the dataset's images (channels and size), else a ValueError naming both."""
    if (meta["image_size"], meta["in_channels"]) != (int(classifier_meta["image_size"]),
                                                     int(classifier_meta["in_channels"])):
        raise ValueError(f"classifier: {s.classifier} takes {classifier_meta['in_channels']}x"
                         f"{classifier_meta['image_size']}x{classifier_meta['image_size']} images, the dataset gives "
                         f"{meta['in_channels']}x{meta['image_size']}x{meta['image_size']}")


def _final_check(s: DenoiserTrainSettings, meta: dict[str, Any], frozen: nn.Module | None, test_set: Any,
                 device: torch.device, log: Log, *, rank_zero: bool) -> None:
    """After training: with a classifier, its top-1 agreement on the same noisy held-out images with and without
    the denoiser (into ``meta["check"]`` and one line); without one, a line on the default recipe."""
    if frozen is not None and rank_zero:
        without = evaluate_denoiser(nn.Identity(), test_set, s.sigma, classifier=frozen, clamp=s.clamp, seed=s.seed,
                                    device=device)["top1_agreement"]
        meta["check"] = {"top1_agreement": meta["metrics"][-1]["top1_agreement"], "top1_agreement_without": without,
                         "images": len(test_set)}
        log(check_line(meta))
    elif s.objective == "mse" and frozen is None:
        log(f"trained with MSE only (no --classifier); with --classifier CLASSIFIER the MSE epochs are followed by "
            f"{DEFAULT_STABILITY_EPOCHS} stability epochs through it (the default recipe, far better for that "
            "classifier)")
