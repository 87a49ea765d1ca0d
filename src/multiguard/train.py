"""Noise-augmented training of base multi-label classifiers, and their checkpoints.

Usage::

    from multiguard.train import train, load_checkpoint

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

import io
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import average_precision_score
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from . import __version__
from .checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_MARKER, load_checkpoint, read_checkpoint
from .data import DATASETS, get_dataset
from .devices import resolve_device
from .files import atomic_write_bytes, check_output_file
from .losses import make_loss
from .models import create_model, looks_like_probabilities
from .seeds import training_seed
from .validation import RunMismatchError, check_float, check_int

__all__ = ["CHECKPOINT_MARKER", "evaluate_map", "load_checkpoint", "read_checkpoint", "train"]


def _resume(**kwargs: Any) -> Any:
    """A settings field a resumed training must share with the checkpoint it continues."""
    return field(metadata={"resume": True}, **kwargs)


@dataclass(frozen=True)
class TrainSettings:
    """What :func:`train` trains: each field checked once, here; the ``resume`` fields must match on resume.

    The fields are :func:`train`'s arguments of the same names (see there); ``dataset_options`` is a dict of
    extra :func:`multiguard.data.get_dataset` options.
    """

    dataset: str = _resume(default="multidigits")
    data_root: str | None = None
    arch: str = _resume(default="small_cnn")
    sigma: float = _resume(default=0.5)
    epochs: int = 8
    batch_size: int = _resume(default=32)
    lr: float = _resume(default=1e-3)
    loss: str = _resume(default="asl")
    clamp: bool = _resume(default=False)
    seed: int = _resume(default=0)
    image_size: int | None = None
    train_size: int | None = None
    test_size: int | None = None
    train_split: str | None = None
    test_split: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS:
            raise ValueError(f"dataset: unknown dataset {self.dataset!r}; known datasets are {sorted(DATASETS)}")
        set_ = object.__setattr__
        set_(self, "sigma", check_float(self.sigma, "sigma", 0.0))
        set_(self, "epochs", check_int(self.epochs, "epochs", 0))
        if self.epochs == 0 and self.pretrained is None:
            raise ValueError("epochs: 0 epochs imports pretrained weights without training: pass pretrained "
                             "(--pretrained), the weights of the classifier to certify")
        set_(self, "batch_size", check_int(self.batch_size, "batch_size", 1))
        set_(self, "lr", check_float(self.lr, "lr", 0.0, low_open=True))
        set_(self, "seed", check_int(self.seed, "seed", 0))
        set_(self, "num_workers", check_int(self.num_workers, "num_workers", 0))
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                set_(self, name, check_int(getattr(self, name), name, 1))
        set_(self, "clamp", bool(self.clamp))
        set_(self, "dataset_options", dict(self.dataset_options or {}))
        if self.data_root is not None:  # absolute: a checkpoint is used from other folders
            set_(self, "data_root", os.path.abspath(os.fspath(self.data_root)))
        if self.pretrained is not None:
            pretrained = os.fspath(self.pretrained)
            set_(self, "pretrained", pretrained if pretrained.lower() == "imagenet" or not os.path.exists(pretrained)
                 else os.path.abspath(pretrained))

    @classmethod
    def resume_fields(cls) -> tuple[str, ...]:
        """The fields a resumed training must share with its checkpoint (as stored in its metadata)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("resume"))


# Metadata keys, beyond TrainSettings.resume_fields(), that a resume compares: they follow from the settings
# and the data (a resumed run must see the same split and classes).
_DERIVED_RESUME_KEYS = ("image_size", "train_split", "train_size", "num_classes")


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"


def _normalisation_origin(arch: str, mean: Any, std: Any) -> str:
    if mean is not None or std is not None:
        return "given"
    if arch.startswith(("timm:", "torchvision:")):
        return f"the ImageNet statistics of {arch.split(':')[0]}; --mean/--std choose others"
    return "none: the default for small_cnn and your own models; --mean/--std choose others"


def _fork_rng(device: torch.device):
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


def _base_and_indices(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    if isinstance(dataset, Subset):
        base, inner = _base_and_indices(dataset.dataset)
        indices = list(dataset.indices)
        return base, indices if inner is None else [inner[i] for i in indices]
    return dataset, None


def _batches(dataset: Dataset, order: torch.Tensor, batch_size: int,
             num_workers: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images (B, C, S, S), labels (B, c))`` of ``dataset`` in the given order."""
    base, indices = _base_and_indices(dataset)
    images = getattr(base, "images", None)
    if isinstance(images, torch.Tensor):  # in-memory dataset: index tensors directly
        mapped = order if indices is None else torch.as_tensor(indices, dtype=torch.long)[order]
        for start in range(0, len(mapped), batch_size):
            idx = mapped[start : start + batch_size]
            yield images[idx], base.labels[idx]
        return
    loader = DataLoader(Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False,
                        num_workers=num_workers)
    for images_b, labels_b in loader:
        yield images_b, labels_b.float()


def _add_noise(images: torch.Tensor, sigma: float, clamp: bool, generator: torch.Generator) -> torch.Tensor:
    if sigma > 0:
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        images = images + sigma * noise
    return images.clamp(0.0, 1.0) if clamp else images


def mean_average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Macro mean of scikit-learn's average precision over the classes with at least one positive.

    Shapes: ``labels`` ``(N, c)`` in {0, 1}, ``scores`` ``(N, c)``. NaN if no class has a positive.
    """
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
    for images, labels in _batches(dataset, order, batch_size, num_workers):
        images = _add_noise(images.to(device), sigma, clamp, generator)
        all_scores.append(model(images).float().cpu())
        all_labels.append(labels.cpu())
    return mean_average_precision(torch.cat(all_labels).numpy(), torch.cat(all_scores).numpy())


def _evaluate_clean_and_noisy(model: nn.Module, test_set: Dataset, sigma: float, clamp: bool, seed: int,
                              device: torch.device, num_workers: int) -> tuple[float, float]:
    """``(clean mAP, noisy mAP)``; without noise (sigma = 0) the two are the same number, measured once."""
    clean_map = evaluate_map(model, test_set, 0.0, clamp, seed, device=device, num_workers=num_workers)
    if sigma == 0:
        return clean_map, clean_map
    return clean_map, evaluate_map(model, test_set, sigma, clamp, seed, device=device, num_workers=num_workers)


def _write_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict) -> None:
    _save_atomic({CHECKPOINT_MARKER: CHECKPOINT_FORMAT,
                  "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                  "optimizer": optimizer.state_dict(), "meta": meta}, path)


def _subset(dataset: Dataset, size: int | None, seed: int, tag: str) -> Dataset:
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(training_seed(seed, tag))
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def _save_atomic(obj: dict, path: Path) -> None:
    """Serialise ``obj`` with ``torch.save`` and write it through the package's one atomic writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def train(
    dataset: str = "multidigits",
    *,
    data_root: str | os.PathLike | None = None,
    arch: str = "small_cnn",
    sigma: float = 0.5,
    epochs: int = 8,
    batch_size: int = 32,
    lr: float = 1e-3,
    loss: str = "asl",
    clamp: bool = False,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    device: str | torch.device = "cpu",
    progress: bool = True,
    image_size: int | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
    train_split: str | None = None,
    test_split: str | None = None,
    dataset_options: dict[str, Any] | None = None,
    pretrained: str | os.PathLike | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    num_workers: int = 0,
    num_threads: int | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[nn.Module, dict]:
    """Train a base classifier on inputs carrying Gaussian noise; save a checkpoint after each epoch.

    Args:
        dataset: a name from ``multiguard.data.DATASETS`` (``multidigits``, ``voc2007``, ``coco2014``,
            ``nuswide``, ``csv``).
        data_root: the dataset folder (not needed for multidigits); recorded as an absolute path.
        arch: see :func:`multiguard.models.create_model` (``small_cnn``, ``timm:<name>``, ...).
        sigma: standard deviation of the training noise, in [0, 1] pixel units (0: no noise: a clean
            classifier, to certify behind a denoiser, see :mod:`multiguard.denoisers`).
        epochs: total number of epochs (a resumed run trains the epochs still missing). 0: no training, the
            ``pretrained`` weights (which must then fit the model exactly) are measured once and saved as a
            checkpoint (one metrics entry with epoch 0 and ``train_loss`` None), ready to certify.
        batch_size, lr: Adam's batch size and learning rate (paper: 32 and 1e-3).
        loss: ``'asl'`` (gamma+ 0, gamma- 4, clip 0.05) or ``'bce'``.
        clamp: clamp noisy inputs to [0, 1] (training and noisy evaluation).
        seed: seeds everything (initialisation, data order, noise; multidigits' composition).
        out: checkpoint path, rewritten atomically after each epoch; ``None``: no file. An existing file
            there is never replaced unless asked: ``resume`` continues it, ``overwrite`` replaces it, and
            without either ValueError is raised before any work.
        resume: continue from the checkpoint at ``out`` (from its last completed epoch) if it exists;
            its settings (dataset, arch, sigma, clamp, loss, lr, batch_size, seed, image_size, split,
            train_size) must match, ``epochs`` may be larger. Starts afresh if there is no file.
        device: ``'cpu'``, ``'cuda'``, ``'cuda:1'``, ... or ``'auto'``.
        progress: show tqdm progress bars and one line per epoch.
        image_size: side S of the images; ``None``: the dataset's default (32 multidigits, 224 for the paper's
            datasets, from the images for csv).
        train_size, test_size: number of training / test images (multidigits: composed images,
            defaults 8000 / 2000; others: a seeded random subset; ``None``: all).
        train_split, test_split: split names; ``None``: the dataset's (e.g. trainval / test for VOC).
        dataset_options: extra options for :func:`multiguard.data.get_dataset`
            (e.g. ``{'difficult_positive': True}``).
        pretrained, mean, std: passed to :func:`multiguard.models.create_model`.
        num_workers: DataLoader workers for file-based datasets.
        num_threads: CPU threads torch uses while training (``torch.set_num_threads``, restored
            afterwards); ``None`` leaves torch's setting. On a busy 2-core machine 1 thread is much
            faster for small models and batches (see docs/training.md).
        log: called with one line per epoch (default: tqdm.write when ``progress``, else silent).

    Returns:
        ``(model, meta)``: the trained model (eval mode) and the checkpoint metadata, a dict with
        ``format_version, multiguard_version, torch_version, dataset, data_root, dataset_options,
        train_split, test_split, train_size, test_size, class_names, num_classes, arch, image_size,
        in_channels, mean, std, pretrained, sigma, clamp, loss, lr, batch_size, seed, epochs, epoch,
        metrics, train_seconds, updated``; ``metrics`` a list with one dict per epoch: ``epoch,
        train_loss, clean_map, noisy_map, seconds``.
    """
    settings = TrainSettings(
        dataset=dataset, data_root=data_root, arch=arch, sigma=sigma, epochs=epochs, batch_size=batch_size, lr=lr,
        loss=loss, clamp=clamp, seed=seed, image_size=image_size, train_size=train_size, test_size=test_size,
        train_split=train_split, test_split=test_split, dataset_options=dataset_options or {},
        pretrained=pretrained, mean=mean, std=std, num_workers=num_workers,
    )
    if num_threads is not None:
        num_threads = check_int(num_threads, "num_threads", 1)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        return _train(settings, out=out, resume=resume, overwrite=overwrite, device=device, progress=progress, log=log)
    finally:
        torch.set_num_threads(previous_threads)


def _train(
    settings: TrainSettings,
    *,
    out: str | os.PathLike | None,
    resume: bool,
    overwrite: bool,
    device: str | torch.device,
    progress: bool,
    log: Callable[[str], None] | None,
) -> tuple[nn.Module, dict]:
    from tqdm.auto import tqdm

    s = settings
    dataset, data_root, arch, sigma, epochs = s.dataset, s.data_root, s.arch, s.sigma, s.epochs
    batch_size, lr, loss, clamp, seed = s.batch_size, s.lr, s.loss, s.clamp, s.seed
    image_size, train_size, test_size = s.image_size, s.train_size, s.test_size
    train_split, test_split, pretrained, num_workers = s.train_split, s.test_split, s.pretrained, s.num_workers
    criterion = make_loss(loss)
    device = resolve_device(device)
    out_path = check_output_file(out, resume=resume, overwrite=overwrite, example="model.pt")
    if log is None:
        log = tqdm.write if progress else (lambda line: None)

    info = DATASETS[dataset]
    train_split = info.train_split if train_split is None else train_split
    test_split = info.test_split if test_split is None else test_split
    options = dict(s.dataset_options)
    common = {"root": data_root, "image_size": image_size, "seed": seed}
    if dataset == "multidigits":
        train_set = get_dataset(dataset, split=train_split, **common, **options,
                                **({"size": train_size} if train_size else {}))
        test_set = get_dataset(dataset, split=test_split, **common, **options,
                               **({"size": test_size} if test_size else {}))
    else:
        train_set = _subset(get_dataset(dataset, split=train_split, **common, **options),
                            train_size, seed, "subset_train")
        test_set = _subset(get_dataset(dataset, split=test_split, **common, **options),
                           test_size, seed, "subset_test")
    base_train, _ = _base_and_indices(train_set)
    class_names = list(base_train.class_names)
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"dataset: {dataset} has an empty split ({len(train_set)} train, {len(test_set)} test)")

    meta: dict[str, Any] = {
        "format_version": CHECKPOINT_FORMAT,
        "multiguard_version": __version__,
        "torch_version": str(torch.__version__),
        "dataset": dataset,
        "data_root": data_root,
        "dataset_options": options,
        "train_split": train_split,
        "test_split": test_split,
        "train_size": len(train_set),
        "test_size": len(test_set),
        "class_names": class_names,
        "num_classes": len(class_names),
        "arch": arch,
        "image_size": int(base_train.image_size),
        "in_channels": int(getattr(base_train, "in_channels", 3)),
        "pretrained": pretrained,
        "sigma": sigma,
        "clamp": bool(clamp),
        "loss": loss,
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
        model = create_model(arch, meta["num_classes"], meta["image_size"], meta["in_channels"],
                             pretrained=pretrained, mean=s.mean, std=s.std, strict=epochs == 0).to(device)
    meta["arch"] = model.arch  # what rebuilds it from any folder (a factory file's absolute path)
    meta["pretrained"] = model.pretrained
    meta["mean"], meta["std"] = model.mean, model.std
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)

    if resume and out_path is not None and out_path.exists():
        checkpoint = read_checkpoint(out_path)
        saved = checkpoint["meta"]
        different = [f"{key}: saved {saved.get(key)!r}, now {meta[key]!r}"
                     for key in dict.fromkeys((*TrainSettings.resume_fields(), *_DERIVED_RESUME_KEYS))
                     if saved.get(key) != meta[key]]
        if different:
            raise RunMismatchError(f"resume: {out_path} was trained with other settings ({'; '.join(different)})")
        model.load_state_dict(checkpoint["state_dict"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        for key in ("epoch", "metrics", "train_seconds", "mean", "std", "pretrained", "updated"):
            if key in saved:
                meta[key] = saved[key]
        log(f"resuming {out_path} after epoch {meta['epoch']} of {epochs}")
    note = getattr(base_train, "image_size_note", None)
    if note and meta["epoch"] == 0:
        log(f"{dataset}: {note}")
    if meta["epoch"] == 0:  # a fresh start (a resumed run said it the first time)
        log(f"normalisation inside the model: mean {_short(meta['mean'])}, std {_short(meta['std'])} "
            f"({_normalisation_origin(arch, s.mean, s.std)}; recorded in the checkpoint)")

    steps = math.ceil(len(train_set) / batch_size)
    checked_outputs = False
    for epoch in range(meta["epoch"] + 1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order_gen = torch.Generator().manual_seed(training_seed(seed, "epoch", epoch))
        noise_gen = torch.Generator(device=device).manual_seed(training_seed(seed, "epoch", epoch))
        order = torch.randperm(len(train_set), generator=order_gen)
        total, count = 0.0, 0
        with _fork_rng(device):
            torch.manual_seed(training_seed(seed, "epoch", epoch) ^ 0x5EED)  # dropout etc. of the model
            bar = tqdm(_batches(train_set, order, batch_size, num_workers), total=steps,
                       desc=f"epoch {epoch}/{epochs}", disable=not progress, leave=False)
            for images, labels in bar:
                images, labels = images.to(device), labels.to(device)
                noisy = _add_noise(images, sigma, clamp, noise_gen)
                logits = model(noisy)
                batch_loss = criterion(logits, labels)
                optimizer.zero_grad(set_to_none=True)
                batch_loss.backward()
                optimizer.step()
                total += float(batch_loss.detach()) * len(images)
                count += len(images)
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            bar.close()
        if not checked_outputs:
            # After a first epoch, not at initialisation: a fresh logits model with small weights can put every
            # output of a batch in [0, 1] by chance; once trained on labels, logits of absent labels go negative.
            checked_outputs = True
            reason = looks_like_probabilities(model, logits)
            if reason:
                warnings.warn(
                    f"the model {arch} seems to output probabilities, not logits ({reason}); MultiGuard's "
                    "losses apply the sigmoid themselves: return the scores before any sigmoid",
                    UserWarning, stacklevel=3)
        clean_map, noisy_map = _evaluate_clean_and_noisy(model, test_set, sigma, clamp, seed, device, num_workers)
        seconds = time.perf_counter() - started
        meta["metrics"].append({"epoch": epoch, "train_loss": total / count, "clean_map": clean_map,
                                "noisy_map": noisy_map, "seconds": seconds})
        meta["epoch"] = epoch
        meta["epochs"] = epochs
        meta["train_seconds"] += seconds
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log(f"epoch {epoch}/{epochs}: loss {total / count:.4f}, test mAP clean {clean_map:.4f}"
            + (f", noisy (sigma={sigma:g}) {noisy_map:.4f}" if sigma > 0 else " (no noise)") + f", {seconds:.1f} s")
        if out_path is not None:
            _write_checkpoint(out_path, model, optimizer, meta)
    if epochs == 0 and not meta["metrics"]:  # imported weights: measured once, saved as a checkpoint
        started = time.perf_counter()
        clean_map, noisy_map = _evaluate_clean_and_noisy(model, test_set, sigma, clamp, seed, device, num_workers)
        meta["metrics"].append({"epoch": 0, "train_loss": None, "clean_map": clean_map, "noisy_map": noisy_map,
                                "seconds": time.perf_counter() - started})
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        log(f"imported {pretrained} without training: test mAP clean {clean_map:.4f}"
            + (f", noisy (sigma={sigma:g}) {noisy_map:.4f}" if sigma > 0 else ""))
        if out_path is not None:
            _write_checkpoint(out_path, model, optimizer, meta)
    meta["epochs"] = max(epochs, meta["epoch"])
    model.class_names = class_names
    return model.eval(), meta
