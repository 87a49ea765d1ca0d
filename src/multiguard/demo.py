"""The offline demos: train -> certify -> report on the embedded multidigits dataset (``multiguard demo``), and
the denoised-smoothing demo (``multiguard demo --denoised``)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiguard.common.progress import Log, ProgressPrinter
from multiguard.common.torch_files import read_checkpoint
from multiguard.common.validation import RunMismatchError
from multiguard.evaluation import curves as _curves
from multiguard.evaluation import plots as _plots
from multiguard.evaluation import report as _report
from multiguard.evaluation import tables as _tables
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.certify_step import sample_checkpoint

__all__ = ["DEMO_SETTINGS", "DENOISED_DEMO_SETTINGS", "DemoResult", "DenoisedDemoResult", "run_demo",
           "run_denoised_demo"]



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


DEMO_THRESHOLD = 0.5
"""The demo's base classifier is also thresholded: a label is on in a noisy copy when its sigmoid probability
exceeds 0.5 (logit > 0), so its run stores per-label on-counts and ``report-thresholded/`` compares the
thresholded certificate with MultiGuard's top-k from the same samples."""


def thresholded_vs_top_k(curves: list[_curves.Curve], radii: tuple[float, ...] = _tables.SUMMARY_RADII) -> str:
    """A markdown table of certified F1 (%) at ``radii``: each thresholded curve (per q) against the best top-k
    MultiGuard curve at each radius (and which k, k' it was), from one report's curves (no sampling)."""
    per_label = [c for c in curves if c.q is not None]
    top_k = [c for c in curves if c.q is None and c.method == "multiguard"]
    if not per_label or not top_k:
        raise ValueError("curves: need thresholded and MultiGuard top-k curves")
    head = "| certified F1 (%) | " + " | ".join(f"R = {r:g}" for r in radii) + " |"
    lines = [head, "|---|" + "---:|" * len(radii)]
    for c in per_label:
        lines.append(f"| thresholded, q = {c.q:g} | " + " | ".join(f"{100 * c.at('f1', r):.1f}" for r in radii) + " |")
    best = [max(top_k, key=lambda c, r=r: c.at("f1", r)) for r in radii]
    lines.append("| MultiGuard top-k, best k, k' at each R | " + " | ".join(
        f"{100 * c.at('f1', r):.1f} (k = {c.k}, k' = {c.k_prime})" for c, r in zip(best, radii, strict=True)) + " |")
    return "\n".join(lines)


def _demo_run(checkpoint: Path, run_dir: Path, say: Log, **kwargs: Any) -> _job.RunResult:
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


def _demo_train(checkpoint: Path, settings: dict[str, Any], *, sigma: float, seed: int, device: str,
                log: Log) -> None:
    """Step 1 of the demo: train (or resume, or replace a demo model of other settings) small_cnn at
    ``checkpoint``; a ValueError if ``checkpoint`` is a model of another kind."""
    from multiguard.training.classifier import train

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


def _demo_reports(out: Path, run_dir: Path, log: Log) -> tuple[dict[str, Any], Path]:
    """Step 3 of the demo: the reports drawn from the saved run (no model) and the figure of their rows."""
    run = _folder.load_run(run_dir)
    grid = "0:2:0.05"  # with sigma = 0.5, n = 1000 no radius reaches 2
    reports = {
        "report": _report.make_report(
            [run], out / "report", k=[3], k_prime=[1], names=["multidigits"], radius_grid=grid,
            methods=["multiguard", "multiguard-first-terms", "jia"], title="MultiGuard vs Jia et al. (k' = 1, k = 3)",
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
    if run.on_counts is not None:  # the same run's per-label on-counts: no extra sampling
        reports["report-thresholded"] = _report.make_report(
            [run], out / "report-thresholded", k=[1, 2, 3, 4, 5], k_prime=[1, 2, 3],
            methods=["multiguard", "threshold"], q=[0.5, 0.3], names=["multidigits"], radius_grid=grid,
            title="Thresholded vs top-k (label on when its probability > 0.5; MultiGuard at k = 1..5, k' = 1..3)",
        )
    sizes = run.sample_sizes
    if run.nested_counts is not None and sizes is not None:  # a run from before nested counts has none
        reports["report-n"] = _report.make_report(
            [run], out / "report-n", k=[3], k_prime=[1], methods=["multiguard"], names=["multidigits"],
            radius_grid=grid, n=[int(size) for size in sizes], title="Impact of n (k' = 1, k = 3)",
        )
    else:
        log(f"      {run_dir} holds no nested counts (certified by an older version): no impact-of-n report")
    figure = out / "figure.png"
    _plots.plot_figure(
        [
            ("MultiGuard vs Jia et al.", reports["report"].curves),
            ("Impact of k'", reports["report-k-prime"].curves),
            ("Impact of k", reports["report-k"].curves),
            *([("Impact of n", reports["report-n"].curves)] if "report-n" in reports else []),
        ],
        figure,
    )
    return reports, figure


def run_demo(
    out: str | os.PathLike[str] = "multiguard-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    log: Log = print,
    precision: str = "auto",
    channels_last: bool | None = None,
    compile: bool = True,
    noise: str = "float",
    shared_noise: bool = False,
) -> DemoResult:
    """Train small_cnn on multidigits with noise (sigma = 0.5), certify test inputs for every k' <= 3 with
    n = 1000, and report MultiGuard vs Jia et al. (k' = 1, k = 3) and the k and k' ablations.

    Files in ``out``: ``model.pt``, ``run/`` (the RUN_DIR), ``report/`` (comparison), ``report-k/``,
    ``report-k-prime/`` and ``report-n/`` (ablations; the impact of n reads the run's nested counts at n = 100,
    200, 500, 1000), ``report-thresholded/`` (the thresholded certificate, q = 1/2 and 0.3, beside MultiGuard at
    k = 1..5 and k' = 1..3, from the same run's on-counts), and ``figure.png`` (the rows side by side, as the
    paper's Figure 1). Running it again
    reuses a finished model and run; a killed demo continues where it stopped.

    Sampling runs in the fastest safe mode by default: ``precision="auto"`` (bf16 + channels_last where the
    device has native bf16) and ``compile``; the run records the mode and the report names it. ``noise`` and
    ``shared_noise``: the smoothing noise (``"sound"``: the rounded Gaussian on the 1/255 grid, docs/soundness.md).
    """
    settings = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, run_dir = out / "model.pt", out / "run"
    seconds: dict[str, float] = {}
    sigma, seed, max_k_prime = 0.5, 0, 3

    started = time.perf_counter()
    _demo_train(checkpoint, settings, sigma=sigma, seed=seed, device=device, log=log)
    seconds["train"] = time.perf_counter() - started

    started = time.perf_counter()
    log(f"[2/3] certifying {settings['num_inputs']} random test inputs: n = {settings['n']} noisy samples each, "
         f"counts for every k' <= {max_k_prime}")
    certify_args: dict[str, Any] = dict(
        n=settings["n"], max_k_prime=max_k_prime, num_inputs=settings["num_inputs"], seed=seed, device=device,
        on_progress=ProgressPrinter(lambda line: log("      " + line), settings["n"]),
        precision=precision, channels_last=channels_last, compile=compile, log=lambda line: log("      " + line),
        thresholds=DEMO_THRESHOLD, noise=noise, shared_noise=shared_noise,
    )
    _demo_run(checkpoint, run_dir, lambda line: log("      " + line), **certify_args)
    seconds["certify"] = time.perf_counter() - started

    started = time.perf_counter()
    log("[3/3] reporting from the saved counts (no model)")
    reports, figure = _demo_reports(out, run_dir, log)
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
    from multiguard.training.classifier import train
    from multiguard.training.denoiser import train_denoiser

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
    train_denoiser("multidigits", objective="mse", epochs=den["mse_epochs"], stability_epochs=0, out=paths["mse"],
                   **common)
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
        [_folder.load_run(path) for path in run_dirs.values()], out / "report", k=[3], k_prime=[1],
        methods=["multiguard"], names=list(run_dirs), radius_grid="0:1.5:0.05",
        title=f"Denoised smoothing on multidigits (sigma = {sigma}, k = 3, k' = 1)",
    )
    return DenoisedDemoResult(out, run_dirs, report, seconds)
