"""The training core that classifier training (:mod:`multiguard.train`) and denoiser training
(:mod:`multiguard.denoise_train`) share: the data splits, batches and training noise, the epoch loop with its
progress bar, resuming from a checkpoint, and writing one after each epoch.

A trainer builds its model, optimiser, objective (:mod:`multiguard.objectives`), evaluation and checkpoint
writer, and hands them to :class:`TrainingLoop`; the loop trains the epochs still missing from ``meta`` and keeps
``meta`` (``epoch``, ``epochs``, ``metrics``, ``train_seconds``, ``updated``) current.

Randomness: the data order and the noise of epoch e come from generators seeded from ``(seed, "epoch", e)``,
anything else the model draws (dropout) from the global generator seeded from the same, inside
``torch.random.fork_rng``: the caller's global RNG state is left as it was, and a resumed training continues
exactly as an uninterrupted one.

Where later features go: an optimiser or schedule is :func:`make_optimizer` (and a scheduler stepped in
:meth:`TrainingLoop.update`), mixed precision and gradient scaling :meth:`TrainingLoop.update` and the
objective's step, EMA weights a hook after :meth:`TrainingLoop.update`, several processes (DDP) the order
:meth:`TrainingLoop.epoch_order` hands to each rank; new objectives are registered in
:data:`multiguard.train_settings.TRAINING_OBJECTIVES`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from .data import DATASETS, get_dataset
from .seeds import training_seed
from .settings import _NO_LEGACY, Settings
from .validation import RunMismatchError

__all__ = [
    "TrainingLoop",
    "add_noise",
    "base_and_indices",
    "batches",
    "fork_rng",
    "identity_now",
    "legacy_values",
    "load_splits",
    "make_log",
    "make_optimizer",
    "NonFiniteOutputsError",
    "resume_from",
    "settings_from",
    "subset",
    "torch_threads",
]

Log = Callable[[str], None]
S = TypeVar("S", bound=Settings)


def fork_rng(device: torch.device):
    """``torch.random.fork_rng`` over the CPU and, on a GPU, that device: global draws inside leave no trace."""
    devices = [device.index or 0] if device.type == "cuda" else []
    return torch.random.fork_rng(devices=devices)


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(num_threads)`` (``None``: torch's setting), restored after."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def settings_from(cls: type[S], value: Any, first_field: str, fields: Mapping[str, Any]) -> S:
    """The settings a trainer was called with: ``value`` itself if it is a ``cls`` (with ``fields`` replaced), else
    ``cls(first_field=value, **fields)`` (the keyword form: ``train("multidigits", sigma=0.5, ...)``)."""
    if isinstance(value, cls):
        return value.replace(**fields) if fields else value
    return cls(**{first_field: value}, **fields)


def make_log(progress: bool, log: Log | None) -> Log:
    """``log``, or by default ``tqdm.write`` with ``progress`` and silence without."""
    if log is not None:
        return log
    from tqdm.auto import tqdm

    return tqdm.write if progress else (lambda line: None)


def base_and_indices(dataset: Dataset) -> tuple[Dataset, list[int] | None]:
    """The dataset under any ``Subset`` wrappers, and the indices into it (``None``: all of it)."""
    if isinstance(dataset, Subset):
        base, inner = base_and_indices(dataset.dataset)
        indices = list(dataset.indices)
        return base, indices if inner is None else [inner[i] for i in indices]
    return dataset, None


def batches(dataset: Dataset, order: torch.Tensor, batch_size: int,
            num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images (B, C, S, S), labels (B, c))`` of ``dataset`` in the given order."""
    base, indices = base_and_indices(dataset)
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


def add_noise(images: torch.Tensor, sigma: float, clamp: bool, generator: torch.Generator) -> torch.Tensor:
    """``images + sigma * eps``, ``eps ~ N(0, I)`` drawn from ``generator`` (clamped to [0, 1] if ``clamp``)."""
    if sigma > 0:
        noise = torch.randn(images.shape, generator=generator, device=images.device, dtype=images.dtype)
        images = images + sigma * noise
    return images.clamp(0.0, 1.0) if clamp else images


def subset(dataset: Dataset, size: int | None, seed: int, tag: str) -> Dataset:
    """A seeded random subset of ``size`` items, in index order (all of ``dataset`` if ``size`` is None or more)."""
    if size is None or size >= len(dataset):
        return dataset
    generator = torch.Generator().manual_seed(training_seed(seed, tag))
    indices = torch.randperm(len(dataset), generator=generator)[:size].sort().values
    return Subset(dataset, indices.tolist())


def load_splits(dataset: str, data_root: Any, image_size: int | None, seed: int, train_split: str | None,
                test_split: str | None, train_size: int | None, test_size: int | None,
                options: dict[str, Any]) -> tuple[Dataset, Dataset, str, str]:
    """``(train set, test set, train split, test split)``; splits default to the dataset's, sizes pick a seeded
    subset (multidigits composes that many images). ValueError if a split is empty."""
    info = DATASETS[dataset]
    train_split = info.train_split if train_split is None else train_split
    test_split = info.test_split if test_split is None else test_split
    common = {"root": data_root, "image_size": image_size, "seed": seed, **options}
    if info.composed:  # composed images: the size is a dataset option
        train_set = get_dataset(dataset, split=train_split, **common, **({"size": train_size} if train_size else {}))
        test_set = get_dataset(dataset, split=test_split, **common, **({"size": test_size} if test_size else {}))
    else:
        train_set = subset(get_dataset(dataset, split=train_split, **common), train_size, seed, "subset_train")
        test_set = subset(get_dataset(dataset, split=test_split, **common), test_size, seed, "subset_test")
    if len(train_set) == 0 or len(test_set) == 0:
        raise ValueError(f"dataset: {dataset} has an empty split ({len(train_set)} train, {len(test_set)} test)")
    return train_set, test_set, train_split, test_split


def make_optimizer(parameters: Any, lr: float) -> torch.optim.Optimizer:
    """The optimiser of both trainings: Adam at learning rate ``lr`` (the paper's)."""
    return torch.optim.Adam(parameters, lr=lr)


def identity_now(settings: Settings, meta: Mapping[str, Any], derived: Sequence[str]) -> dict[str, Any]:
    """What a resume compares: the settings' identity fields (as ``meta`` records them where it does: e.g. a
    factory's absolute path) and the ``derived`` metadata keys (split, sizes, classes)."""
    keys = (*type(settings).identity_fields(), *derived)
    return {key: meta[key] if key in meta else getattr(settings, key) for key in dict.fromkeys(keys)}


def legacy_values(cls: type[Settings]) -> dict[str, Any]:
    """``{field: legacy value}``: what a checkpoint written before a field existed means by its absence."""
    return {f.name: f.metadata["legacy"] for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.metadata.get("legacy", _NO_LEGACY) is not _NO_LEGACY}


def resume_from(path: Path, read: Callable[[Path], dict], meta: dict[str, Any], current: Mapping[str, Any],
                restored: Sequence[str], model: nn.Module, optimizer: torch.optim.Optimizer, log: Log,
                legacy: Mapping[str, Any] | None = None) -> None:
    """Continue the checkpoint at ``path`` (read by ``read``): its metadata must equal ``current`` on every key
    of ``current`` (a key an old file lacks reads as ``legacy[key]``), else :class:`RunMismatchError` naming each
    difference; then the weights and optimiser state are loaded and its ``restored`` keys copied into ``meta``."""
    checkpoint = read(path)
    saved = checkpoint["meta"]
    legacy = legacy or {}
    different = [f"{key}: saved {saved.get(key, legacy.get(key))!r}, now {value!r}"
                 for key, value in current.items() if saved.get(key, legacy.get(key)) != value]
    if different:
        raise RunMismatchError(f"resume: {path} was trained with other settings ({'; '.join(different)})")
    model.load_state_dict(checkpoint["state_dict"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    for key in restored:
        if key in saved:
            meta[key] = saved[key]
    log(f"resuming {path} after epoch {meta['epoch']} of {meta['epochs']}")


class NonFiniteOutputsError(ValueError):
    """An evaluation met outputs of the model that are NaN or infinite (said in one line, with how many)."""


@dataclass
class TrainingLoop:
    """The epoch loop: trains ``model`` with ``objective`` on ``train_set`` until ``meta['epoch'] == epochs``.

    After each epoch: ``evaluate(model) -> measures`` (a dict), one metrics entry ``{epoch, train_loss,
    **measures, seconds}``, one line ``describe(epoch, epochs, train_loss, measures, seconds)`` to ``log``, and
    ``save(meta)`` (a checkpoint; ``None``: none). ``check_outputs(model, outputs)`` sees the outputs of the last
    batch of the first epoch trained (e.g. to warn about a model that outputs probabilities).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    objective: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    train_set: Dataset
    batch_size: int
    seed: int
    device: torch.device
    evaluate: Callable[[nn.Module], dict[str, Any]]
    describe: Callable[[int, int, float, dict[str, Any], float], str]
    save: Callable[[dict[str, Any]], None] | None = None
    check_outputs: Callable[[nn.Module, torch.Tensor], None] | None = None
    num_workers: int = 0
    progress: bool = True

    def run(self, meta: dict[str, Any], epochs: int, log: Log) -> None:
        """Train epochs ``meta['epoch'] + 1 .. epochs``, updating ``meta`` and saving after each.

        A checkpoint already trained for more than ``epochs`` is refused (ValueError naming both counts). When
        the evaluation finds outputs that are not finite (:class:`NonFiniteOutputsError`), the epoch is saved
        (its metrics entry says why it has no measures) and a ValueError names the epoch."""
        if meta["epoch"] > epochs:
            raise ValueError(f"epochs: the checkpoint was already trained for {meta['epoch']} epochs, more than the "
                             f"{epochs} asked; give --epochs {meta['epoch']} or more to continue it, or train anew "
                             "with --overwrite")
        first = meta["epoch"] + 1
        for epoch in range(first, epochs + 1):
            started = time.perf_counter()
            train_loss, outputs = self.train_epoch(epoch, epochs)
            if self.check_outputs is not None and epoch == first:
                self.check_outputs(self.model, outputs)
            try:
                measures = self.evaluate(self.model)
            except NonFiniteOutputsError as exc:
                self._keep_failed_epoch(meta, epoch, epochs, train_loss, time.perf_counter() - started, exc)
                kept = " (saved: --resume continues after it)" if self.save is not None else ""
                raise ValueError(f"evaluation after epoch {epoch}{kept}: {exc}; check the model's forward in eval "
                                 "mode (e.g. BatchNorm statistics, a division) or lower --lr") from None
            seconds = time.perf_counter() - started
            meta["metrics"].append({"epoch": epoch, "train_loss": train_loss, **measures, "seconds": seconds})
            meta["epoch"], meta["epochs"] = epoch, epochs
            meta["train_seconds"] += seconds
            meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            log(self.describe(epoch, epochs, train_loss, measures, seconds))
            if self.save is not None:
                self.save(meta)

    def _keep_failed_epoch(self, meta: dict[str, Any], epoch: int, epochs: int, train_loss: float, seconds: float,
                           error: Exception) -> None:
        """Record and save an epoch whose evaluation failed: its training is not lost."""
        meta["metrics"].append({"epoch": epoch, "train_loss": train_loss, "seconds": seconds,
                                "evaluation_error": str(error)})
        meta["epoch"], meta["epochs"] = epoch, epochs
        meta["train_seconds"] += seconds
        meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.save is not None:
            self.save(meta)

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The order of the training items in ``epoch`` (seeded from ``(seed, epoch)``)."""
        generator = torch.Generator().manual_seed(training_seed(self.seed, "epoch", epoch))
        return torch.randperm(len(self.train_set), generator=generator)

    def train_epoch(self, epoch: int, epochs: int) -> tuple[float, torch.Tensor]:
        """One pass over the training set: ``(mean loss per item, outputs of the last batch)``."""
        from tqdm.auto import tqdm

        self.model.train()
        order = self.epoch_order(epoch)
        noise = torch.Generator(device=self.device).manual_seed(training_seed(self.seed, "epoch", epoch))
        total, count, outputs = 0.0, 0, torch.empty(0)
        steps = math.ceil(len(self.train_set) / self.batch_size)
        with fork_rng(self.device):
            torch.manual_seed(training_seed(self.seed, "epoch", epoch) ^ 0x5EED)  # dropout etc. of the model
            bar = tqdm(batches(self.train_set, order, self.batch_size, self.num_workers), total=steps,
                       desc=f"epoch {epoch}/{epochs}", disable=not self.progress, leave=False)
            for images, labels in bar:
                images, labels = images.to(self.device), labels.to(self.device)
                loss, outputs = self.objective(self.model, images, labels, noise)
                self.update(loss)
                total += float(loss.detach()) * len(images)
                count += len(images)
                bar.set_postfix(loss=f"{total / count:.4f}", refresh=False)
            bar.close()
        return total / count, outputs

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss``."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()


def path_or_none(value: str | os.PathLike | None) -> str | None:
    """``os.fspath(value)``, or ``None``."""
    return None if value is None else os.fspath(value)
