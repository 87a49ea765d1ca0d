"""The attack step: checkpoint -> ATTACK_DIR (l2 PGD on the smoothed classifier at each radius, the empirical
curves, and the certified sizes of the same inputs; the step behind ``multiguard attack``)."""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiguard.certificates import bounds as _bounds
from multiguard.certificates import metrics as _metrics
from multiguard.certificates import thresholded as _thresholded
from multiguard.certificates import topk as _topk
from multiguard.certificates.thresholds import parse_threshold
from multiguard.common.devices import resolve_device
from multiguard.common.noise_kinds import check_noise
from multiguard.common.seeds import attack_evaluation_seed
from multiguard.common.validation import MAX_N, check_alpha, check_float, check_int
from multiguard.data._common import resized_files_note
from multiguard.denoising.denoisers import denoiser_in, denoiser_record
from multiguard.evaluation import curves as _curves
from multiguard.evaluation.attack import AttackResult, attack_smoothed
from multiguard.evaluation.attacks import DEFAULT_ATTACK, AttackMethod, attack_method
from multiguard.evaluation.attacks.thresholded import thresholded_evaluation_seed
from multiguard.evaluation.empirical import (
    EMPIRICAL_CSV,
    PARTS,
    PER_INPUT,
    SETTINGS,
    THRESHOLDED_CSV,
    AttackParts,
    EmpiricalCurves,
    write_attack_dir,
    write_thresholded_csv,
)
from multiguard.evaluation.thresholded_attack import (
    ThresholdedAttack,
    attack_thresholded_at_radii,
    certify_thresholded_inputs,
)
from multiguard.models.base_classifier import BaseClassifierSpec, ModeSpec
from multiguard.models.checkpoints import dataset_for_checkpoint
from multiguard.runs import job as _job
from multiguard.runs.certify_step import _compile_now, capped_num_inputs
from multiguard.sampling.smoothed import MultiGuard

__all__ = ["AttackRun", "run_attack"]



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
        thresholded: with thresholds, the thresholded attack
            (:class:`~multiguard.evaluation.thresholded_attack.ThresholdedAttack`); else ``None``.
    """

    out_dir: Path
    curves: EmpiricalCurves
    indices: np.ndarray
    labels: np.ndarray
    sizes: np.ndarray
    certified: np.ndarray | None
    violations: np.ndarray | None
    delta_norms: np.ndarray
    thresholded: ThresholdedAttack | None = None


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
    steps: int | None = None,
    samples: int | None = None,
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
    precision: str = "fp32", channels_last: bool | None = None, compile: bool = False,
    denoiser: str | os.PathLike[str] | None = None, overwrite: bool = False, resume: bool = False,
    attack: str = DEFAULT_ATTACK, restarts: int | None = None, noise: str = "float",
    thresholds: Any = None, threshold_scale: str = "probability", q: float | None = None,
) -> AttackRun:
    """Attack a checkpoint's smoothed classifier on a dataset split at several radii; write ``out_dir``.

    The inputs are the ones a certify run with the same ``seed`` and ``num_inputs`` certifies
    (:func:`multiguard.runs.job.select_inputs`), with their dataset indices as noise indices; dataset, root, split
    and sigma default to the checkpoint's (as ``multiguard certify``). L is the ground truth.

    Writes (each atomically: a temporary name in ``out_dir``, then a rename):

    - ``empirical.csv``: columns :data:`EMPIRICAL_COLUMNS` = ``radius,precision,recall,f1,num_inputs``, one
      row per radius, the metrics of :func:`multiguard.certificates.metrics.certified_metrics` on the empirical sizes;
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

    ``noise``: the noise of the certified sizes (``"sound"``: the rounded Gaussian on the 1/255 grid, as a
    ``certify --noise sound`` run draws it). The attacked points are off the grid, so the PGD steps and the
    measurement of the attacked prediction use float noise either way; ``attack.json`` records the noise.

    ``thresholds`` (a number, a file of one per label, or a
    :class:`~multiguard.certificates.thresholds.LabelThresholds`; ``threshold_scale`` as for certify): the base
    classifier is thresholded too, and after the top-k attack the per-label decisions of the smoothed
    thresholded classifier (cut ``q``, default 0.5) are attacked at each radius
    (:mod:`multiguard.evaluation.attacks.thresholded`, the attack's steps and samples, its restarts as rounds),
    written to ``empirical_thresholded.csv`` beside the certified values (:data:`THRESHOLDED_COLUMNS`), with
    ``thresholded_violations`` in ``attack.json``; ``per_input.npz`` gains ``thresholded_predicted`` and, with
    ``certify``, ``certified_on_radius`` and ``certified_off_radius``. ``q`` without ``thresholds`` is refused.

    ``out_dir`` holding an attack is refused unless ``overwrite`` (replace it) or ``resume`` (continue a
    killed attack from its finished blocks in ``out_dir/parts``, refused naming every setting that differs;
    the same numbers as an uninterrupted attack). ``attack.json`` records the attack's ``identity`` (the
    checkpoint's and model file's SHA-256, dataset, split, inputs, k, k', sigma, n, seed, radii, ...), which
    ``multiguard report --attack`` compares with the run it is drawn over.
    """
    radii_arr = _curves.parse_radius_grid(radii)
    k, k_prime, n, seed, alpha = _checked_numbers(k, k_prime, n, seed, alpha)
    method, steps, samples, restarts = _checked_method(attack, steps, samples, restarts)
    q = _checked_q(thresholds, q)
    log, out = log or (lambda line: None), _attack_out(out_dir, overwrite=overwrite, resume=resume)
    base, data, info, smoother, certifier, k, k_prime = _load_for_attack(
        checkpoint_path, k, k_prime, dataset=dataset, data_root=data_root, split=split, sigma=sigma, device=device,
        precision=precision, channels_last=channels_last, compile=compile, denoiser=denoiser, noise=noise,
        thresholds=thresholds, threshold_scale=threshold_scale, log=log)
    indices = _job.select_inputs(len(data), capped_num_inputs(num_inputs, len(data), info["split"], log), seed)
    denoiser_facts = denoiser_record(denoiser, denoiser_in(smoother))  # a file's digest or a source's identity
    identity = _attack_identity(base, denoiser_facts, info, indices, smoother, radii_arr, k=k,
                                k_prime=k_prime, n=n, alpha=alpha, seed=seed, steps=steps, samples=samples,
                                step_size=step_size, temperature=temperature, certify=certify,
                                attack=method.name, restarts=restarts, noise=certifier.noise.name, q=q)
    parts = AttackParts(out, identity, resume=resume)
    x, labels = _attack_batch(smoother, data, indices, batch_size, log)
    certified = (_certified_sizes(certifier, parts, x, labels, indices, radii_arr, k=k, k_prime=k_prime, n=n,
                                  alpha=alpha, seed=seed, batch_size=batch_size, dataset=data) if certify else None)
    options = _options(method, steps, samples, restarts, step_size, temperature)
    sizes, norms = _attack_at_radii(smoother, x, labels, indices, radii_arr, k=k, method=method, n=n, seed=seed,
                                    options=options, batch_size=batch_size, log=log, parts=parts)
    curves, arrays, violations = _empirical_results(sizes, labels, k, radii_arr, indices, norms, certified)
    settings = _attack_settings(checkpoint_path, denoiser_facts, info, identity, smoother, indices, violations)
    thresholded = _thresholded_part(smoother, certifier, parts, x, labels, indices, radii_arr, q=q, n=n, alpha=alpha,
                                    seed=seed, certify=certify, batch_size=batch_size, log=log, options=options,
                                    out=out, arrays=arrays, settings=settings)
    write_attack_dir(out, curves, arrays, settings)
    parts.remove()
    return AttackRun(out_dir=out, curves=EmpiricalCurves(**{**curves.__dict__, "settings": settings}),
                     indices=indices, labels=labels, sizes=sizes, certified=certified, violations=violations,
                     delta_norms=norms, thresholded=thresholded)


def _checked_q(thresholds: Any, q: float | None) -> float:
    """The thresholded classifier's cut (default 0.5), checked before any work; ``q`` without thresholds is
    refused in one line."""
    if q is None:
        return _thresholded.DEFAULT_Q
    if thresholds is None:
        raise ValueError("q: --q is the cut of the thresholded classifier; give --threshold TAU|FILE too (the "
                         "checkpoint has no thresholds of its own)")
    return check_float(q, "q", 0.0, 1.0, low_open=True, high_open=True)


def _thresholded_part(smoother: MultiGuard, certifier: MultiGuard, parts: AttackParts, x: torch.Tensor,
                      labels: np.ndarray, indices: np.ndarray, radii_arr: np.ndarray, *, q: float, n: int,
                      alpha: float, seed: int, certify: bool, batch_size: int, log: Callable[[str], None],
                      options: dict, out: Path, arrays: dict, settings: dict) -> ThresholdedAttack | None:
    """With thresholds: the thresholded certificate (with ``certify``) and the thresholded attack at every radius,
    its arrays and keys added to ``arrays`` and ``settings``, and ``empirical_thresholded.csv`` written; ``None``
    (nothing done) without thresholds."""
    if smoother.thresholds is None:
        return None
    certificate = (certify_thresholded_inputs(certifier, parts, x, indices, n=n, alpha=alpha, seed=seed, q=q,
                                              batch_size=batch_size) if certify else None)
    budget = {"steps": max(1, options["steps"]), "samples": options["samples"],
              "rounds": options.get("restarts") or 3, "temperature": options["temperature"]}
    result = attack_thresholded_at_radii(smoother, x, labels, indices, radii_arr, q=q, options=budget, n=n,
                                         seed=seed, batch_size=batch_size, log=log, parts=parts,
                                         certificate=certificate)
    _add_thresholded(arrays, settings, result, smoother, q)
    write_thresholded_csv(out, result.table, len(indices))
    return result


def _add_thresholded(arrays: dict, settings: dict, result: ThresholdedAttack, smoother: MultiGuard,
                     q: float) -> None:
    """The thresholded attack's arrays (``per_input.npz``) and keys (``attack.json``), added in place."""
    arrays["thresholded_predicted"] = result.predicted
    arrays["thresholded_on_counts"] = result.on_counts
    if result.certificate is not None:
        arrays["certified_on_radius"] = result.certificate.on_radius
        arrays["certified_off_radius"] = result.certificate.off_radius
    assert smoother.thresholds is not None
    settings.update(
        thresholds=smoother.thresholds.identity(), threshold_source=smoother.thresholds.source, q=q,
        thresholded_eval_seed=thresholded_evaluation_seed(settings["seed"]),
        thresholded_violations=None if result.violations is None else result.violations.tolist(),
        thresholded_violated_labels=None if result.violated_labels is None else result.violated_labels.tolist(),
        thresholded_csv=THRESHOLDED_CSV,
    )


def _load_for_attack(checkpoint_path: str | os.PathLike[str], k: int, k_prime: int, *, dataset: str | None,
                     data_root: str | os.PathLike[str] | None, split: str | None, sigma: float | None,
                     device: str | torch.device, precision: str, channels_last: bool | None, compile: bool,
                     denoiser: str | os.PathLike[str] | None, noise: str = "float", thresholds: Any = None,
                     threshold_scale: str = "probability", log: Callable[[str], None] | None = None) -> tuple:
    """``(base, data, info, smoother, certifier, k, k_prime)``: the base classifier
    (:class:`~multiguard.models.base_classifier.BaseClassifierSpec`, built as certify and predict build theirs),
    the dataset split and its info, the smoothed classifier (float noise), the one that certifies (with
    ``noise``; the same object for float noise), and k and k' checked against the number of classes. A sigma far
    from the training sigma is said through ``log``, as certify says it."""
    check_noise(noise)
    base = BaseClassifierSpec(checkpoint_path, sigma=sigma, mode=ModeSpec(precision, channels_last, compile),
                              denoiser=denoiser, device=str(resolve_device(device)), k_prime=k_prime)
    meta = base.checkpoint_meta
    if log is not None and (warning := base.sigma_warning()) is not None:
        log(warning)
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    num_classes = int(meta["num_classes"])
    k = check_int(k, "k", 1, num_classes, high_label="the number of classes")
    k_prime = check_int(k_prime, "k_prime", 1, num_classes, high_label="the number of classes")
    if thresholds is not None:
        thresholds = parse_threshold(thresholds, data.class_names, threshold_scale)
        thresholds.per_label(num_classes)  # one or one per label, said before any work
        base = base.with_thresholds(thresholds)
    smoother = base.load()
    # sound noise certifies; the attack's steps and measurement stay on float noise (the points are off the grid)
    certifier = smoother if noise == "float" else dataclasses.replace(base, noise=noise).load()
    return base, data, info, smoother, certifier, k, k_prime

def _attack_batch(smoother: MultiGuard, data, indices: np.ndarray, batch_size: int,
                  log: Callable[[str], None]) -> tuple[torch.Tensor, np.ndarray]:
    """The inputs at ``indices`` and their labels; a compiled smoother is compiled on the first (logged)."""
    if (note := resized_files_note(data, indices)) is not None:
        log(f"attack: {note}")
    x, labels = _job.load_batch(data, indices)
    if smoother.mode.compile and len(indices):
        _compile_now(smoother, x[:1], batch_size, log)
    return x, labels

def _checked_numbers(k: int, k_prime: int, n: int, seed: int, alpha: float) -> tuple[int, int, int, int, float]:
    """k, k', n, seed and alpha checked (before any work), in this order; a ValueError names the first bad one."""
    k = check_int(k, "k", 1)
    k_prime = check_int(k_prime, "k_prime", 1)
    n = check_int(n, "n", 1, MAX_N)
    seed = check_int(seed, "seed", 0)
    alpha = check_alpha(alpha)
    return k, k_prime, n, seed, alpha


def _options(method: AttackMethod, steps: int, samples: int, restarts: int | None, step_size: float | None,
             temperature: float) -> dict:
    """The keywords of ``method``'s budget."""
    own = {"restarts": restarts} if method.restarts is not None else {"step_size": step_size}
    return dict(steps=steps, samples=samples, temperature=temperature, **own)


def _checked_method(attack: str, steps: int | None, samples: int | None, restarts: int | None
                    ) -> tuple[AttackMethod, int, int, int | None]:
    """The attack named ``attack`` and its budget (its defaults where ``None``), checked before any work."""
    method = attack_method(attack)
    steps = method.steps if steps is None else check_int(steps, "steps", 0)
    samples = method.samples if samples is None else check_int(samples, "samples", 1)
    if method.restarts is None:
        if restarts is not None:
            raise ValueError(f"restarts: the {method.name} attack has no restarts")
    else:
        restarts = method.restarts if restarts is None else check_int(restarts, "restarts", 1)
        steps = check_int(steps, "steps", 1)
    return method, steps, samples, restarts


def _attack_identity(base: BaseClassifierSpec, denoiser_facts: dict,
                     info: dict, indices: np.ndarray, smoother: MultiGuard, radii_arr: np.ndarray, *, k: int,
                     k_prime: int, n: int, alpha: float, seed: int, steps: int, samples: int,
                     step_size: float | None, temperature: float, certify: bool, attack: str,
                     restarts: int | None, noise: str = "float", q: float = 0.5) -> dict:
    """The attack's identity (recorded in ``attack.json``; a resumed attack must match it); with thresholds,
    they and ``q`` are in it too."""
    sigma, clamp = smoother.sigma, smoother.clamp
    extra = {} if smoother.thresholds is None else {"thresholds": smoother.thresholds.identity(), "q": q}
    return {
        "checkpoint_sha256": base.checkpoint_sha256,
        "model_file_sha256": base.run_fields()["model_file_sha256"],
        "denoiser_sha256": denoiser_facts["denoiser_sha256"],
        **{key: info.get(key) for key in ("dataset", "split", "dataset_options", "dataset_version")},
        "inputs": [int(i) for i in indices], "k": k, "k_prime": k_prime, "sigma": float(sigma),
        "clamp": None if clamp is None else list(clamp), "n": n, "alpha": float(alpha), "seed": seed,
        "steps": steps, "samples": samples, "step_size": step_size, "temperature": temperature,
        "radii": radii_arr.tolist(), "certify": bool(certify), **smoother.mode.as_metadata(), "noise": noise,
        "attack": attack, "restarts": restarts, **extra,
    }  # fmt: skip


def _certified_sizes(smoother: MultiGuard, parts: AttackParts, x: torch.Tensor, labels: np.ndarray,
                     indices: np.ndarray, radii_arr: np.ndarray, *, k: int, k_prime: int, n: int, alpha: float,
                     seed: int, batch_size: int, dataset: Any = None) -> np.ndarray:
    """The certified intersection sizes at every radius, from n samples at ``x`` drawn as a certify run with
    this ``seed`` draws them (or the counts a killed attack saved in ``parts``). Under sound noise an input off
    the 1/255 grid is refused naming its file in ``dataset`` (:func:`multiguard.runs.job.check_grid`)."""
    if smoother.noise.name == "sound":
        _job.check_grid(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x), indices, dataset)
    done = parts.load("certified")
    if done is None:
        counts = smoother.sample_counts(x, n, seed=seed, index=indices, batch_size=batch_size)
        parts.save("certified", counts=np.asarray(counts))
    else:
        counts = done["counts"]
    lower, upper = _bounds.label_probability_bounds(counts, n, alpha)
    return _topk.certified_intersection_size(
        lower, upper, labels, k=k, k_prime=k_prime, sigma=smoother.sigma, radius=radii_arr
    )


def _empirical_results(
    sizes: np.ndarray, labels: np.ndarray, k: int, radii_arr: np.ndarray, indices: np.ndarray, norms: np.ndarray,
    certified: np.ndarray | None,
) -> tuple[EmpiricalCurves, dict[str, np.ndarray], np.ndarray | None]:
    """The empirical curves of the attacked sizes, the per-input arrays written to ``per_input.npz``, and the
    violations per radius (inputs attacked below their certified size; ``None`` without certified sizes)."""
    violations = None if certified is None else (sizes < certified).sum(axis=0).astype(np.int64)
    metrics = _metrics.certified_metrics(sizes, labels, k)
    curves = EmpiricalCurves(
        radius=radii_arr, precision=np.asarray(metrics.precision), recall=np.asarray(metrics.recall),
        f1=np.asarray(metrics.f1), num_inputs=int(len(indices)),
    )
    arrays: dict[str, np.ndarray] = dict(indices=indices, labels=labels, radii=radii_arr, sizes=sizes,
                                         delta_norms=norms)
    if certified is not None:
        arrays["certified"] = certified
    return curves, arrays, violations


def _attack_settings(checkpoint_path: str | os.PathLike[str], denoiser_facts: dict, info: dict, identity: dict,
                     smoother: MultiGuard, indices: np.ndarray, violations: np.ndarray | None) -> dict:
    """The settings recorded in ``attack.json`` (the numbers of the attack's ``identity`` among them)."""
    clamp = smoother.clamp
    settings = {
        "checkpoint": os.fspath(checkpoint_path),
        **denoiser_facts,
        **{key: info[key] for key in ("dataset", "data_root", "split", "dataset_options") if key in info},
        **{key: identity[key] for key in ("k", "k_prime")}, "sigma": smoother.sigma,
        "clamp": None if clamp is None else list(clamp), "n": identity["n"], "alpha": identity["alpha"],
        "seed": identity["seed"], "eval_seed": attack_evaluation_seed(identity["seed"]),
        **{key: identity[key] for key in ("steps", "samples", "step_size", "temperature")},
        "num_inputs": int(len(indices)), "radii": identity["radii"], **smoother.mode.as_metadata(),
        "noise": identity["noise"],
        "violations": None if violations is None else violations.tolist(),
        **{key: identity[key] for key in ("checkpoint_sha256", "model_file_sha256", "denoiser_sha256", "attack",
                                          "restarts")},
        "identity": identity,
    }  # fmt: skip
    return settings


def _attack_out(out_dir: str | os.PathLike[str], *, overwrite: bool = False, resume: bool = False) -> Path:
    """``out_dir`` as a Path, checked before any work: never a folder of other files, and never an earlier
    attack unless it is replaced (``overwrite``) or continued (``resume``); a ValueError names --out."""
    out = Path(out_dir)
    if overwrite and resume:
        raise ValueError("resume: --resume continues an attack, --overwrite replaces it: give one of them")
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: {out} exists and is not a folder")
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")} if out.is_dir() else set()
    if not names <= {EMPIRICAL_CSV, THRESHOLDED_CSV, PER_INPUT, SETTINGS, PARTS}:
        raise ValueError(f"out: {out} holds other files than an attack's; choose a new --out")  # never mix or lose
    if names and not overwrite and not resume:
        if EMPIRICAL_CSV in names:
            raise ValueError(f"out: {out} already holds an attack; replace it with --overwrite, or choose a new --out")
        raise ValueError(f"out: {out} holds an unfinished attack; continue it with --resume, or replace it with "
                         "--overwrite")
    return out


def _attack_at_radii(smoother: MultiGuard, x: torch.Tensor, labels: np.ndarray, indices: np.ndarray,
                     radii_arr: np.ndarray, *, k: int, method: AttackMethod, options: dict, n: int, seed: int,
                     batch_size: int, log: Callable[[str], None],
                     parts: AttackParts | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The attack ``method`` (with ``options``: its budget) at each radius on every input, in blocks so that
    progress shows (the noise of an input depends on ``(seed, index)`` only, so blocks give what one call on all
    inputs gives): the empirical sizes ``|L ∩ top-k|`` and the perturbation norms, both
    ``(num_inputs, len(radii_arr))``. An attack with a warm start starts each input from its perturbation at the
    previous radius. Each finished block is saved in ``parts`` (positions, sizes, norms, and the perturbations
    for a warm start); blocks found there (a killed attack's) are not done again. R = 0 is measured, not
    attacked."""
    sizes = np.zeros((len(indices), radii_arr.size), dtype=np.int64)
    norms = np.zeros((len(indices), radii_arr.size))
    block = max(1, batch_size // max(1, options["samples"]))
    progress = _Progress(log, len(indices) * radii_arr.size, len(indices))
    log(f"attack: {method.name}, {len(indices)} inputs x {radii_arr.size} radii, {options['steps']} steps of "
        f"{options['samples']} samples" + (f", {options['restarts']} restarts" if "restarts" in options else "")
        + f", then n = {n} samples to measure")
    previous = torch.zeros(tuple(x.shape), dtype=torch.float32) if method.warm_start else None
    for j, radius in enumerate(radii_arr):
        todo, found_deltas = _finished_blocks(parts, j, sizes, norms, previous)
        progress.skip(int((~todo).sum()))
        current = found_deltas
        remaining = np.flatnonzero(todo)
        for begin in range(0, len(remaining), block):
            part = remaining[begin : begin + block]
            kwargs = dict(options, radius=float(radius), k=k, n=n, seed=seed, index=indices[part],
                          batch_size=batch_size)
            result = _attack_block(method, smoother, x[part], labels[part], kwargs,
                                   None if previous is None else previous[part])
            sizes[part, j] = result.sizes
            norms[part, j] = result.deltas.reshape(len(result.sizes), -1).double().norm(dim=1).numpy()
            if current is not None:
                current[part] = result.deltas.to(current.dtype)
            if parts is not None:
                extra = {} if current is None else {"deltas": result.deltas.numpy()}
                parts.save(f"r{j:03d}-p{int(part[0]):07d}", positions=part, sizes=sizes[part, j],
                           norms=norms[part, j], **extra)
            progress.advance(len(part), radius, len(indices) - len(remaining) + begin + len(part))
        previous = current
        log(f"attack: R = {radius:g}: mean |L ∩ top-k| {sizes[:, j].mean():.3f} over {len(indices)} inputs "
            f"({progress.elapsed():.0f} s)")
    return sizes, norms


def _attack_block(method: AttackMethod, smoother: MultiGuard, x: torch.Tensor, labels: np.ndarray, kwargs: dict,
                  init: torch.Tensor | None) -> AttackResult:
    """One block of inputs attacked (or, at R = 0, only measured, by the baseline's path with no steps)."""
    if kwargs["radius"] <= 0:
        kwargs = {key: value for key, value in kwargs.items() if key not in ("restarts", "step_size")}
        return attack_smoothed(smoother, x, labels, **{**kwargs, "steps": 0})
    if method.restarts is None:
        return method.function(smoother, x, labels, **kwargs)
    return method.function(smoother, x, labels, init=init if method.warm_start else None, **kwargs)


def _finished_blocks(parts: AttackParts | None, j: int, sizes: np.ndarray, norms: np.ndarray,
                     previous: torch.Tensor | None) -> tuple[np.ndarray, torch.Tensor | None]:
    """The inputs still to attack at radius ``j`` (bool mask), after filling ``sizes``, ``norms`` (and the
    perturbations, started from ``previous``) from the blocks a killed attack saved in ``parts``."""
    todo = np.ones(sizes.shape[0], dtype=bool)
    current = None if previous is None else previous.clone()
    for name in parts.names(f"r{j:03d}-") if parts is not None else ():
        found = parts.load(name)
        if found is not None:
            sizes[found["positions"], j], norms[found["positions"], j] = found["sizes"], found["norms"]
            todo[found["positions"]] = False
            if current is not None and "deltas" in found:
                current[torch.as_tensor(found["positions"])] = torch.as_tensor(found["deltas"]).to(current)
    return todo, current


class _Progress:
    """Progress lines with an ETA per radius, at most one each 5 s."""

    def __init__(self, log: Callable[[str], None], total: int, per_radius: int) -> None:
        self.log, self.total, self.per_radius, self.finished = log, total, per_radius, 0
        self.started = self.last = self.radius_started = time.perf_counter()
        self.radius_done = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def skip(self, done: int) -> None:
        self.finished += done
        self.radius_started, self.radius_done = time.perf_counter(), 0

    def advance(self, done: int, radius: float, inputs_done: int) -> None:
        self.finished += done
        self.radius_done += done
        now = time.perf_counter()
        if now - self.last >= 5.0 and self.finished < self.total:
            self.last = now
            rate = (now - self.radius_started) / max(self.radius_done, 1)
            left = rate * (self.per_radius - inputs_done)
            self.log(f"attack: R = {radius:g}: {inputs_done}/{self.per_radius} inputs, {now - self.started:.0f} s, "
                     f"about {left:.0f} s left at this radius")
