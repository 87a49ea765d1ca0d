"""The steps the command line and the demo share: checkpoint -> RUN_DIR, checkpoint + images -> predictions,
and the offline demo (train -> certify -> report on the embedded multidigits dataset).

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

from . import report as _report
from . import runs as _runs
from .distributed import DistributedContext, init_distributed

__all__ = [
    "DemoResult",
    "ImagePrediction",
    "ProgressPrinter",
    "certify_checkpoint",
    "dataset_for_checkpoint",
    "predict_images",
    "run_demo",
]

Echo = Callable[[str], None]


# ---------------------------------------------------------------------------------------- progress


class ProgressPrinter:
    """Turns :class:`multiguard.runs.RunProgress` updates into a line every ``every`` seconds (and at the end)."""

    def __init__(self, echo: Echo, n: int, every: float = 5.0, prefix: str = "certify", header: str = "") -> None:
        self.echo, self.n, self.every, self.prefix, self.header = echo, int(n), float(every), prefix, header
        self._last = -1e9
        self._started = False

    def __call__(self, p: _runs.RunProgress) -> None:
        now = time.perf_counter()
        finished = p.done_inputs >= p.total_inputs
        if not self._started:  # the first call comes once the model, data and RUN_DIR are ready
            self._started = True
            if self.header:
                self.echo(f"{self.prefix}: {self.header}")
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
        self.echo(", ".join(parts))


# ------------------------------------------------------------------------------------------ certify


def dataset_for_checkpoint(
    meta: dict[str, Any],
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The dataset split to certify a checkpoint on, rebuilt as the checkpoint saw it.

    Defaults come from the checkpoint: its dataset, data root and test split. The images get the model's
    image size; multidigits is rebuilt from the training seed and size (the images are a function of them).
    Returns ``(dataset, description)`` with the fields a run records (dataset, data_root, split,
    dataset_options, image_size).
    """
    from .data import get_dataset

    name = dataset or meta["dataset"]
    same = name == meta["dataset"]
    root = data_root if data_root is not None else (meta.get("data_root") if same else None)
    split = split or (meta.get("test_split") if same else None)
    options: dict[str, Any] = dict(meta.get("dataset_options") or {}) if same else {}
    seed = int(meta.get("seed", 0))
    if name == "multidigits" and same:
        sizes = {meta.get("test_split"): meta.get("test_size"), meta.get("train_split"): meta.get("train_size")}
        if sizes.get(split) and "size" not in options:
            options["size"] = int(sizes[split])
    data = get_dataset(name, root=root, split=split, image_size=int(meta["image_size"]), seed=seed, **options)
    num_classes = len(data.class_names)
    if num_classes != int(meta["num_classes"]):
        raise ValueError(
            f"dataset: {name} has {num_classes} classes but the checkpoint's model predicts {meta['num_classes']}"
        )
    options_record = dict(options)
    if name == "multidigits":
        options_record["seed"] = seed
    info = {
        "dataset": name,
        "data_root": None if root is None else os.fspath(root),
        "split": getattr(data, "split", split),
        "dataset_options": options_record,
        "image_size": int(meta["image_size"]),
        "class_names": list(data.class_names),
    }
    return data, info


def certify_checkpoint(
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
    progress: Callable[[_runs.RunProgress], None] | None = None,
) -> _runs.RunResult:
    """Sample a checkpoint's counts on a dataset split into the RUN_DIR ``out`` (see :mod:`multiguard.runs`).

    ``sigma`` defaults to the training sigma, ``max_k_prime`` to min(5, number of classes), the dataset,
    root and split to the checkpoint's test split. ``context`` is a :func:`multiguard.distributed.init_distributed`
    context (made here from ``device`` when ``None``, and closed again).
    """
    from .smoothing import MultiGuard
    from .train import load_checkpoint

    own_context = context is None
    context = context or init_distributed(device)
    try:
        checkpoint = Path(checkpoint)
        model, meta = load_checkpoint(checkpoint, device=context.device)
        data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
        num_classes = int(meta["num_classes"])
        if max_k_prime is None:
            max_k_prime = min(5, num_classes)
        if not 1 <= int(max_k_prime) <= num_classes:
            raise ValueError(f"max_k_prime must be between 1 and the number of classes ({num_classes}), "
                             f"got {max_k_prime}")
        sigma = float(meta["sigma"]) if sigma is None else float(sigma)
        if not sigma > 0:
            raise ValueError(f"sigma must be > 0 to certify, got {sigma}")
        clamp = (0.0, 1.0) if meta.get("clamp") else None
        smoother = MultiGuard(model, num_classes, sigma, clamp=clamp, device=context.device)
        import torch

        metadata = {
            **info,
            "checkpoint": os.fspath(checkpoint),
            "checkpoint_sha256": _runs.file_sha256(checkpoint),
            "arch": meta["arch"],
            "num_classes": num_classes,
            "sigma": sigma,
            "train_sigma": float(meta["sigma"]),
            "clamp": None if clamp is None else list(clamp),
            "torch_version": str(torch.__version__),
        }
        return _runs.certify_run(
            out,
            sampler=smoother,
            dataset=data,
            n=n,
            max_k_prime=int(max_k_prime),
            seed=seed,
            num_inputs=num_inputs,
            chunk_size=chunk_size,
            batch_size=batch_size,
            metadata=metadata,
            resume=resume,
            shard=shard,
            context=context,
            progress=progress,
        )
    finally:
        if own_context:
            context.close()


# ------------------------------------------------------------------------------------------ predict


@dataclass
class ImagePrediction:
    """The smoothed prediction for one image file."""

    path: str
    labels: list[str]  # the k predicted class names, most frequent first
    radii: list[float]  # radii[e-1]: at least e of ``labels`` stay predicted within this l2 radius

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (infinite radii become the string ``"inf"``)."""
        return {
            "image": self.path,
            "labels": self.labels,
            "radii": [r if np.isfinite(r) else "inf" for r in self.radii],
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
) -> list[ImagePrediction]:
    """Predict k labels for each image file with the smoothed classifier and certify them (per-e radii).

    With probability at least ``1 - alpha`` per image, at least e of the returned labels stay among the
    smoothed classifier's top k under any perturbation of l2 norm below ``radii[e-1]`` (pixels in [0, 1]).
    """
    import torch

    from .data import load_image
    from .smoothing import MultiGuard
    from .train import load_checkpoint

    if not images:
        raise ValueError("images: name at least one image file")
    device_name = ("cuda" if torch.cuda.is_available() else "cpu") if device in (None, "auto") else device
    model, meta = load_checkpoint(checkpoint, device=device_name)
    num_classes = int(meta["num_classes"])
    if not 1 <= int(k) <= num_classes:
        raise ValueError(f"k must be between 1 and the number of classes ({num_classes}), got {k}")
    size, channels = int(meta["image_size"]), int(meta.get("in_channels", 3))
    batch = torch.stack([load_image(path, size, channels) for path in images])
    sigma = float(meta["sigma"]) if sigma is None else float(sigma)
    clamp = (0.0, 1.0) if meta.get("clamp") else None
    smoother = MultiGuard(model, num_classes, sigma, k_prime=k_prime, clamp=clamp, device=device_name)
    result = smoother.predict(batch, k=k, n0=n0, n=n, alpha=alpha, seed=seed, batch_size=batch_size)
    names = list(meta["class_names"])
    return [
        ImagePrediction(os.fspath(path), [names[j] for j in result.labels[i]], [float(r) for r in result.radii[i]])
        for i, path in enumerate(images)
    ]


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


def run_demo(
    out: str | os.PathLike[str] = "multiguard-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    echo: Echo = print,
) -> DemoResult:
    """Train small_cnn on multidigits with noise (sigma = 0.5), certify test inputs for every k' <= 3 with
    n = 1000, and report MultiGuard vs Jia et al. (k' = 1, k = 3) and the k and k' ablations.

    Files in ``out``: ``model.pt``, ``run/`` (the RUN_DIR), ``report/`` (comparison), ``report-k/`` and
    ``report-k-prime/`` (ablations), and ``figure.png`` (the three rows side by side, as the paper's
    Figure 1). Running it again reuses a finished model and run; a killed demo continues where it stopped.
    """
    from .train import train

    settings = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, run_dir = out / "model.pt", out / "run"
    seconds: dict[str, float] = {}
    sigma, seed, max_k_prime = 0.5, 0, 3

    started = time.perf_counter()
    echo(f"[1/3] training small_cnn on multidigits with Gaussian noise sigma = {sigma} "
         f"({settings['epochs']} epochs of {settings['train_size']} images)")
    train_args: dict[str, Any] = dict(
        arch="small_cnn", sigma=sigma, epochs=settings["epochs"], seed=seed, out=checkpoint, device=device,
        progress=False, train_size=settings["train_size"], test_size=settings["test_size"], lr=settings["lr"],
        log=lambda line: echo("      " + line),
    )
    try:
        _, meta = train("multidigits", resume=True, **train_args)
    except ValueError:  # a model.pt from other settings (e.g. --quick after a full demo): train afresh
        echo("      model.pt was trained with other settings: training a new one")
        _, meta = train("multidigits", resume=False, **train_args)
    last = meta["metrics"][-1]
    echo(f"      test mAP: clean {last['clean_map']:.3f}, noisy {last['noisy_map']:.3f}")
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    echo(f"[2/3] certifying {settings['num_inputs']} random test inputs: n = {settings['n']} noisy samples each, "
         f"counts for every k' <= {max_k_prime}")
    certify_args: dict[str, Any] = dict(
        n=settings["n"], max_k_prime=max_k_prime, num_inputs=settings["num_inputs"], seed=seed, device=device,
        progress=ProgressPrinter(lambda line: echo("      " + line), settings["n"]),
    )
    try:
        result = certify_checkpoint(checkpoint, run_dir, resume=True, **certify_args)
    except ValueError as exc:
        if not _runs.is_run(run_dir) or not str(exc).startswith("resume:"):
            raise
        echo(f"      {run_dir} holds a run with other settings ({exc}); starting it over")
        shutil.rmtree(run_dir)
        result = certify_checkpoint(checkpoint, run_dir, resume=False, **certify_args)
    if not result.complete:
        raise ValueError(f"run: {run_dir} is unfinished")
    seconds["certify"] = time.perf_counter() - started

    started = time.perf_counter()
    echo("[3/3] reporting from the saved counts (no model)")
    run = _runs.load_run(run_dir)
    radii = "0:2:0.05"  # with sigma = 0.5, n = 1000 no radius reaches 2
    reports = {
        "report": _report.make_report(
            [run], out / "report", k=[3], k_prime=[1], names=["multidigits"], radii=radii,
            title="MultiGuard vs Jia et al. (k' = 1, k = 3)",
        ),
        "report-k-prime": _report.make_report(
            [run], out / "report-k-prime", k=[3], k_prime=[1, 2, 3], methods=["multiguard"],
            names=["multidigits"], radii=radii, title="Impact of k' (k = 3)",
        ),
        "report-k": _report.make_report(
            [run], out / "report-k", k=[1, 2, 3, 4, 5], k_prime=[1], methods=["multiguard"],
            names=["multidigits"], radii=radii, title="Impact of k (k' = 1)",
        ),
    }
    figure = out / "figure.png"
    _report.plot_figure(
        [
            ("MultiGuard vs Jia et al.", reports["report"].curves),
            ("Impact of k'", reports["report-k-prime"].curves),
            ("Impact of k", reports["report-k"].curves),
        ],
        figure,
    )
    seconds["report"] = time.perf_counter() - started
    return DemoResult(out, checkpoint, run_dir, reports, figure, seconds)
