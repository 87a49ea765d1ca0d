"""The certify step: checkpoint -> RUN_DIR (:func:`sample_checkpoint`), which the command line, the attack step
and the demos share.

The other steps live in their own modules: :mod:`multiguard.serving.predict` (checkpoint + images -> predictions),
:mod:`multiguard.evaluation.attack_run` (checkpoint -> ATTACK_DIR), :mod:`multiguard.demo` (the offline demos) and
:mod:`multiguard.common.progress` (progress lines). Each step glues library pieces together and reports progress
through a callback; nothing here parses arguments or prints on its own.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from multiguard.certificates.stop_rule import StopRule
from multiguard.common import processes as _processes
from multiguard.common.distributed import DistributedContext, init_distributed
from multiguard.common.progress import Log, ProgressPrinter
from multiguard.common.validation import MAX_N, check_int
from multiguard.data._common import resized_files_note
from multiguard.models.base_classifier import BaseClassifierSpec, ModeSpec
from multiguard.models.checkpoints import dataset_for_checkpoint
from multiguard.runs import job as _job
from multiguard.runs.spec import RunSpec
from multiguard.sampling.smoothed import MultiGuard

__all__ = [
    "Log",
    "ProgressPrinter",
    "capped_num_inputs",
    "certify_base_classifier",
    "choose_thresholds",
    "sample_checkpoint",
]





# ------------------------------------------------------------------------------------------ certify


def capped_num_inputs(num_inputs: int | None, split_size: int, split: str, log: Log | None) -> int | None:
    """``num_inputs``, or 0 (all) with a line through ``log`` when it exceeds the ``split_size`` inputs."""
    if num_inputs is not None and int(num_inputs) > split_size > 0:
        (log or (lambda line: None))(
            f"--num-inputs {int(num_inputs)} is more than the {split_size} inputs of split {split}: using all "
            f"{split_size}"
        )
        return 0
    return num_inputs


def _check_threshold_arguments(thresholds: Any, threshold_rule: str | None, threshold_inputs: int) -> None:
    """--threshold or --threshold-rule (not both), a known rule and a positive count, before any model loads."""
    if thresholds is not None and threshold_rule is not None:
        raise ValueError("threshold-rule: give --threshold or --threshold-rule, not both")
    if threshold_rule is not None:
        from multiguard.certificates.thresholds import THRESHOLD_RULES

        THRESHOLD_RULES.entry(threshold_rule)
        check_int(threshold_inputs, "threshold_inputs", 1)


def sample_checkpoint(
    checkpoint: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    n: int = 1000,
    max_k_prime: int | None = None,
    num_inputs: int | None = 500,
    seed: int = 0,
    sigma: float | None = None,
    batch_size: int = 1000,
    chunk_size: int = 10,
    device: str | None = "auto",
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    context: DistributedContext | None = None,
    on_progress: Callable[[_job.RunProgress], None] | None = None,
    precision: str = "fp32", channels_last: bool | None = None, compile: bool = False,
    log: Log | None = None,
    stop_rule: StopRule | dict[str, Any] | None = None,
    denoiser: str | os.PathLike[str] | None = None,
    mode: Any = None,
    thresholds: Any = None,
    threshold_scale: str = "probability",
    threshold_rule: str | None = None,
    threshold_split: str | None = None,
    threshold_inputs: int = 300, noise: str = "float", shared_noise: bool = False,
) -> _job.RunResult:
    """Sample a checkpoint's counts on a dataset split into the RUN_DIR ``out`` (see :mod:`multiguard.runs.job`).

    A keyword front for :func:`certify_base_classifier`: it makes the
    :class:`~multiguard.models.base_classifier.BaseClassifierSpec` (checkpoint, ``denoiser``, ``sigma``, the sampling
    mode: ``mode`` whole, or ``precision``, ``channels_last``, ``compile``; the ``noise`` kind and ``shared_noise``) and
    passes the plan on.

    ``sigma`` defaults to the training sigma, ``max_k_prime`` to min(5, number of classes), the dataset,
    root and split to the checkpoint's test split. A ``num_inputs`` larger than the split means the whole
    split (said through ``log``). ``context`` is a :func:`multiguard.common.distributed.init_distributed`
    context (made here from ``device`` when ``None``, and closed again). ``stop_rule`` (a
    :class:`~multiguard.certificates.stop_rule.StopRule` or ``{radius, k, k_prime, alpha, futility}``) makes the run
    sequential.

    Thresholds make the base classifier a thresholded one too (its per-label on-counts are stored beside the
    top-k' counts, from the same forward passes; docs/certificate.md): ``thresholds`` a number, a file with one
    per label or a :class:`~multiguard.certificates.thresholds.LabelThresholds` (``threshold_scale``: ``probability`` or
    ``score``), or ``threshold_rule`` (a name of :data:`multiguard.certificates.thresholds.THRESHOLD_RULES`) to
    choose them on
    ``threshold_inputs`` images of ``threshold_split`` (default: the checkpoint's training split), never among
    the certified inputs (:func:`choose_thresholds`).
    """
    stop_rule = StopRule.coerce(stop_rule)
    check_int(n, "n", 1, MAX_N)  # before the model is loaded or any file made
    _check_threshold_arguments(thresholds, threshold_rule, threshold_inputs)
    mode = mode if mode is not None else ModeSpec(precision, channels_last, compile)
    own_context = context is None
    context = context or init_distributed(device)
    try:
        base = BaseClassifierSpec(checkpoint, sigma=sigma, mode=mode, denoiser=denoiser, device=context.device,
                                  k_prime=1 if stop_rule is None else stop_rule.k_prime, noise=noise,
                                  shared_noise=shared_noise)
        if (warning := base.sigma_warning()) is not None:
            log(warning)
        if thresholds is not None:
            from multiguard.certificates.thresholds import parse_threshold

            chosen = parse_threshold(thresholds, base.checkpoint_meta["class_names"], threshold_scale)
        elif threshold_rule is not None:
            chosen = choose_thresholds(base, threshold_rule, split=threshold_split, num_inputs=threshold_inputs,
                                       seed=seed, dataset=dataset, data_root=data_root, certified_split=split,
                                       certified_inputs=num_inputs, log=log)
        if thresholds is not None or threshold_rule is not None:
            base = dataclasses.replace(base, thresholds=chosen)
        return certify_base_classifier(
            base, out, dataset=dataset, data_root=data_root, split=split, n=n, max_k_prime=max_k_prime,
            num_inputs=num_inputs, seed=seed, batch_size=batch_size, chunk_size=chunk_size, stop_rule=stop_rule,
            shard=shard, resume=resume, context=context, on_progress=on_progress, log=log,
        )
    finally:
        if own_context:
            context.close()


def certify_base_classifier(
    base: BaseClassifierSpec,
    out: str | os.PathLike[str],
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    n: int = 1000,
    max_k_prime: int | None = None,
    num_inputs: int | None = 500,
    seed: int = 0,
    batch_size: int = 1000,
    chunk_size: int = 10,
    stop_rule: StopRule | None = None,
    shard: tuple[int, int] = (0, 1),
    resume: bool = False,
    context: DistributedContext | None = None,
    on_progress: Callable[[_job.RunProgress], None] | None = None,
    log: Log | None = None,
) -> _job.RunResult:
    """Sample the counts of the base classifier ``base`` on a dataset split into the RUN_DIR ``out``.

    Steps: load the smoothed classifier once (``base.load()``), rebuild the checkpoint's dataset split, make
    the :class:`~multiguard.runs.spec.RunSpec` from the plan, the base classifier's and the data's records,
    compile the model now with ``compile`` (one line through ``log`` with the compile time, kept out of the
    sampling rate), and run :func:`multiguard.runs.job.sample_run`.
    """
    context = context or _processes.SingleProcess(device=base.resolved_device)
    meta = base.checkpoint_meta
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    num_inputs = capped_num_inputs(num_inputs, len(data), info["split"], log)
    num_classes = int(meta["num_classes"])
    max_k_prime = check_int(min(5, num_classes) if max_k_prime is None else max_k_prime, "max_k_prime", 1,
                            num_classes, high_label="the number of classes")
    if stop_rule is not None:  # every setting checked before the RUN_DIR is made
        check_int(stop_rule.k, "k", 1, num_classes, high_label="the number of classes")
        check_int(stop_rule.k_prime, "k_prime", 1, max_k_prime, high_label="max_k_prime")
    smoother = base.load()
    spec = RunSpec(
        **base.run_fields(), dataset=info["dataset"], dataset_options=info["dataset_options"],
        dataset_version=info["dataset_version"], split=info["split"],
        image_size=info["image_size"], n=n, seed=seed, max_k_prime=max_k_prime,
        num_inputs=num_inputs, chunk_size=chunk_size,
        batch_size=batch_size, stop_rule=stop_rule,
        record={"data_root": info["data_root"], "class_names": info["class_names"], **base.record()},
    )
    if log is not None and (note := resized_files_note(data, _job.select_inputs(len(data), num_inputs, seed))):
        log(f"certify: {note}")
    if smoother.mode.compile and len(data):
        _compile_now(smoother, data[0][0][None], batch_size, log)
    return _job.sample_run(out, spec, sampler=smoother, dataset=data, resume=resume, shard=shard, context=context,
                            on_progress=on_progress)


def choose_thresholds(
    base: BaseClassifierSpec,
    rule: str,
    *,
    split: str | None = None,
    num_inputs: int = 300,
    seed: int = 0,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    certified_split: str | None = None,
    certified_inputs: int | None = 500,
    alpha: float = 0.001,
    q: float = 0.5,
    log: Log | None = None,
) -> Any:
    """Per-label thresholds for ``base`` chosen by ``rule``
    (:data:`multiguard.certificates.thresholds.THRESHOLD_RULES`) on
    ``num_inputs`` images of ``split`` (default: the checkpoint's training split) that are not among the inputs
    a run with ``certified_split``, ``certified_inputs`` and ``seed`` certifies: disjoint by construction.

    Each image gets the rule's number of noisy copies (its ``draws``; ``None``: 1000) from a noise stream of its
    own (:data:`multiguard.common.seeds.STREAM_THRESHOLDS`), scored by the base classifier as it will be sampled
    (same sigma, mode, denoiser, clamp). Returns a :class:`~multiguard.certificates.thresholds.LabelThresholds` on
    the score
    scale whose ``source`` states the rule and the images.
    """
    from multiguard.certificates.thresholds import THRESHOLD_RULES, LabelThresholds
    from multiguard.common.seeds import STREAM_THRESHOLDS
    from multiguard.runs.job import load_batch, select_inputs

    entry = THRESHOLD_RULES.entry(rule)
    meta = base.checkpoint_meta
    split = split or meta.get("train_split") or "train"
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    pool = np.arange(len(data))
    _, certified_info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=certified_split)
    if certified_info["split"] == info["split"]:
        certified = select_inputs(len(data), capped_num_inputs(certified_inputs, len(data), info["split"], None),
                                  seed)
        pool = np.setdiff1d(pool, certified)
    if pool.size == 0:
        raise ValueError(f"threshold-split: split {info['split']} has no image outside the certified inputs")
    count = min(int(num_inputs), pool.size)
    picked = np.sort(np.random.default_rng([int(seed), STREAM_THRESHOLDS]).choice(pool, count, replace=False))
    images, labels = load_batch(data, picked)
    draws = int(entry.record.draws or 1000)
    smoother = base.load()
    if log is not None:
        log(f"choosing thresholds: rule {rule} on {count} {info['split']} images x {draws} noisy copies "
            "(none of them certified)")
    scores = smoother.engine.noisy_scores(images, draws, seed=seed, index=picked, stream=STREAM_THRESHOLDS)
    values = entry.load()(scores, labels, alpha=alpha, sigma=smoother.sigma, q=q)
    source = f"rule {rule} on {count} {info['split']} images disjoint from the certified inputs"
    return LabelThresholds(tuple(float(v) for v in values), "score", source)


def _compile_now(smoother: MultiGuard, example: torch.Tensor, batch_size: int, log: Log | None) -> None:
    """Compile the smoother's model on one forward batch now and say how long it took (or that it fell back)."""
    seconds = smoother.warm_up(example, batch_size=batch_size)
    if log is not None:
        if smoother.compile_seconds is not None:
            log(f"torch.compile: compiled in {seconds:.1f} s (not counted in the sampling time)")
        else:
            log(f"torch.compile: not compiled, the model runs eagerly ({smoother.compile_fallback})")


