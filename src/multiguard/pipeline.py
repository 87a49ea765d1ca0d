"""The steps the command line and the demo share: checkpoint -> RUN_DIR, checkpoint + images -> predictions,
checkpoint -> ATTACK_DIR, and the offline demo (train -> certify -> report on the embedded multidigits dataset).

Each function glues library pieces together (:mod:`multiguard.train` checkpoints, :mod:`multiguard.data`,
:class:`multiguard.smoothing.MultiGuard`, :mod:`multiguard.runs`, :mod:`multiguard.report`) and reports
progress through a callback; nothing here parses arguments or prints on its own.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import certify as _certify
from . import report as _report
from . import runs as _runs
from .attack import attack_smoothed
from .base_classifier import BaseClassifierSpec, ModeSpec
from .checkpoints import dataset_for_checkpoint, load_checkpoint, read_checkpoint, smoothed_from_checkpoint
from .denoisers import denoiser_record
from .deprecation import deprecated_names
from .devices import resolve_device
from .distributed import DistributedContext, init_distributed
from .empirical import EMPIRICAL_CSV, PER_INPUT, SETTINGS, EmpiricalCurves, write_attack_dir
from .runspec import RunSpec, StopRule
from .seeds import attack_evaluation_seed
from .smoothing import MultiGuard
from .validation import MAX_N, RunMismatchError, check_alpha, check_int

__all__ = [
    "AttackRun",
    "DemoResult",
    "ImagePrediction",
    "ProgressPrinter",
    "certify_base_classifier",
    "sample_checkpoint",
    "predict_images",
    "run_attack",
    "run_demo",
    "run_denoised_demo",
]

Log = Callable[[str], None]
"""A line callback: called with one line of progress text (``print`` prints it)."""


# ---------------------------------------------------------------------------------------- progress


class ProgressPrinter:
    """Turns :class:`multiguard.runs.RunProgress` updates into a line every ``every`` seconds (and at the end)."""

    def __init__(self, log: Log, n: int, every: float = 5.0, prefix: str = "certify", header: str = "") -> None:
        self.log, self.n, self.every, self.prefix, self.header = log, int(n), float(every), prefix, header
        self._last = -1e9
        self._started = False
        self.repairs_shown: tuple[str, ...] = ()  # the repairs of a resume printed so far

    def __call__(self, p: _runs.RunProgress) -> None:
        now = time.perf_counter()
        finished = p.done_inputs >= p.total_inputs
        if not self._started:  # the first call comes once the model, data and RUN_DIR are ready
            self._started = True
            if self.header:
                self.log(f"{self.prefix}: {self.header}")
            for line in p.repairs:  # what a resume found damaged (a chunk cut short, ...) and redoes
                self.log(f"{self.prefix}: {line}")
            self.repairs_shown = tuple(p.repairs)
            if not p.skipped_inputs and not finished:
                return
        elif not finished and now - self._last < self.every:
            return
        self._last = now
        parts = [f"{self.prefix}: {p.done_inputs}/{p.total_inputs} inputs"]
        if p.skipped_inputs:
            parts.append(f"{p.skipped_inputs} found on disk")
        if p.new_inputs:
            rate = p.samples_per_second
            left = (p.total_inputs - p.done_inputs) * self.n / rate if rate > 0 else 0.0
            parts.append(f"{rate:,.0f} samples/s")
            parts.append(f"{p.seconds:.0f} s" + ("" if finished else f", about {left:.0f} s left"))
        self.log(", ".join(parts))


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
    on_progress: Callable[[_runs.RunProgress], None] | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
    log: Log | None = None,
    stop_rule: StopRule | dict[str, Any] | None = None,
    denoiser: str | os.PathLike[str] | None = None,
    mode: Any = None,
) -> _runs.RunResult:
    """Sample a checkpoint's counts on a dataset split into the RUN_DIR ``out`` (see :mod:`multiguard.runs`).

    A keyword front for :func:`certify_base_classifier`: it makes the
    :class:`~multiguard.base_classifier.BaseClassifierSpec` (checkpoint, ``denoiser``, ``sigma``, the sampling
    mode: ``mode`` whole, or ``precision``, ``channels_last``, ``compile``) and passes the plan on.

    ``sigma`` defaults to the training sigma, ``max_k_prime`` to min(5, number of classes), the dataset,
    root and split to the checkpoint's test split. A ``num_inputs`` larger than the split means the whole
    split (said through ``log``). ``context`` is a :func:`multiguard.distributed.init_distributed`
    context (made here from ``device`` when ``None``, and closed again). ``stop_rule`` (a
    :class:`~multiguard.runspec.StopRule` or ``{radius, k, k_prime, alpha, futility}``) makes the run
    sequential.
    """
    stop_rule = StopRule.coerce(stop_rule)
    check_int(n, "n", 1, MAX_N)  # before the model is loaded or any file made
    mode = mode if mode is not None else ModeSpec(precision, channels_last, compile)
    own_context = context is None
    context = context or init_distributed(device)
    try:
        base = BaseClassifierSpec(checkpoint, sigma=sigma, mode=mode, denoiser=denoiser, device=context.device,
                                  k_prime=1 if stop_rule is None else stop_rule.k_prime)
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
    on_progress: Callable[[_runs.RunProgress], None] | None = None,
    log: Log | None = None,
) -> _runs.RunResult:
    """Sample the counts of the base classifier ``base`` on a dataset split into the RUN_DIR ``out``.

    Steps: load the smoothed classifier once (``base.load()``), rebuild the checkpoint's dataset split, make
    the :class:`~multiguard.runspec.RunSpec` from the plan, the base classifier's and the data's records,
    compile the model now with ``compile`` (one line through ``log`` with the compile time, kept out of the
    sampling rate), and run :func:`multiguard.runs.sample_run`.
    """
    context = context or _runs.SingleProcess(device=base.resolved_device)
    meta = base.checkpoint_meta
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    num_inputs = capped_num_inputs(num_inputs, len(data), info["split"], log)
    num_classes = int(meta["num_classes"])
    max_k_prime = check_int(min(5, num_classes) if max_k_prime is None else max_k_prime, "max_k_prime", 1,
                            num_classes, high_label="the number of classes")
    if stop_rule is not None:
        check_int(stop_rule.k_prime, "k_prime", 1, max_k_prime, high_label="max_k_prime")
    smoother = base.load()
    spec = RunSpec(
        **base.run_fields(), dataset=info["dataset"], dataset_options=info["dataset_options"], split=info["split"],
        image_size=info["image_size"], n=n, seed=seed, max_k_prime=max_k_prime,
        num_inputs=num_inputs, chunk_size=chunk_size,
        batch_size=batch_size, stop_rule=stop_rule,
        record={"data_root": info["data_root"], "class_names": info["class_names"], **base.record()},
    )
    if smoother.mode.compile and len(data):
        _compile_now(smoother, data[0][0][None], batch_size, log)
    return _runs.sample_run(out, spec, sampler=smoother, dataset=data, resume=resume, shard=shard, context=context,
                            on_progress=on_progress)


def _compile_now(smoother: MultiGuard, example: torch.Tensor, batch_size: int, log: Log | None) -> None:
    """Compile the smoother's model on one forward batch now and say how long it took (or that it fell back)."""
    seconds = smoother.warm_up(example, batch_size=batch_size)
    if log is not None:
        if smoother.compile_seconds is not None:
            log(f"torch.compile: compiled in {seconds:.1f} s (not counted in the sampling time)")
        else:
            log(f"torch.compile: not compiled, the model runs eagerly ({smoother.compile_fallback})")


def _certify_checkpoint(checkpoint: str | os.PathLike[str], out: str | os.PathLike[str], *,
                        progress: Callable[[_runs.RunProgress], None] | None = None, **kwargs: Any
                        ) -> _runs.RunResult:
    """The former name of :func:`sample_checkpoint`."""
    return sample_checkpoint(checkpoint, out, on_progress=progress, **kwargs)


__getattr__ = deprecated_names(__name__, {
    "certify_checkpoint": ("multiguard.pipeline.sample_checkpoint", lambda: _certify_checkpoint),
})


# ------------------------------------------------------------------------------------------ predict


@dataclass
class ImagePrediction:
    """The smoothed prediction for one image file."""

    path: str
    labels: list[str]  # the k predicted class names, most frequent first
    radii: list[float]  # radii[e-1]: at least e of ``labels`` stay predicted within this l2 radius
    # e <= trivial holds by counting alone: any k of the c classes keep at least k - (c - k) of these k labels
    trivial: int = 0
    num_classes: int = 0
    mode: dict[str, Any] = field(default_factory=dict)  # the sampling mode: precision, channels_last, compile
    samples: int | None = None  # estimation samples used (n unless sampling stopped early)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (infinite radii become the string ``"inf"``; ``trivial[e-1]``: whether the guarantee
        for e holds by counting alone, whatever the model)."""
        return {
            "image": self.path,
            "labels": self.labels,
            "radii": [r if np.isfinite(r) else "inf" for r in self.radii],
            "trivial": [e <= self.trivial for e in range(1, len(self.radii) + 1)],
            "mode": self.mode,
            "samples": self.samples,
        }


def predict_images(
    checkpoint: str | os.PathLike[str],
    images: Sequence[str | os.PathLike[str]],
    *,
    k: int = 3,
    k_prime: int = 1,
    n0: int = 100,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    sigma: float | None = None,
    batch_size: int = 1000,
    device: str = "auto",
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
    stop_at_radius: float | None = None,
    futility: str = "remaining",
    denoiser: str | os.PathLike[str] | None = None,
) -> list[ImagePrediction]:
    """Predict k labels for each image file with the smoothed classifier and certify them (per-e radii).

    With probability at least ``1 - alpha`` per image, at least e of the returned labels stay among the
    smoothed classifier's top k under any perturbation of l2 norm below ``radii[e-1]`` (pixels in [0, 1]).
    The guarantee is for the base classifier in the sampling mode given by ``precision``, ``channels_last``
    and ``compile`` (recorded in each prediction's ``mode``); to claim a run's certificate, use the run's mode.
    ``stop_at_radius``: sample each image only until the number of its labels certified at that radius is
    settled (n is then the most samples; see :meth:`MultiGuard.predict`); ``samples`` says how many it used.
    ``denoiser``: a denoiser checkpoint in front of the classifier (denoised smoothing).
    """
    from .data import load_image

    if not images:
        raise ValueError("images: name at least one image file")
    for path in images:
        if Path(path).is_dir():
            raise ValueError(f"images: {path} is a folder; name the image files in it (e.g. {Path(path) / '*.png'})")
    model, meta = load_checkpoint(checkpoint, device=resolve_device(device))
    num_classes = int(meta["num_classes"])
    k = check_int(k, "k", 1, num_classes, high_label="the number of classes")
    size, channels = int(meta["image_size"]), int(meta.get("in_channels", 3))
    batch = torch.stack([load_image(path, size, channels) for path in images])
    smoother = smoothed_from_checkpoint(model, meta, k_prime=k_prime, sigma=sigma, device=device,
                                        precision=precision, channels_last=channels_last, compile=compile,
                                        denoiser=denoiser)
    result = smoother.predict(batch, k=k, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size,
                              stop_at_radius=stop_at_radius, futility=futility)
    names = list(meta["class_names"])
    trivial = _certify.trivial_intersection_size(result.mask, k)
    mode = smoother.mode.as_metadata()
    return [
        ImagePrediction(os.fspath(path), [names[j] for j in result.labels[i]], [float(r) for r in result.radii[i]],
                        trivial=int(trivial[i]), num_classes=num_classes, mode=dict(mode),
                        samples=int(result.samples[i]))
        for i, path in enumerate(images)
    ]


# ------------------------------------------------------------------------------------------- attack


@dataclass(frozen=True, eq=False)
class AttackRun:
    """What :func:`run_attack` computed and wrote.

    Attributes:
        out_dir: the ATTACK_DIR.
        curves: the empirical curves (as :func:`load_empirical` reads them back).
        indices: int64 ``(N,)`` dataset indices attacked; labels: bool ``(N, c)``.
        sizes: int64 ``(N, R)`` empirical ``|L ∩ top-k|`` under attack at each radius.
        certified: int64 ``(N, R)`` certified sizes of the same inputs (``None`` without ``certify``).
        violations: int64 ``(R,)``: inputs with ``sizes < certified`` at each radius (``None`` likewise).
        delta_norms: float ``(N, R)``.
    """

    out_dir: Path
    curves: EmpiricalCurves
    indices: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    certified: np.ndarray | None
    violations: np.ndarray | None
    delta_norms: np.ndarray


def _as_radii(radii: object) -> np.ndarray:
    if isinstance(radii, str):
        try:
            radii = [float(part) for part in radii.split(",") if part.strip()]
        except ValueError:
            raise ValueError(f"radii must be comma-separated numbers, got {radii!r}") from None
    array = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    if array.ndim != 1 or array.size == 0 or not np.isfinite(array).all() or (array < 0).any():
        raise ValueError(f"radii must be a non-empty list of finite radii >= 0, got {radii!r}")
    return array


def run_attack(
    checkpoint_path: str | os.PathLike[str],
    *,
    out_dir: str | os.PathLike[str],
    radii: Sequence[float] | np.ndarray | str,
    k: int,
    k_prime: int = 1,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
    num_inputs: int | None = 100,
    steps: int = 20,
    samples: int = 32,
    n: int = 1000,
    alpha: float = 0.001,
    seed: int = 0,
    sigma: float | None = None,
    step_size: float | None = None,
    temperature: float = 1.0,
    certify: bool = True,
    batch_size: int = 1000,
    device: str | torch.device = "auto",
    log: Callable[[str], None] | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
    denoiser: str | os.PathLike[str] | None = None,
) -> AttackRun:
    """Attack a checkpoint's smoothed classifier on a dataset split at several radii; write ``out_dir``.

    The inputs are the ones a certify run with the same ``seed`` and ``num_inputs`` certifies
    (:func:`multiguard.runs.select_inputs`), with their dataset indices as noise indices; dataset, root, split
    and sigma default to the checkpoint's (as ``multiguard certify``). L is the ground truth.

    Writes (each atomically: a temporary name in ``out_dir``, then a rename):

    - ``empirical.csv``: columns :data:`EMPIRICAL_COLUMNS` = ``radius,precision,recall,f1,num_inputs``, one
      row per radius, the metrics of :func:`multiguard.certify.certified_metrics` on the empirical sizes;
    - ``per_input.npz``: ``indices, labels, radii, sizes, delta_norms`` and, with ``certify``, ``certified``;
    - ``attack.json``: the settings and, with ``certify``, ``violations`` (per radius, inputs whose empirical
      size fell below the certified one: each is a certificate failure, of probability at most alpha, or
      Monte Carlo error of the measurement).

    With ``certify`` the certified sizes come from n samples at ``x`` drawn exactly as a certify run with this
    ``seed`` draws them (bounds at ``alpha``, Theorem 1 with k and k').

    ``precision``, ``channels_last`` and ``compile`` set the sampling mode of the smoothed classifier that is
    certified and measured (the PGD steps take gradients of the model itself, uncompiled, in fp32); the mode
    is recorded in ``attack.json``. Compare with a certify run made in the same mode.
    ``denoiser``: a denoiser checkpoint in front of the classifier; the attack then differentiates through it
    (``attack.json`` records it).
    """
    radii_arr = _as_radii(radii)
    k = check_int(k, "k", 1)
    k_prime = check_int(k_prime, "k_prime", 1)
    n = check_int(n, "n", 1, MAX_N)
    seed = check_int(seed, "seed", 0)
    alpha = check_alpha(alpha)
    log = log or (lambda line: None)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or not {p.name for p in out.iterdir()} <= {EMPIRICAL_CSV, PER_INPUT,
                                                                                       SETTINGS}):
        raise ValueError(f"out: {out} holds other files than an attack's; choose a new --out")  # never mix or lose
    device = resolve_device(device)
    model, meta = load_checkpoint(checkpoint_path, device=device)
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    num_classes = int(meta["num_classes"])
    k = check_int(k, "k", 1, num_classes, high_label="the number of classes")
    k_prime = check_int(k_prime, "k_prime", 1, num_classes, high_label="the number of classes")
    smoother = smoothed_from_checkpoint(model, meta, k_prime=k_prime, sigma=sigma, device=device,
                                        precision=precision, channels_last=channels_last, compile=compile,
                                        denoiser=denoiser)
    sigma, clamp = smoother.sigma, smoother.clamp
    indices = _runs.select_inputs(len(data), capped_num_inputs(num_inputs, len(data), info["split"], log), seed)
    x, labels = _runs.load_batch(data, indices)
    if smoother.mode.compile and len(indices):
        _compile_now(smoother, x[:1], batch_size, log)

    certified = violations = None
    if certify:
        counts = smoother.sample_counts(x, n, seed=seed, index=indices, batch_size=batch_size)
        lower, upper = _certify.label_probability_bounds(counts, n, alpha)
        certified = _certify.certified_intersection_size(
            lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma, radius=radii_arr
        )
    sizes = np.zeros((len(indices), radii_arr.size), dtype=np.int64)
    norms = np.zeros((len(indices), radii_arr.size))
    # Blocks of inputs, so that progress shows; the noise of each input depends on (seed, index) only, so the
    # result is the same as one call on all inputs.
    block = max(1, batch_size // max(1, samples))
    total = len(indices) * radii_arr.size
    started = last = time.perf_counter()
    log(f"attack: {len(indices)} inputs x {radii_arr.size} radii, {steps} PGD steps of {samples} samples, "
        f"then n = {n} samples to measure")
    for j, radius in enumerate(radii_arr):
        for begin in range(0, len(indices), block):
            part = slice(begin, begin + block)
            result = attack_smoothed(
                smoother, x[part], labels[part], radius=float(radius), k=k, steps=steps, samples=samples, n=n,
                seed=seed, index=indices[part], step_size=step_size, temperature=temperature, batch_size=batch_size,
            )
            sizes[part, j] = result.sizes
            norms[part, j] = result.deltas.reshape(len(result.sizes), -1).double().norm(dim=1).numpy()
            now = time.perf_counter()
            done = j * len(indices) + min(begin + block, len(indices))
            if now - last >= 5.0 and done < total:
                last = now
                left = (now - started) / done * (total - done)
                log(f"attack: R = {radius:g}: {min(begin + block, len(indices))}/{len(indices)} inputs, "
                    f"{now - started:.0f} s, about {left:.0f} s left")
        log(f"attack: R = {radius:g}: mean |L ∩ top-k| {sizes[:, j].mean():.3f} over {len(indices)} inputs "
            f"({time.perf_counter() - started:.0f} s)")
    if certified is not None:
        violations = (sizes < certified).sum(axis=0).astype(np.int64)

    metrics = _certify.certified_metrics(sizes, labels, k)
    curves = EmpiricalCurves(
        radius=radii_arr, precision=np.asarray(metrics.precision), recall=np.asarray(metrics.recall),
        f1=np.asarray(metrics.f1), num_inputs=int(len(indices)),
    )
    arrays: dict[str, np.ndarray] = dict(indices=indices, labels=labels, radii=radii_arr, sizes=sizes,
                                         delta_norms=norms)
    if certified is not None:
        arrays["certified"] = certified
    settings = {
        "checkpoint": os.fspath(checkpoint_path),
        **denoiser_record(denoiser),
        **{key: info[key] for key in ("dataset", "data_root", "split", "dataset_options") if key in info},
        "k": k, "k_prime": k_prime, "sigma": sigma, "clamp": None if clamp is None else list(clamp), "n": n,
        "alpha": float(alpha), "seed": seed, "eval_seed": attack_evaluation_seed(seed), "steps": steps,
        "samples": samples, "step_size": step_size, "temperature": temperature, "num_inputs": int(len(indices)),
        "radii": radii_arr.tolist(), **smoother.mode.as_metadata(),
        "violations": None if violations is None else violations.tolist(),
    }  # fmt: skip
    write_attack_dir(out, curves, arrays, settings)
    return AttackRun(
        out_dir=out, curves=EmpiricalCurves(**{**curves.__dict__, "settings": settings}), indices=indices,
        labels=labels, sizes=sizes, certified=certified, violations=violations, delta_norms=norms,
    )


# --------------------------------------------------------------------------------------------- demo


@dataclass
class DemoResult:
    """Where the demo put its files and what it measured."""

    out: Path
    checkpoint: Path
    run_dir: Path
    reports: dict[str, _report.Report]
    figure: Path
    seconds: dict[str, float] = field(default_factory=dict)


DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    # full: the paper's protocol at laptop scale (500 test inputs, n = 1000); about 2 minutes on 2 cores
    # lr 3e-3 rather than the paper's 1e-3: in 8 epochs small_cnn is still under-fitted at 1e-3 (noisy-test
    # mAP 0.884 against 0.906, docs/training.md)
    "full": {"epochs": 8, "train_size": 8000, "test_size": 2000, "num_inputs": 500, "n": 1000, "lr": 3e-3},
    # quick: a smaller model budget and 100 inputs; well under 90 s
    "quick": {"epochs": 4, "train_size": 4000, "test_size": 1000, "num_inputs": 100, "n": 1000, "lr": 3e-3},
}


def _demo_run(checkpoint: Path, run_dir: Path, say: Log, **kwargs: Any) -> _runs.RunResult:
    """A demo's RUN_DIR, finished: continued where a killed demo left it, or started over (saying so) when it
    holds a run with other settings (e.g. a --quick run after a full one). ``say`` tells the user; ``kwargs``
    go to :func:`sample_checkpoint`."""
    try:
        result = sample_checkpoint(checkpoint, run_dir, resume=True, **kwargs)
    except RunMismatchError as exc:
        say(f"{run_dir} holds a run with other settings ({exc}); starting it over")
        shutil.rmtree(run_dir)
        result = sample_checkpoint(checkpoint, run_dir, resume=False, **kwargs)
    if not result.complete:
        raise ValueError(f"run: {run_dir} is unfinished")
    return result


def run_demo(
    out: str | os.PathLike[str] = "multiguard-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    log: Log = print,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = True,
) -> DemoResult:
    """Train small_cnn on multidigits with noise (sigma = 0.5), certify test inputs for every k' <= 3 with
    n = 1000, and report MultiGuard vs Jia et al. (k' = 1, k = 3) and the k and k' ablations.

    Files in ``out``: ``model.pt``, ``run/`` (the RUN_DIR), ``report/`` (comparison), ``report-k/``,
    ``report-k-prime/`` and ``report-n/`` (ablations; the impact of n reads the run's nested counts at n = 100,
    200, 500, 1000), and ``figure.png`` (the rows side by side, as the paper's Figure 1). Running it again
    reuses a finished model and run; a killed demo continues where it stopped.

    Sampling runs in the fastest safe mode by default: ``precision="auto"`` (bf16 + channels_last where the
    device has native bf16) and ``compile``; the run records the mode and the report names it.
    """
    from .train import train

    settings = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, run_dir = out / "model.pt", out / "run"
    seconds: dict[str, float] = {}
    sigma, seed, max_k_prime = 0.5, 0, 3

    started = time.perf_counter()
    log(f"[1/3] training small_cnn on multidigits with Gaussian noise sigma = {sigma} "
         f"({settings['epochs']} epochs of {settings['train_size']} images)")
    train_args: dict[str, Any] = dict(
        arch="small_cnn", sigma=sigma, epochs=settings["epochs"], seed=seed, out=checkpoint, device=device,
        progress=False, train_size=settings["train_size"], test_size=settings["test_size"], lr=settings["lr"],
        log=lambda line: log("      " + line),
    )
    try:
        _, meta = train("multidigits", resume=True, **train_args)
    except RunMismatchError:  # a demo model.pt from other settings (e.g. --quick after a full demo): train afresh
        saved = read_checkpoint(checkpoint)["meta"]
        if (saved.get("dataset"), saved.get("arch")) != ("multidigits", "small_cnn"):  # never replace a user's model
            raise ValueError(f"out: {checkpoint} is a model of another kind ({saved.get('arch')} on "
                             f"{saved.get('dataset')}), not the demo's; choose another --out") from None
        log("      model.pt was trained with other settings: training a new one")
        _, meta = train("multidigits", resume=False, overwrite=True, **train_args)
    last = meta["metrics"][-1]
    log(f"      test mAP: clean {last['clean_map']:.3f}, noisy {last['noisy_map']:.3f}")
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    log(f"[2/3] certifying {settings['num_inputs']} random test inputs: n = {settings['n']} noisy samples each, "
         f"counts for every k' <= {max_k_prime}")
    certify_args: dict[str, Any] = dict(
        n=settings["n"], max_k_prime=max_k_prime, num_inputs=settings["num_inputs"], seed=seed, device=device,
        on_progress=ProgressPrinter(lambda line: log("      " + line), settings["n"]),
        precision=precision, channels_last=channels_last, compile=compile, log=lambda line: log("      " + line),
    )
    _demo_run(checkpoint, run_dir, lambda line: log("      " + line), **certify_args)
    seconds["certify"] = time.perf_counter() - started

    started = time.perf_counter()
    log("[3/3] reporting from the saved counts (no model)")
    run = _runs.load_run(run_dir)
    grid = "0:2:0.05"  # with sigma = 0.5, n = 1000 no radius reaches 2
    reports = {
        "report": _report.make_report(
            [run], out / "report", k=[3], k_prime=[1], names=["multidigits"], radius_grid=grid,
            title="MultiGuard vs Jia et al. (k' = 1, k = 3)",
        ),
        "report-k-prime": _report.make_report(
            [run], out / "report-k-prime", k=[3], k_prime=[1, 2, 3], methods=["multiguard"],
            names=["multidigits"], radius_grid=grid, title="Impact of k' (k = 3)",
        ),
        "report-k": _report.make_report(
            [run], out / "report-k", k=[1, 2, 3, 4, 5], k_prime=[1], methods=["multiguard"],
            names=["multidigits"], radius_grid=grid, title="Impact of k (k' = 1)",
        ),
    }
    sizes = run.sample_sizes
    if run.nested_counts is not None and sizes is not None:  # a run from before nested counts has none
        reports["report-n"] = _report.make_report(
            [run], out / "report-n", k=[3], k_prime=[1], methods=["multiguard"], names=["multidigits"],
            radius_grid=grid, n=[int(size) for size in sizes], title="Impact of n (k' = 1, k = 3)",
        )
    else:
        log(f"      {run_dir} holds no nested counts (certified by an older version): no impact-of-n report")
    figure = out / "figure.png"
    _report.plot_figure(
        [
            ("MultiGuard vs Jia et al.", reports["report"].curves),
            ("Impact of k'", reports["report-k-prime"].curves),
            ("Impact of k", reports["report-k"].curves),
            *([("Impact of n", reports["report-n"].curves)] if "report-n" in reports else []),
        ],
        figure,
    )
    seconds["report"] = time.perf_counter() - started
    return DemoResult(out, checkpoint, run_dir, reports, figure, seconds)


# ---------------------------------------------------------------------------------- the denoised demo


DENOISED_DEMO_SETTINGS: dict[str, Any] = {
    # classifiers: small_cnn, 4 epochs of 4000 multidigits images at lr 3e-3, one without noise, one with
    "classifier": {"epochs": 4, "train_size": 4000, "test_size": 1000, "lr": 3e-3},
    # denoisers: the default dncnn (width 16, depth 4); MSE first, then stability started from it
    "denoiser": {"arch": "dncnn", "train_size": 4000, "test_size": 500, "mse_epochs": 4, "stability_epochs": 8},
    # certification of every variant on the same inputs: 100 test inputs, n = 500
    "num_inputs": 100, "n": 500,
}  # fmt: skip


@dataclass
class DenoisedDemoResult:
    """Where the denoised demo put its files and what it measured."""

    out: Path
    runs: dict[str, Path]
    report: _report.Report
    seconds: dict[str, float] = field(default_factory=dict)


def run_denoised_demo(
    out: str | os.PathLike[str] = "multiguard-demo/denoised",
    *,
    device: str = "auto",
    log: Log = print,
) -> DenoisedDemoResult:
    """Denoised smoothing on multidigits at sigma = 0.5: a classifier trained without noise, alone, behind an MSE
    denoiser and behind a stability denoiser, against a classifier trained with noise; all four certified on the
    same test inputs (``DENOISED_DEMO_SETTINGS``) and compared in one report (k = 3, k' = 1).

    Files in ``out``: ``clean.pt``, ``noisy.pt`` (classifiers), ``denoiser-mse.pt``, ``denoiser-stability.pt``,
    ``run-<variant>/`` (RUN_DIRs) and ``report/``. Running it again reuses what is finished.
    """
    from .denoise_train import train_denoiser
    from .train import train

    settings = DENOISED_DEMO_SETTINGS
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sigma, seed = 0.5, 0
    seconds: dict[str, float] = {}

    def indent(line: str) -> None:
        log("      " + line)

    started = time.perf_counter()
    paths = {"clean": out / "clean.pt", "noisy": out / "noisy.pt"}
    for name, train_sigma in (("clean", 0.0), ("noisy", sigma)):
        noise = "without noise" if train_sigma == 0 else f"with noise sigma = {sigma}"
        log(f"[1/4] training small_cnn on multidigits {noise}")
        train("multidigits", arch="small_cnn", sigma=train_sigma, seed=seed, out=paths[name], resume=True,
              device=device, progress=False, log=indent, **settings["classifier"])
    seconds["classifiers"] = time.perf_counter() - started

    started = time.perf_counter()
    den = settings["denoiser"]
    common = dict(sigma=sigma, arch=den["arch"], classifier=paths["clean"], seed=seed, resume=True, device=device,
                  progress=False, train_size=den["train_size"], test_size=den["test_size"], log=indent)
    paths["mse"], paths["stability"] = out / "denoiser-mse.pt", out / "denoiser-stability.pt"
    log(f"[2/4] training a {den['arch']} denoiser for sigma = {sigma} with the MSE objective (no labels)")
    train_denoiser("multidigits", objective="mse", epochs=den["mse_epochs"], out=paths["mse"], **common)
    log("[3/4] fine-tuning it with the stability objective through the frozen clean classifier (no labels)")
    train_denoiser("multidigits", objective="stability", epochs=den["stability_epochs"], pretrained=paths["mse"],
                   out=paths["stability"], **common)
    seconds["denoisers"] = time.perf_counter() - started

    started = time.perf_counter()
    variants = {  # name -> (classifier, denoiser)
        "clean alone": (paths["clean"], None),
        "clean + MSE denoiser": (paths["clean"], paths["mse"]),
        "clean + stability denoiser": (paths["clean"], paths["stability"]),
        "noise-trained": (paths["noisy"], None),
    }
    log(f"[4/4] certifying each variant on the same {settings['num_inputs']} test inputs, n = {settings['n']}")
    run_dirs: dict[str, Path] = {}
    for name, (checkpoint, denoiser) in variants.items():
        run_dir = out / ("run-" + name.replace(" + ", "-").replace(" ", "-"))
        args: dict[str, Any] = dict(n=settings["n"], max_k_prime=1, num_inputs=settings["num_inputs"], seed=seed,
                                    sigma=sigma, device=device, denoiser=denoiser,
                                    on_progress=ProgressPrinter(indent, settings["n"], prefix=name))
        _demo_run(checkpoint, run_dir, indent, **args)
        run_dirs[name] = run_dir
    seconds["certify"] = time.perf_counter() - started

    report = _report.make_report(
        [_runs.load_run(path) for path in run_dirs.values()], out / "report", k=[3], k_prime=[1],
        methods=["multiguard"], names=list(run_dirs), radius_grid="0:1.5:0.05",
        title=f"Denoised smoothing on multidigits (sigma = {sigma}, k = 3, k' = 1)",
    )
    return DenoisedDemoResult(out, run_dirs, report, seconds)
