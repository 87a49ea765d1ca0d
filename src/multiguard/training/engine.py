"""The training core that classifier training (:mod:`multiguard.training.classifier`) and denoiser training
(:mod:`multiguard.training.denoiser`) share: the data splits, batches and training noise, the epoch loop with its
progress bar, resuming from a checkpoint, and writing one after each epoch.

A trainer builds its model, optimiser, objective (:mod:`multiguard.training.objectives`), evaluation and checkpoint
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
:data:`multiguard.training.registries.TRAINING_OBJECTIVES`.
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

from multiguard.common.devices import resolve_device
from multiguard.common.files import check_output_file
from multiguard.common.seeds import training_seed
from multiguard.common.settings import _NO_LEGACY, Settings
from multiguard.common.validation import RunMismatchError
from multiguard.data import DATASETS, get_dataset

__all__ = [
    "start_job",
    "TrainingLoop",
    "add_noise",
    "base_and_indices",
    "batches",
    "fork_rng",
    "identity_now",
    "legacy_values",
    "load_splits",
    "make_log",
    "global_batches",
    "make_optimizer",
    "NonFiniteOutputsError",
    "make_scheduler",
    "resolve_precision",
    "schedule_factor",
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


def start_job(device: str | torch.device, out: str | os.PathLike | None, *, resume: bool, overwrite: bool,
              progress: bool, log: Log | None, example: str) -> tuple[Any, torch.device, Any, Log]:
    """What a training process does first: join the torchrun job when launched by it (``WORLD_SIZE`` > 1; one
    process per rank), resolve the device, check the file it will write
    (:func:`multiguard.common.files.check_output_file`)
    and make its log (rank 0 speaks for the job). Returns ``(dist or None, device, out path, log)``."""
    dist = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from multiguard.common.distributed import init_distributed

        dist = init_distributed(str(device))
        device = torch.device(dist.device)
    device = resolve_device(device)
    out_path = check_output_file(out, resume=resume, overwrite=overwrite, example=example)
    log = make_log(progress and (dist is None or dist.rank == 0), log)
    if dist is not None and dist.rank != 0:
        log = lambda line: None  # noqa: E731 - rank 0 speaks for the job
    return dist, device, out_path, log


def finish_job(dist: Any) -> None:
    """What a training process under torchrun does last: wait for every rank, then leave the process group
    (``destroy_process_group``), so no rank's interpreter exits holding a live gloo group whose connections
    another rank still has open (an exit without it aborted a rank now and then, SIGABRT in gloo's teardown).
    Nothing without ``dist``."""
    if dist is not None:
        dist.barrier()
        dist.close()


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


def make_optimizer(parameters: Any, lr: float, name: str = "adam", weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """The optimiser: ``adam`` (the paper's: Adam at ``lr``) or ``adamw`` (decoupled weight decay). ``parameters``
    is a module's parameters or a module; with ``weight_decay`` > 0 and a module, biases and normalisation
    weights (1-D tensors) get no decay (timm's ``param_groups_weight_decay``, as ASL's training does)."""
    if isinstance(parameters, nn.Module):
        if weight_decay > 0:
            from timm.optim import param_groups_weight_decay

            parameters = param_groups_weight_decay(parameters, weight_decay)
        else:
            parameters = parameters.parameters()
    if name == "adamw":
        return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'adam' or 'adamw', got {name!r}")


def schedule_factor(schedule: str, step: int, total: int, warmup: float) -> float:
    """The learning rate at optimiser ``step`` of ``total``, as a fraction of the peak ``lr``.

    ``constant``: 1 (after a linear warm-up over the first ``warmup`` fraction of steps, if any). ``cosine``: a
    linear warm-up from 0, then cosine annealing to 0. ``onecycle``: torch's ``OneCycleLR`` shape (cosine from
    lr/25 up to lr over the warm-up, then cosine down to lr/25e4), as ASL's training uses it."""
    progress = min(1.0, step / max(1, total))
    if schedule == "onecycle":
        start, end, rise = 1 / 25, 1 / 25e4, max(warmup, 1e-9)
        if progress < rise:
            return start + (1 - start) * (1 - math.cos(math.pi * progress / rise)) / 2
        return end + (1 - end) * (1 + math.cos(math.pi * (progress - rise) / max(1e-9, 1 - rise))) / 2
    if warmup > 0 and progress < warmup:
        return progress / warmup
    if schedule == "cosine":
        return (1 + math.cos(math.pi * (progress - warmup) / max(1e-9, 1 - warmup))) / 2
    if schedule == "constant":
        return 1.0
    raise ValueError(f"schedule must be 'constant', 'cosine' or 'onecycle', got {schedule!r}")


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str, total_steps: int,
                   warmup: float) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``torch.optim.lr_scheduler.LambdaLR`` following :func:`schedule_factor`, stepped once per optimiser
    step; its state (the step count) resumes with a run, the shape follows ``total_steps`` of the run now."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: schedule_factor(schedule, step, total_steps, warmup))


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """``(autocast dtype or None for fp32, channels_last implied)`` for ``precision`` on ``device``: ``auto`` is
    bf16 + channels_last where the device computes bf16 natively
    (:func:`multiguard.sampling.acceleration.auto_precision`)
    and fp32 elsewhere."""
    implied = False
    if precision == "auto":
        from multiguard.sampling.acceleration import auto_precision

        precision, implied = auto_precision(device)
    dtypes = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"precision must be 'fp32', 'bf16', 'fp16' or 'auto', got {precision!r}")
    return dtypes[precision], implied


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
                legacy: Mapping[str, Any] | None = None,
                restore: Callable[[Mapping[str, Any]], None] | None = None) -> None:
    """Continue the checkpoint at ``path`` (read by ``read``): its metadata must equal ``current`` on every key
    of ``current`` (a key an old file lacks reads as ``legacy[key]``), else :class:`RunMismatchError` naming each
    difference; then the weights and optimiser state are loaded and its ``restored`` keys copied into ``meta``.
    The weights trained on are ``train_state["model"]`` where the file keeps them apart from the weights it
    serves (EMA), else ``state_dict``; ``restore(train_state)`` loads the rest (schedule, scaler, EMA)."""
    checkpoint = read(path)
    saved = checkpoint["meta"]
    legacy = legacy or {}
    different = [f"{key}: saved {saved.get(key, legacy.get(key))!r}, now {value!r}"
                 for key, value in current.items() if not _same(saved.get(key, legacy.get(key)), value)]
    if different:
        raise RunMismatchError(f"resume: {path} was trained with other settings ({'; '.join(different)})")
    train_state = checkpoint.get("train_state") or {}
    model.load_state_dict(train_state.get("model", checkpoint["state_dict"]))
    optimizer.load_state_dict(checkpoint["optimizer"])
    if restore is not None:
        restore(train_state)
    for key in restored:
        if key in saved:
            meta[key] = saved[key]
    log(f"resuming {path} after epoch {meta['epoch']} of {meta['epochs']}")


class NonFiniteOutputsError(ValueError):
    """An evaluation met outputs of the model that are NaN or infinite (said in one line, with how many)."""


def global_batches(order: torch.Tensor, batch_size: int, rank: int = 0, world_size: int = 1,
                   accumulate: int = 1) -> list[list[torch.Tensor]]:
    """The index batches of one epoch for one process: ``order`` cut into global batches of ``batch_size`` (one
    optimiser step each), each batch's share ``batch[rank::world_size]`` for this rank, cut into ``accumulate``
    micro-batches. A last global batch with fewer items than processes is dropped (every rank must step)."""
    steps = []
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        if len(chunk) < world_size:
            break
        share = chunk[rank::world_size]
        parts = min(accumulate, len(share))
        steps.append([part for part in torch.tensor_split(share, parts) if len(part)])
    return steps


def micro_batches(dataset: Dataset, plan: list[list[torch.Tensor]],
                  num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` of every micro-batch of ``plan`` (:func:`global_batches`), in order; in-memory
    datasets are indexed directly, others read through one ``DataLoader`` with the plan as its batch sampler."""
    base, indices = base_and_indices(dataset)
    flat = [part for step in plan for part in step]
    if isinstance(getattr(base, "images", None), torch.Tensor):
        mapping = None if indices is None else torch.as_tensor(indices, dtype=torch.long)
        for part in flat:
            idx = part if mapping is None else mapping[part]
            yield base.images[idx], base.labels[idx].float()
        return
    loader = DataLoader(dataset, batch_sampler=[part.tolist() for part in flat], num_workers=num_workers)
    for images, labels in loader:
        yield images, labels.float()


def _same(saved: Any, now: Any) -> bool:
    """Equal, a list and a tuple of the same items counting as equal (metadata keeps sequences as lists)."""
    if isinstance(saved, (list, tuple)) and isinstance(now, (list, tuple)):
        return list(saved) == list(now)
    return saved == now


@dataclass
class TrainingLoop:
    """The epoch loop: trains ``model`` with ``objective`` on ``train_set`` until ``meta['epoch'] == epochs``.

    After each epoch: ``evaluate(model) -> measures`` (a dict; the EMA weights where ``ema`` is kept), one
    metrics entry ``{epoch, train_loss, **measures, seconds, samples_per_second}``, one line
    ``describe(epoch, epochs, train_loss, measures, seconds)`` (plus samples/s and the ETA) to ``log``, and
    ``save(meta)`` (a checkpoint; ``None``: none). ``check_outputs(model, outputs)`` sees the outputs of the last
    batch of the first epoch trained (e.g. to warn about a model that outputs probabilities).

    What a step does: ``batch_size`` items per optimiser step (over all processes), each process its share
    cut into ``accumulate`` micro-batches; ``augment(images)`` (draws from the global generator), then the
    ``objective`` under ``torch.autocast(autocast_dtype)`` on ``forward`` (the model as it runs: DDP-wrapped,
    compiled; default ``model``); gradients through ``scaler`` (fp16) if any, the optimiser, ``scheduler`` and
    ``ema`` after every optimiser step. Several processes (``dist``: a
    :class:`multiguard.common.distributed.DistributedContext`): rank 0 evaluates, logs and saves; the others wait.

    Randomness: the order of epoch e, its noise (rank r > 0: a stream of its own) and the global generator (dropout,
    augmentation) are seeded from ``(seed, e)``, so training resumed after epoch e equals an uninterrupted one.
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
    clock: Any = None
    forward: nn.Module | None = None
    scheduler: Any = None
    scaler: Any = None
    ema: Any = None
    autocast_dtype: torch.dtype | None = None
    channels_last: bool = False
    accumulate: int = 1
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    dist: Any = None

    @property
    def rank(self) -> int:
        return 0 if self.dist is None else self.dist.rank

    @property
    def world_size(self) -> int:
        return 1 if self.dist is None else self.dist.world_size

    def evaluated_model(self) -> nn.Module:
        """The weights evaluated and served: the EMA's where kept, else the trained ones."""
        return self.model if self.ema is None else self.ema.module

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
        this_run = 0.0
        for epoch in range(first, epochs + 1):
            started = time.perf_counter()
            train_loss, outputs, samples = self.train_epoch(epoch, epochs)
            trained = time.perf_counter() - started
            if self.check_outputs is not None and epoch == first and self.rank == 0:
                self.check_outputs(self.model, outputs)
            try:
                measures = self.evaluate(self.evaluated_model()) if self.rank == 0 else {}
            except NonFiniteOutputsError as exc:
                self._keep_failed_epoch(meta, epoch, epochs, train_loss, time.perf_counter() - started, exc)
                kept = " (saved: --resume continues after it)" if self.save is not None else ""
                raise ValueError(f"evaluation after epoch {epoch}{kept}: {exc}; check the model's forward in eval "
                                 "mode (e.g. BatchNorm statistics, a division) or lower --lr") from None
            if self.dist is not None and self.world_size > 1:  # every rank returns the same metadata
                measures = self.dist.all_gather(measures)[0]
            seconds = time.perf_counter() - started
            rate = samples / trained if trained > 0 else float("nan")
            meta["metrics"].append({"epoch": epoch, "train_loss": train_loss, **measures, "seconds": seconds,
                                    "samples_per_second": rate})
            meta["epoch"], meta["epochs"] = epoch, epochs
            meta["train_seconds"] += seconds
            this_run += seconds
            meta["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            if self.rank == 0:
                eta = (epochs - epoch) * this_run / (epoch - first + 1)
                if self.save is not None:
                    self.save(meta)
                log(self.describe(epoch, epochs, train_loss, measures, seconds)
                    + f", {rate:.0f} samples/s, ETA {_duration(eta)}")
            if self.dist is not None:
                self.dist.barrier()

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

    def noise_generator(self, epoch: int) -> torch.Generator:
        """The noise of this process in ``epoch``: rank 0 the single-process stream, rank r > 0 its own."""
        seed = (training_seed(self.seed, "epoch", epoch) if self.rank == 0
                else training_seed(self.seed, "rank_noise", epoch * 65536 + self.rank))
        return torch.Generator(device=self.device).manual_seed(seed)

    def train_epoch(self, epoch: int, epochs: int) -> tuple[float, torch.Tensor, int]:
        """One pass over the training set: ``(mean loss per item over all processes, outputs of the last batch,
        items trained over all processes)``."""
        from tqdm.auto import tqdm

        self.model.train()
        forward = self.forward if self.forward is not None else self.model
        forward.train()
        plan = global_batches(self.epoch_order(epoch), self.batch_size, self.rank, self.world_size, self.accumulate)
        noise = self.noise_generator(epoch)
        data = micro_batches(self.train_set, plan, self.num_workers)
        total, count, outputs = 0.0, 0, torch.empty(0)
        steps = len(plan)
        started = time.perf_counter()
        with fork_rng(self.device):
            torch.manual_seed(training_seed(self.seed, "epoch", epoch) ^ 0x5EED)  # dropout, augmentation
            bar = tqdm(plan, total=steps, desc=f"epoch {epoch}/{epochs}", disable=not self.progress or self.rank != 0,
                       leave=False)
            for index, step_parts in enumerate(bar):
                if self.clock is not None:
                    self.clock.fraction = ((epoch - 1) * steps + index) / max(1, epochs * steps)
                share = sum(len(part) for part in step_parts)
                self.optimizer.zero_grad(set_to_none=True)
                for position, indices in enumerate(step_parts):
                    images, labels = next(data)
                    images, labels = images.to(self.device), labels.to(self.device)
                    if self.augment is not None:
                        images = self.augment(images)
                    if self.channels_last and images.dim() == 4:
                        images = images.contiguous(memory_format=torch.channels_last)
                    last = position == len(step_parts) - 1
                    sync = contextlib.nullcontext() if last or not hasattr(forward, "no_sync") else forward.no_sync()
                    with sync:
                        with torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                            enabled=self.autocast_dtype is not None):
                            loss, outputs = self.objective(forward, images, labels, noise)
                        scaled = loss.float() * (len(indices) / share)
                        if self.scaler is not None:
                            scaled = self.scaler.scale(scaled)
                        scaled.backward()
                    total += float(loss.detach()) * len(indices)
                    count += len(indices)
                self.step()
                rate = count * self.world_size / max(1e-9, time.perf_counter() - started)
                bar.set_postfix(loss=f"{total / max(1, count):.4f}", samples_per_s=f"{rate:.0f}", refresh=False)
            bar.close()
        if self.world_size > 1:
            sums = torch.tensor([total, float(count)], dtype=torch.float64)
            torch.distributed.all_reduce(sums)
            total, count = float(sums[0]), int(sums[1])
        return total / max(1, count), outputs, count

    def step(self) -> None:
        """One optimiser step on the accumulated gradients (through the scaler), then the schedule and the EMA."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)

    def update(self, loss: torch.Tensor) -> None:
        """One optimiser step on ``loss`` alone (no accumulation)."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.step()


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else (
        f"{seconds // 60}:{seconds % 60:02d}")


def path_or_none(value: str | os.PathLike | None) -> str | None:
    """``os.fspath(value)``, or ``None``."""
    return None if value is None else os.fspath(value)
