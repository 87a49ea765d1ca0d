"""Training denoisers for denoised smoothing: MSE on noisy images, or stability through a frozen classifier.

Usage::

    from multiguard.denoise_train import train_denoiser

    # no labels: learn to remove N(0, 0.5^2) noise from multidigits images
    denoiser, meta = train_denoiser("multidigits", sigma=0.5, arch="dncnn", epochs=4, out="den-mse.pt")

    # stability (Salman et al., NeurIPS 2020): the frozen classifier on denoised noisy images should say what
    # it says on the clean images; usually started from the MSE denoiser
    denoiser, meta = train_denoiser("multidigits", sigma=0.5, objective="stability", classifier="clean.pt",
                                    pretrained="den-mse.pt", epochs=2, out="den-stab.pt")

Objectives, for a clean batch ``x`` and noise ``eps ~ N(0, sigma^2 I)`` fresh on every batch:

- ``mse``: ``mean((D(x + eps) - x)^2)`` over pixels. Needs no labels and no classifier.
- ``stability``: the Bernoulli KL divergence, averaged over labels, from ``sigmoid(f(x))`` to
  ``sigmoid(f(D(x + eps)))``, with f the frozen classifier (a :func:`multiguard.train.train` checkpoint).
  Needs no labels: the targets are the classifier's own outputs on the clean images.

After each epoch the held-out MSE ``mean((D(x + eps) - x)^2)`` on the test split with one fixed noise draw is
measured (beside ``noisy_mse``, the same for the noisy images themselves, i.e. no denoiser), and with a
classifier the top-1 agreement between ``f(D(x + eps))`` and ``f(x)``; a checkpoint is then written
atomically (see :func:`multiguard.denoisers.save_denoiser_checkpoint`). Randomness as in
:func:`multiguard.train.train`: initialisation, data order and noise come from generators seeded from
``(seed, epoch)``, the global RNG is left alone, and a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from . import __version__
from .data import DATASETS, get_dataset
from .denoisers import create_denoiser, read_denoiser_checkpoint, save_denoiser_checkpoint
from .devices import resolve_device
from .files import check_output_file, file_sha256
from .seeds import training_seed
from .train import _add_noise, _base_and_indices, _batches, _fork_rng, _subset, load_checkpoint
from .validation import RunMismatchError, check_bool, check_choice, check_float, check_int

__all__ = ["OBJECTIVES", "evaluate_denoiser", "train_denoiser"]

OBJECTIVES = ("mse", "stability")

# Settings a resumed run must share with the checkpoint it continues.
_RESUME_KEYS = (
    "dataset", "arch", "arch_options", "sigma", "clamp", "objective", "classifier_sha256", "lr", "batch_size",
    "seed", "image_size", "in_channels", "train_split", "train_size",
)  # fmt: skip


def stability_loss(noisy_logits: torch.Tensor, clean_logits: torch.Tensor) -> torch.Tensor:
    """Mean Bernoulli KL from ``sigmoid(clean_logits)`` to ``sigmoid(noisy_logits)``, both ``(B, c)``: 0 iff equal."""
    target = torch.sigmoid(clean_logits)
    cross = F.binary_cross_entropy_with_logits(noisy_logits, target)
    entropy = F.binary_cross_entropy_with_logits(clean_logits, target)
    return cross - entropy


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
    for images, _ in _batches(dataset, torch.arange(len(dataset)), batch_size, 0):
        images = images.to(device)
        noisy = _add_noise(images, sigma, clamp, generator)
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


def _splits(dataset: str, data_root: Any, image_size: int | None, seed: int, train_split: str | None,
            test_split: str | None, train_size: int | None, test_size: int | None,
            options: dict[str, Any]) -> tuple[Dataset, Dataset, str, str]:
    info = DATASETS[dataset]
    train_split = info.train_split if train_split is None else train_split
    test_split = info.test_split if test_split is None else test_split
    common = {"root": data_root, "image_size": image_size, "seed": seed, **options}
    if dataset == "multidigits":  # composed images: the size is a dataset option
        train_set = get_dataset(dataset, split=train_split, **common, **({"size": train_size} if train_size else {}))
        test_set = get_dataset(dataset, split=test_split, **common, **({"size": test_size} if test_size else {}))
    else:
        train_set = _subset(get_dataset(dataset, split=train_split, **common), train_size, seed, "subset_train")
        test_set = _subset(get_dataset(dataset, split=test_split, **common), test_size, seed, "subset_test")
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"dataset: {dataset} has an empty split ({len(train_set)} train, {len(test_set)} test)")
    return train_set, test_set, train_split, test_split


def train_denoiser(
    dataset: str | None = None,
    *,
    sigma: float,
    arch: str = "dncnn",
    arch_options: dict[str, int] | None = None,
    objective: str = "mse",
    classifier: str | os.PathLike | None = None,
    pretrained: str | os.PathLike | None = None,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 1e-3,
    clamp: bool = False,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    data_root: str | os.PathLike | None = None,
    image_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    num_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """Train a denoiser for noise ``N(0, sigma^2 I)`` on a dataset's images; save a checkpoint after each epoch.

    Args:
        dataset: a name from ``multiguard.data.DATASETS``; only its images are used (no labels). ``None``: the
            classifier's dataset (with its data root and options) if there is a classifier, else multidigits.
        sigma: the noise level the denoiser removes (> 0); it can then serve only at this sigma.
        arch, arch_options: see :func:`multiguard.denoisers.create_denoiser` (``dncnn``, ``unet``, a factory).
        objective: ``'mse'`` or ``'stability'`` (needs ``classifier``); see the module docstring.
        classifier: path of a classifier checkpoint (:func:`multiguard.train.train`); required for
            ``stability``, optional for ``mse`` (then only measured: top-1 agreement). Its image size and
            channels set the denoiser's.
        pretrained: a denoiser checkpoint to start from (same arch and options), e.g. the MSE denoiser
            before stability training.
        epochs: total epochs (a resumed run trains the missing ones); batch_size, lr: Adam's.
        clamp: clamp the noisy images to [0, 1] before the denoiser (as certification does with a
            classifier trained with ``clamp``).
        seed: seeds initialisation, data order and noise (and multidigits' composition).
        out: checkpoint path, rewritten atomically after each epoch. An existing file there is never replaced
            unless asked: ``resume`` continues it (settings must match; ``epochs`` may be larger),
            ``overwrite`` replaces it; without either ValueError is raised before any work.
        device, progress, data_root, image_size, train_size, test_size, train_split, test_split,
        dataset_options, num_threads, log: as in :func:`multiguard.train.train`.

    Returns:
        ``(denoiser, meta)``: the denoiser in eval mode ``(N, C, S, S) -> (N, C, S, S)`` and the metadata
        (``dataset, sigma, arch, arch_options, in_channels, image_size, objective, classifier,
        classifier_sha256, clamp, ..., epoch, metrics``; ``metrics`` one dict per epoch: ``epoch,
        train_loss, test_mse, noisy_mse[, top1_agreement], seconds``).
    """
    if num_threads is not None:
        check_int(num_threads, "num_threads", 1)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train_denoiser(**{k: v for k, v in locals().items() if k not in ("num_threads", "previous_threads")})
    finally:
        torch.set_num_threads(previous_threads)


def _train_denoiser(
    dataset: str | None, sigma: float, arch: str, arch_options: dict[str, int] | None, objective: str,
    classifier: str | os.PathLike | None, pretrained: str | os.PathLike | None, epochs: int, batch_size: int,
    lr: float, clamp: bool, seed: int, out: str | os.PathLike | None, resume: bool, overwrite: bool,
    device: str | torch.device,
    progress: bool, data_root: str | os.PathLike | None, image_size: int | None, train_size: int | None,
    test_size: int | None, train_split: str | None, test_split: str | None,
    dataset_options: dict[str, Any] | None, log: Callable[[str], None] | None,
) -> tuple[nn.Module, dict[str, Any]]:
    from tqdm.auto import tqdm

    if dataset is not None and dataset not in DATASETS:
        raise ValueError(f"dataset: unknown dataset {dataset!r}; known datasets are {sorted(DATASETS)}")
    sigma = check_float(sigma, "sigma", 0.0, low_open=True)
    objective = check_choice(objective, "objective", OBJECTIVES)
    epochs = check_int(epochs, "epochs", 1)
    batch_size = check_int(batch_size, "batch_size", 1)
    lr = check_float(lr, "lr", 0.0, low_open=True)
    clamp = check_bool(clamp, "clamp")
    seed = check_int(seed, "seed", 0)
    for value, name in ((train_size, "train_size"), (test_size, "test_size")):
        if value is not None:
            check_int(value, name, 1)
    if objective == "stability" and classifier is None:
        raise ValueError("classifier: the stability objective needs a classifier checkpoint (--classifier)")
    device = resolve_device(device)
    out_path = check_output_file(out, resume=resume, overwrite=overwrite, example="denoiser.pt")
    if log is None:
        log = tqdm.write if progress else (lambda line: None)

    frozen: nn.Module | None = None
    classifier_meta: dict[str, Any] = {}
    if classifier is not None:
        frozen, classifier_meta = load_checkpoint(classifier, device=device)
        frozen.requires_grad_(False)
        if image_size is None:
            image_size = int(classifier_meta["image_size"])
        if dataset is None:  # the images the classifier was trained on
            dataset = classifier_meta["dataset"]
            data_root = classifier_meta.get("data_root") if data_root is None else data_root
            dataset_options = {**(classifier_meta.get("dataset_options") or {}), **(dataset_options or {})}
    dataset = "multidigits" if dataset is None else dataset
    options = dict(dataset_options or {})
    train_set, test_set, train_split, test_split = _splits(
        dataset, data_root, image_size, seed, train_split, test_split, train_size, test_size, options)
    base, _ = _base_and_indices(train_set)
    in_channels, size = int(getattr(base, "in_channels", 3)), int(base.image_size)
    if frozen is not None and (size != int(classifier_meta["image_size"])
                               or in_channels != int(classifier_meta["in_channels"])):
        raise ValueError(f"classifier: {classifier} takes {classifier_meta['in_channels']}x"
                         f"{classifier_meta['image_size']}x{classifier_meta['image_size']} images, the dataset "
                         f"gives {in_channels}x{size}x{size}")

    meta: dict[str, Any] = {
        "multiguard_version": __version__,
        "torch_version": str(torch.__version__),
        "dataset": dataset,
        "data_root": None if data_root is None else os.fspath(data_root),
        "dataset_options": options,
        "train_split": train_split,
        "test_split": test_split,
        "train_size": len(train_set),
        "test_size": len(test_set),
        "in_channels": in_channels,
        "image_size": size,
        "arch": arch,
        "arch_options": dict(arch_options or {}),
        "sigma": sigma,
        "clamp": clamp,
        "objective": objective,
        "classifier": None if classifier is None else os.fspath(classifier),
        "classifier_sha256": None if classifier is None else file_sha256(classifier),
        "pretrained": None if pretrained is None else os.fspath(pretrained),
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "epochs": epochs,
        "epoch": 0,
        "metrics": [],
        "train_seconds": 0.0,
    }
    with _fork_rng(device):
        torch.manual_seed(training_seed(seed, "init"))
        denoiser = create_denoiser(arch, in_channels, size, **meta["arch_options"]).to(device)
    meta["arch"], meta["arch_options"] = denoiser.arch, dict(denoiser.arch_options)  # as recorded, defaults included
    if pretrained is not None:
        start = read_denoiser_checkpoint(pretrained)
        if (start["meta"]["arch"], start["meta"].get("arch_options") or {}) != (meta["arch"], meta["arch_options"]):
            raise ValueError(f"pretrained: {pretrained} is a {start['meta']['arch']} denoiser with options "
                             f"{start['meta'].get('arch_options')}, not {meta['arch']} with {meta['arch_options']}")
        denoiser.load_state_dict(start["state_dict"])
    optimizer = torch.optim.Adam(denoiser.parameters(), lr=lr)

    if resume and out_path is not None and out_path.exists():
        saved_checkpoint = read_denoiser_checkpoint(out_path)
        saved = saved_checkpoint["meta"]
        different = [f"{key}: saved {saved.get(key)!r}, now {meta[key]!r}"
                     for key in _RESUME_KEYS if saved.get(key) != meta[key]]
        if different:
            raise RunMismatchError(f"resume: {out_path} was trained with other settings ({'; '.join(different)})")
        denoiser.load_state_dict(saved_checkpoint["state_dict"])
        optimizer.load_state_dict(saved_checkpoint["optimizer"])
        for key in ("epoch", "metrics", "train_seconds", "pretrained"):
            meta[key] = saved[key]
        log(f"resuming {out_path} after epoch {meta['epoch']} of {epochs}")

    steps = math.ceil(len(train_set) / batch_size)
    for epoch in range(meta["epoch"] + 1, epochs + 1):
        started = time.perf_counter()
        denoiser.train()
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(
            training_seed(seed, "epoch", epoch)))
        noise_gen = torch.Generator(device=device).manual_seed(training_seed(seed, "epoch", epoch))
        total, count = 0.0, 0
        bar = tqdm(_batches(train_set, order, batch_size, 0), total=steps, desc=f"epoch {epoch}/{epochs}",
                   disable=not progress, leave=False)
        for images, _ in bar:
            images = images.to(device)
            restored = denoiser(_add_noise(images, sigma, clamp, noise_gen))
            if objective == "mse":
                loss = F.mse_loss(restored, images)
            else:
                with torch.no_grad():
                    clean_logits = frozen(images)
                loss = stability_loss(frozen(restored), clean_logits)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(images)
            count += len(images)
            bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
        bar.close()
        quality = evaluate_denoiser(denoiser, test_set, sigma, classifier=frozen, clamp=clamp, seed=seed,
                                    device=device)
        seconds = time.perf_counter() - started
        meta["metrics"].append({"epoch": epoch, "train_loss": total / count, "test_mse": quality["mse"],
                                "noisy_mse": quality["noisy_mse"], "seconds": seconds,
                                **({"top1_agreement": quality["top1_agreement"]} if frozen is not None else {})})
        meta["epoch"], meta["epochs"] = epoch, epochs
        meta["train_seconds"] += seconds
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        agreement = f", top-1 agreement {quality['top1_agreement']:.3f}" if frozen is not None else ""
        log(f"epoch {epoch}/{epochs}: {objective} loss {total / count:.4f}, test MSE {quality['mse']:.5f} "
            f"(noisy input {quality['noisy_mse']:.5f}){agreement}, {seconds:.1f} s")
        if out_path is not None:
            save_denoiser_checkpoint(out_path, denoiser, meta, optimizer.state_dict())
    meta["epochs"] = max(epochs, meta["epoch"])
    return denoiser.eval(), meta
