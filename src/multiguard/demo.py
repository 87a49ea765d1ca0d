"""The offline demos: train -> certify -> report on the embedded multidigits dataset (``multiguard demo``), and
the denoised-smoothing demo (``multiguard demo --denoised``)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiguard.common.files import file_sha256
from multiguard.common.noise_kinds import IMAGE_DEFAULT_NOISE
from multiguard.common.progress import Log, ProgressPrinter
from multiguard.common.torch_files import read_checkpoint
from multiguard.common.validation import RunMismatchError
from multiguard.evaluation import curves as _curves
from multiguard.evaluation import plots as _plots
from multiguard.evaluation import report as _report
from multiguard.evaluation import tables as _tables
from multiguard.evaluation.attacks import DEFAULT_ATTACK
from multiguard.evaluation.curves import parse_radius_grid
from multiguard.evaluation.empirical import EMPIRICAL_CSV, load_empirical
from multiguard.runs import folder as _folder
from multiguard.runs import job as _job
from multiguard.runs.certify_step import sample_checkpoint

__all__ = ["ATTACK_DIR", "DEMO_ALPHAS", "DEMO_SETTINGS", "DEMO_SIGMA", "DENOISED_DEMO_SETTINGS", "OVERVIEW_ROWS",
           "DemoResult", "DenoisedDemoResult", "demo_paths", "demo_steps", "draw_overview", "figure_rows", "run_demo",
           "run_denoised_demo", "sigma_table"]


@dataclass
class DemoResult:
    """Where the demo put its files and what it measured. ``checkpoint`` and ``run_dir`` are the main
    (sigma = 0.5) model's; ``checkpoints`` and ``run_dirs`` hold every model's, by training sigma; ``attack_dir``
    the ATTACK_DIR of the attack on the main model (full demo only)."""

    out: Path
    checkpoint: Path
    run_dir: Path
    reports: dict[str, _report.Report]
    figure: Path
    seconds: dict[str, float] = field(default_factory=dict)
    checkpoints: dict[float, Path] = field(default_factory=dict)
    run_dirs: dict[float, Path] = field(default_factory=dict)
    sigma_figure: Path | None = None
    attack_dir: Path | None = None
    findings: Path | None = None  # findings.md: which of the paper's findings the demo's numbers reproduce
    paper_findings: list[Any] = field(default_factory=list)  # those findings (multiguard.evaluation.findings.Finding)


DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    # full: the paper's protocol at laptop scale (500 test inputs, n = 1000); three models and the attack in
    # about 3 minutes on 2 shared cores (docs/demo.md, "Time")
    # lr 3e-3 rather than the paper's 1e-3: in 8 epochs small_cnn is still under-fitted at 1e-3 (noisy-test
    # mAP 0.884 against 0.906, docs/training.md)
    # sigmas: one model per sigma (same arch, epochs, seed), each certified on the same inputs with the same n,
    # for the impact-of-sigma row; the first is the main model (model.pt, run/) of every other row
    # attack: the tightness attack (``multiguard attack``, its default apgd-targeted) on the main model, beside its
    # certificate: few inputs, a small budget (steps per restart, EOT samples, restarts) and n, so that it stays
    # a small part of the demo's time
    "full": {"epochs": 8, "train_size": 8000, "test_size": 2000, "num_inputs": 500, "n": 1000, "lr": 3e-3,
             "sigmas": (0.5, 0.25, 1.0),
             "attack": {"num_inputs": 16, "n": 500, "radii": "0,0.25,0.5,0.75,1", "steps": 20, "samples": 16,
                        "restarts": 1}},
    # quick: a smaller model budget, 100 inputs and one model, no attack; about 20 s (docs/demo.md)
    "quick": {"epochs": 4, "train_size": 4000, "test_size": 1000, "num_inputs": 100, "n": 1000, "lr": 3e-3,
              "sigmas": (0.5,)},
}

DEMO_SIGMA = 0.5
"""The main model's sigma (the paper's default): its files are ``model.pt`` and ``run/``, as before the sigma row."""

DEMO_ALPHAS: tuple[float, ...] = (0.1, 0.01, 0.001, 0.0001)
"""The alphas of the impact-of-alpha row (the main run's counts, no extra sampling)."""

DEMO_RADIUS_GRID = "0:2:0.05"  # with sigma = 0.5, n = 1000 no radius reaches 2
SIGMA_RADIUS_GRID = "0:3:0.05"  # with sigma = 1.0, n = 1000 none reaches 2.4
SIGMA_TABLE_RADII: tuple[float, ...] = (0.0, 0.5, 1.0, 1.5, 2.0)


def demo_paths(out: str | os.PathLike[str], sigma: float) -> tuple[Path, Path]:
    """The checkpoint and RUN_DIR of the demo's model trained with ``sigma``: ``model.pt`` and ``run/`` for the main
    one (sigma = 0.5, so a demo folder from before the sigma row resumes), ``model-s<sigma>.pt`` and
    ``run-s<sigma>/`` for the others."""
    out = Path(out)
    if float(sigma) == DEMO_SIGMA:
        return out / "model.pt", out / "run"
    return out / f"model-s{float(sigma):g}.pt", out / f"run-s{float(sigma):g}"


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


def sigma_table(curves: list[_curves.Curve], radii: tuple[float, ...] = SIGMA_TABLE_RADII) -> str:
    """A markdown table of certified top-k precision / recall / F1 (%) at ``radii``, one row per run's sigma (the
    curves' sigma, which is the one its run's metadata records), of the MultiGuard curves of one report."""
    rows = sorted((c for c in curves if c.method == "multiguard" and c.q is None), key=lambda c: c.sigma)
    if len({c.sigma for c in rows}) != len(rows) or not rows:
        raise ValueError("curves: need one MultiGuard curve per sigma")
    lines = ["| σ | " + " | ".join(f"R = {r:g}" for r in radii) + " |", "|---|" + "---:|" * len(radii)]
    for c in rows:
        cells = [" / ".join(f"{100 * c.at(m, r):.1f}" for m in _curves.METRICS) for r in radii]
        lines.append(f"| {c.sigma:g} | " + " | ".join(cells) + " |")
    k, k_prime = rows[0].k, rows[0].k_prime
    return "\n".join(lines) + (f"\n\n(certified top-{k} precision / recall / F1 in %, k' = {k_prime}, "
                               f"n = {rows[0].n}, α = {rows[0].alpha:g}, {rows[0].num_inputs} inputs)")


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
                log: Log, step: str = "[1/3]") -> None:
    """Train (or resume, or replace a demo model of other settings) small_cnn at ``checkpoint``; a ValueError if
    ``checkpoint`` is a model of another kind. ``step`` starts the progress line (which step, which model)."""
    from multiguard.training.classifier import train

    log(f"{step} training small_cnn on multidigits with Gaussian noise sigma = {sigma:g} "
         f"({settings['epochs']} epochs of {settings['train_size']} images)")
    train_args: dict[str, Any] = dict(
        arch="small_cnn", sigma=sigma, epochs=settings["epochs"], seed=seed, out=checkpoint, device=device,
        progress=False, train_size=settings["train_size"], test_size=settings["test_size"], lr=settings["lr"],
        log=lambda line: log("      " + line),
    )
    try:
        _, meta = train("multidigits", resume=True, **train_args)
    except RunMismatchError:  # a demo model from other settings (e.g. --quick after a full demo): train afresh
        saved = read_checkpoint(checkpoint)["meta"]
        if (saved.get("dataset"), saved.get("arch")) != ("multidigits", "small_cnn"):  # never replace a user's model
            raise ValueError(f"out: {checkpoint} is a model of another kind ({saved.get('arch')} on "
                             f"{saved.get('dataset')}), not the demo's; choose another --out") from None
        log(f"      {checkpoint.name} was trained with other settings: training a new one")
        _, meta = train("multidigits", resume=False, overwrite=True, **train_args)
    last = meta["metrics"][-1]
    log(f"      test mAP: clean {last['clean_map']:.3f}, noisy {last['noisy_map']:.3f}")


ATTACK_DIR = "attack"
"""The demo's ATTACK_DIR (in its folder): the attack on the main model, ``DEMO_SETTINGS["full"]["attack"]``."""


def _attack_args(spec: dict[str, Any], seed: int, noise: str) -> dict[str, Any]:
    """The :func:`~multiguard.evaluation.attack_run.run_attack` keywords of the demo's attack (top-3, k' = 1; its
    certified sizes drawn with the demo's ``noise``)."""
    return dict(radii=spec["radii"], k=3, k_prime=1, num_inputs=spec["num_inputs"], n=spec["n"], seed=seed,
                steps=spec["steps"], samples=spec["samples"], restarts=spec["restarts"], attack=DEFAULT_ATTACK,
                noise=noise)


def _finished_attack(attack_dir: Path, checkpoint: Path, args: dict[str, Any]) -> bool:
    """Whether ``attack_dir`` holds a finished attack of ``checkpoint`` (the same file, by SHA-256) with the
    demo's settings ``args`` (as recorded in its ``attack.json`` identity): then the demo reuses it."""
    if not (attack_dir / EMPIRICAL_CSV).is_file():
        return False
    identity = load_empirical(attack_dir).settings.get("identity", {})
    wanted = {"checkpoint_sha256": file_sha256(checkpoint), "radii": parse_radius_grid(args["radii"]).tolist(),
              **{key: args[key] for key in ("k", "k_prime", "n", "seed", "steps", "samples", "restarts", "attack",
                                            "noise")}}
    return all(identity.get(key) == value for key, value in wanted.items()) and \
        len(identity.get("inputs", ())) == args["num_inputs"]


def _demo_attack(checkpoint: Path, attack_dir: Path, spec: dict[str, Any], *, seed: int, device: str,
                 noise: str, log: Log) -> Path:
    """``attack_dir`` holding the demo's finished attack on ``checkpoint``: reused when it is there, continued
    from its finished blocks when a killed demo left it, started over (saying so) when it holds another attack."""
    from multiguard.evaluation.attack_run import run_attack

    args = _attack_args(spec, seed, noise)
    if _finished_attack(attack_dir, checkpoint, args):
        log(f"{attack_dir} holds this attack: reusing it")
        return attack_dir
    try:
        run_attack(checkpoint, out_dir=attack_dir, device=device, log=log, resume=True, **args)
    except ValueError as exc:
        if not str(exc).startswith("resume:"):  # never replace files that are not an attack's
            raise
        log(f"{attack_dir} holds an attack with other settings: starting it over")
        run_attack(checkpoint, out_dir=attack_dir, device=device, log=log, overwrite=True, **args)
    return attack_dir


def _main_report_specs(run: Any) -> dict[str, dict[str, Any]]:
    """The reports drawn from the main run's counts (no sampling), by folder: ``make_report`` arguments."""
    specs: dict[str, dict[str, Any]] = {
        "report": dict(k=[3], k_prime=[1], methods=["multiguard", "multiguard-first-terms", "jia"],
                       title="MultiGuard vs Jia et al. (k' = 1, k = 3)"),
        "report-k-prime": dict(k=[3], k_prime=[1, 2, 3], methods=["multiguard"], title="Impact of k' (k = 3)"),
        "report-k": dict(k=[1, 2, 3, 4, 5], k_prime=[1], methods=["multiguard"], title="Impact of k (k' = 1)"),
        "report-alpha": dict(k=[3], k_prime=[1], alpha=list(DEMO_ALPHAS), methods=["multiguard"],
                             title="Impact of alpha (k' = 1, k = 3)"),
    }
    if run.on_counts is not None:  # the same run's per-label on-counts: no extra sampling
        specs["report-thresholded"] = dict(
            k=[1, 2, 3, 4, 5], k_prime=[1, 2, 3], methods=["multiguard", "threshold"], q=[0.5, 0.3],
            title="Thresholded vs top-k (label on when its probability > 0.5; MultiGuard at k = 1..5, k' = 1..3)")
    if run.nested_counts is not None and run.sample_sizes is not None:  # a run from before nested counts has none
        specs["report-n"] = dict(k=[3], k_prime=[1], methods=["multiguard"], n=[int(s) for s in run.sample_sizes],
                                 title="Impact of n (k' = 1, k = 3)")
    return specs


def _sigma_report(out: Path, run_dirs: dict[float, Path]) -> _report.Report | None:
    """The impact-of-sigma report: MultiGuard (k' = 1, k = 3) on every model's run, each named and ordered by the
    sigma its run's metadata records; None for a demo of one model (--quick)."""
    if len(run_dirs) < 2:
        return None
    runs = sorted((_folder.load_run(path) for path in run_dirs.values()), key=lambda run: run.sigma)
    return _report.make_report(
        runs, out / "report-sigma", k=[3], k_prime=[1], methods=["multiguard"], radius_grid=SIGMA_RADIUS_GRID,
        names=[f"sigma = {run.sigma:g}" for run in runs], summary_radii=SIGMA_TABLE_RADII,
        title="Impact of sigma (k' = 1, k = 3; one model per sigma, certified on the same inputs with the same n)",
    )


FIGURE_ROWS: tuple[tuple[str, str], ...] = (
    ("report", "MultiGuard vs Jia et al."),
    ("report-k-prime", "Impact of k'"),
    ("report-k", "Impact of k"),
    ("report-sigma", "Impact of σ"),
    ("report-n", "Impact of n"),
    ("report-alpha", "Impact of α"),
    ("report-attack", "Certified vs attacked (σ = 0.5)"),
)
"""The rows of ``figure.png``: the paper's Figure 1 in its order, (report folder, row title), then the attack panel
(full demo only): the certified and the attacked top-3 recall of the attack's own inputs, the gap between them
shaded, in the recall column. A report the demo did not make (``report-sigma`` and ``report-attack`` of --quick,
``report-n`` of an old run) is left out."""

ATTACK_ROW_METRICS: tuple[str, ...] = ("recall",)
"""The metrics the attack row draws (one panel: top-3 recall); its other columns are blank."""


def figure_rows(reports: dict[str, _report.Report], keys: tuple[str, ...] | None = None) -> list[tuple]:
    """The rows of the demo's figure from its reports, for :func:`~multiguard.evaluation.plots.plot_figure`:
    :data:`FIGURE_ROWS` in order (or only the report folders ``keys``), skipping the reports not made. Each is
    ``(title, curves)``; the attack row is ``(title, [the attack's curve], ATTACK_ROW_METRICS)``, the curve (method
    ``attack``) read from the ATTACK_DIR's files, its certified values (``curve.certified``) those of the same
    inputs."""
    wanted = [key for key, _ in FIGURE_ROWS] if keys is None else list(keys)
    titles = dict(FIGURE_ROWS)
    rows: list[tuple] = []
    for key in (key for key in wanted if key in reports):
        if key == "report-attack":
            attacked = [c for c in reports[key].curves if c.method == "attack"]
            shown = f"{titles[key][:-1]}, {attacked[0].num_inputs} inputs, n = {attacked[0].n})" if attacked else ""
            rows.append((shown or titles[key], attacked, ATTACK_ROW_METRICS))
        else:
            rows.append((titles[key], reports[key].curves))
    return rows


OVERVIEW_ROWS: tuple[str, ...] = ("report", "report-k-prime", "report-k")
"""The rows of the README's overview figure (``docs/demo-figure.png``): the first three of :data:`FIGURE_ROWS`."""


def draw_overview(demo_dir: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Draw the README's overview figure from a finished demo folder: the first three rows of its ``figure.png``
    (MultiGuard vs Jia et al., the impact of k' and of k; :data:`OVERVIEW_ROWS`) with its caption, from the
    main run's saved counts (the reports are made again in a temporary folder: nothing in ``demo_dir`` changes).
    Returns ``path``; ``docs/demo-figure.png`` is ``draw_overview("multiguard-demo", "docs/demo-figure.png")``."""
    import tempfile

    run = _folder.load_run(demo_paths(demo_dir, DEMO_SIGMA)[1])
    specs = _main_report_specs(run)
    with tempfile.TemporaryDirectory(prefix="multiguard-overview-") as scratch:
        reports = {name: _report.make_report([run], Path(scratch) / name, names=["multidigits"],
                                             radius_grid=DEMO_RADIUS_GRID, **specs[name]) for name in OVERVIEW_ROWS}
    _plots.plot_figure(figure_rows(reports, OVERVIEW_ROWS), Path(path), caption=_figure_caption(run))
    return Path(path)


def _figure_caption(run: Any) -> str:
    """The caption line of the demo's figure: the setting every row shares unless it varies it."""
    meta = run.metadata
    return (f"{meta.get('dataset', 'multidigits')}, {run.counts.shape[0]} test inputs, n = {run.n}, α = 0.001, "
            f"σ = {run.sigma:g}, k' = 1, k = 3 (unless the row varies it); sampling mode "
            f"{_folder.sampling_mode(meta)}; noise: {_folder.run_noise(meta)}")


def _demo_reports(out: Path, run_dirs: dict[float, Path], log: Log,
                  attack_dir: Path | None = None) -> tuple[dict[str, Any], dict[str, Path], list[Any]]:
    """The last step of the demo: the reports drawn from the saved runs (no model) and the figures of their rows
    (``figure``: the paper's six rows, then the attack panel when there is ``attack_dir``; ``sigma``: the sigma
    row alone, full demo only; ``findings``: ``findings.md``), and the paper's findings checked on the reports.
    The README's three-row overview is drawn apart (:func:`draw_overview`: a second large figure would cost the
    demo seconds of matplotlib)."""
    run = _folder.load_run(run_dirs[DEMO_SIGMA])
    reports = {name: _report.make_report([run], out / name, names=["multidigits"], radius_grid=DEMO_RADIUS_GRID,
                                         **spec)
               for name, spec in _main_report_specs(run).items()}
    if "report-n" not in reports:
        log(f"      {run_dirs[DEMO_SIGMA]} holds no nested counts (certified by an older version): "
            "no impact-of-n report")
    sigma_report = _sigma_report(out, run_dirs)
    if sigma_report is not None:
        reports["report-sigma"] = sigma_report
    if attack_dir is not None:  # the main run's certificate with the attack over it (checked to be its model's)
        reports["report-attack"] = _report.make_report(
            [run], out / "report-attack", k=[3], k_prime=[1], methods=["multiguard"], names=["multidigits"],
            radius_grid=DEMO_RADIUS_GRID, attacks=[attack_dir],
            title="Certified vs attacked (k' = 1, k = 3; the attack's inputs certified at its own n)")
    caption = _figure_caption(run)
    figures = {"figure": out / "figure.png"}
    _plots.plot_figure(figure_rows(reports), figures["figure"], caption=caption)
    if sigma_report is not None:
        figures["sigma"] = out / "figure-sigma.png"
        _plots.plot_figure(figure_rows(reports, ("report-sigma",)), figures["sigma"], caption=caption)
    findings, figures["findings"] = _write_findings(out, reports, caption)
    return reports, figures, findings


def _write_findings(out: Path, reports: dict[str, _report.Report], caption: str) -> tuple[list[Any], Path]:
    """``findings.md``: which of the paper's findings these reports reproduce
    (:func:`multiguard.evaluation.findings.paper_findings`), with the values that decide each; returns the
    findings and the file."""
    from multiguard.common.files import atomic_write_bytes
    from multiguard.evaluation.findings import findings_summary, paper_findings

    findings = paper_findings({name: report.curves for name, report in reports.items()})
    text = f"# The paper's findings on this demo\n\n{caption}.\n\n{findings_summary(findings)}\n"
    atomic_write_bytes(out / "findings.md", text.encode())
    return findings, out / "findings.md"


def _indented(log: Log) -> Log:
    """``log``, each line indented under its step."""
    return lambda line: log("      " + line)


def demo_steps(settings: dict[str, Any]) -> int:
    """The numbered steps of a demo of ``settings``: train and certify each model, attack the main one (when
    ``settings`` has an ``attack``), report."""
    return 2 * len(settings["sigmas"]) + ("attack" in settings) + 1


def _train_and_certify(out: Path, settings: dict[str, Any], log: Log, seconds: dict[str, float],
                       **certify: Any) -> dict[float, Path]:
    """Every model of the demo, one after another: train (or reuse) it, then certify (or resume) its run, each on
    the same inputs with the same n, and attack the main model right after its run (when ``settings`` has an
    ``attack``); progress lines name the step and the model. Returns the RUN_DIRs by sigma."""
    sigmas = tuple(float(s) for s in settings["sigmas"])
    total, step, seed, run_dirs = demo_steps(settings), 0, 0, {}
    for i, sigma in enumerate(sigmas):
        checkpoint, run_dirs[sigma] = demo_paths(out, sigma)
        model = f"model {i + 1} of {len(sigmas)}, sigma = {sigma:g}" if len(sigmas) > 1 else f"sigma = {sigma:g}"
        started, step = time.perf_counter(), step + 1
        _demo_train(checkpoint, settings, sigma=sigma, seed=seed, device=certify["device"], log=log,
                    step=f"[{step}/{total}] {model}:")
        seconds["train"] = seconds.get("train", 0.0) + time.perf_counter() - started
        started, step = time.perf_counter(), step + 1
        log(f"[{step}/{total}] {model}: certifying {settings['num_inputs']} random test inputs: "
            f"n = {settings['n']} noisy samples each, counts for every k' <= 3")
        indent = _indented(log)
        _demo_run(checkpoint, run_dirs[sigma], indent, n=settings["n"], max_k_prime=3, seed=seed,
                  num_inputs=settings["num_inputs"], thresholds=DEMO_THRESHOLD, log=indent,
                  on_progress=ProgressPrinter(indent, settings["n"], prefix=f"sigma = {sigma:g}"), **certify)
        seconds["certify"] = seconds.get("certify", 0.0) + time.perf_counter() - started
        if sigma == DEMO_SIGMA and "attack" in settings:
            spec, started, step = settings["attack"], time.perf_counter(), step + 1
            log(f"[{step}/{total}] {model}: attacking {spec['num_inputs']} of its test inputs ({DEFAULT_ATTACK}, "
                f"top-3, radii {spec['radii']}) beside their certificate at n = {spec['n']}")
            _demo_attack(checkpoint, out / ATTACK_DIR, spec, seed=seed, device=certify["device"],
                         noise=certify["noise"], log=indent)
            seconds["attack"] = time.perf_counter() - started
    return run_dirs


def run_demo(
    out: str | os.PathLike[str] = "multiguard-demo",
    *,
    quick: bool = False,
    device: str = "auto",
    log: Log = print,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = True,
    noise: str = IMAGE_DEFAULT_NOISE,
    shared_noise: bool = False,
) -> DemoResult:
    """Train small_cnn on multidigits with noise, certify test inputs for every k' <= 3 with n = 1000, and report
    MultiGuard vs Jia et al. (k' = 1, k = 3) and the k', k, sigma, n and alpha ablations (the paper's Figure 1).

    The full demo trains three models, sigma = 0.25, 0.5 and 1.0 (``DEMO_SETTINGS["full"]["sigmas"]``; the same
    architecture, epochs and seed) and certifies each on the same test inputs with the same n, and runs the
    tightness attack (``multiguard attack``, apgd-targeted, ``DEMO_SETTINGS["full"]["attack"]``: a few inputs, a
    small budget) on the sigma = 0.5 model right after its run; ``quick`` trains one model (sigma = 0.5) and has
    no sigma row and no attack.

    Files in ``out``: ``model.pt`` and ``run/`` (the sigma = 0.5 model and its RUN_DIR), ``model-s0.25.pt``,
    ``run-s0.25/``, ``model-s1.pt``, ``run-s1/`` (the others), ``report/`` (comparison), ``report-k-prime/``,
    ``report-k/``, ``report-alpha/`` (alpha = 0.1 .. 0.0001) and ``report-n/`` (the run's nested counts at n = 100,
    200, 500, 1000) from the main run, ``report-sigma/`` (the three runs, each named by the sigma its metadata
    records), ``report-thresholded/`` (the thresholded certificate, q = 1/2 and 0.3, beside MultiGuard at k = 1..5
    and k' = 1..3, from the main run's on-counts), ``figure.png`` (the paper's Figure 1: six rows, comparison, k',
    k, sigma, n, alpha, by three columns, precision, recall, F1; the full demo adds a seventh row, one panel in
    the recall column: the attack's certified and attacked top-3 recall, the gap shaded), ``figure-sigma.png``
    (the sigma row alone, full demo only), ``attack/`` (the ATTACK_DIR: ``empirical.csv``, ``per_input.npz``,
    ``attack.json``) and ``report-attack/`` (the main run's certificate with the attack over it; its
    ``summary.md`` holds the attacked and certified values and the inputs below their certificate), full demo
    only. Running it again reuses every finished model, run and attack; a killed demo continues where it
    stopped. ``findings.md`` says which of the paper's findings (Section 4.2) these numbers reproduce, with the
    values that decide each (:func:`multiguard.evaluation.findings.paper_findings`).

    Sampling runs in fp32 with ``compile`` by default, the mode of the README's tables (so a plain demo prints
    them); ``precision="auto"`` is faster where the device has native bf16 (bf16 + channels_last: another base
    classifier, other last digits). The run records the mode and the report names it. ``noise`` and
    ``shared_noise``: the smoothing noise (``"sound"``: the rounded Gaussian on the 1/255 grid, docs/soundness.md).
    """
    settings = DEMO_SETTINGS["quick" if quick else "full"]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    run_dirs = _train_and_certify(out, settings, log, seconds, device=device, precision=precision,
                                  channels_last=channels_last, compile=compile, noise=noise, shared_noise=shared_noise)
    started = time.perf_counter()
    log(f"[{demo_steps(settings)}/{demo_steps(settings)}] reporting from the saved counts (no model)")
    attack_dir = out / ATTACK_DIR if "attack" in settings else None
    reports, figures, findings = _demo_reports(out, run_dirs, log, attack_dir)
    seconds["report"] = time.perf_counter() - started
    checkpoints = {sigma: demo_paths(out, sigma)[0] for sigma in run_dirs}
    return DemoResult(out, checkpoints[DEMO_SIGMA], run_dirs[DEMO_SIGMA], reports, figures["figure"], seconds,
                      checkpoints=checkpoints, run_dirs=run_dirs, sigma_figure=figures.get("sigma"),
                      attack_dir=attack_dir, findings=figures["findings"], paper_findings=findings)


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
