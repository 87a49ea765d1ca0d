"""An l2 PGD attack on the smoothed multi-label classifier: how far the certificates are from what an attacker gets.

The certificate is a lower bound on robustness: at least e(R) labels of L(x) stay in the smoothed top-k under
every perturbation of l2 norm below R. An attack gives an upper bound: the labels of L that are still in the
smoothed top-k at the point it found. This module attacks the smoothed classifier itself, in the manner of
SmoothAdv (Salman et al., NeurIPS 2019): the gradient of a Monte Carlo estimate of a smooth surrogate of the
smoothed label probabilities, taken with respect to the perturbation delta, drives normalised l2 steps that are
projected on the ball ``||delta||_2 <= R`` and on the valid input range (``x + delta`` in [0, 1] for images).

The surrogate: for each of ``samples`` noisy copies ``x + delta + eps`` the base model's scores s give a soft
top-k' membership ``sigmoid((s_i - t) / temperature)``, t halfway between the k'-th and the (k'+1)-th score
(for k' = c every label is always in). Their mean over the copies, q_i, is a smooth stand-in for
``p_i(x + delta)``. Each step increases ``mean log q_j`` over the k highest non-L labels and decreases
``mean log q_i`` over the labels of L.

The result is then measured as the paper measures the smoothed classifier: n fresh Monte Carlo samples at
``x + delta`` through :meth:`MultiGuard.sample_counts` (a seed of their own, independent of the attack's noise
and of any certification run), the smoothed top-k taken on the counts (ties by label index), and
``|L ∩ top-k|`` per input. Precision, recall and F1 use the certificate's definitions
(:func:`multiguard.certify.certified_metrics`), so empirical and certified curves can be drawn together.

Usage::

    from multiguard.attack import attack_smoothed, run_attack, load_empirical

    result = attack_smoothed(model, x, labels, radius=0.5, k=3, k_prime=1, sigma=0.5, n=1000)
    result.sizes          # int64 (N,): |L ∩ smoothed top-k(x + delta)| from n fresh samples
    result.deltas         # (N, *input_shape): ||delta||_2 <= 0.5, x + delta in [0, 1]

    run = run_attack("model.pt", out_dir="attack", radii=[0.25, 0.5, 1.0], k=3, k_prime=1, num_inputs=100)
    curves = load_empirical("attack")   # radius, precision, recall, f1 arrays; the settings
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import certify as _certify
from .engine import as_batch, as_index, eval_mode
from .files import atomic_write_bytes
from .seeds import STREAM_ATTACK, attack_evaluation_seed, noise_seed
from .smoothing import MultiGuard, as_label_mask, smoothed_top_k
from .validation import check_float, check_int, check_interval

__all__ = [
    "EMPIRICAL_COLUMNS",
    "AttackResult",
    "AttackRun",
    "EmpiricalCurves",
    "attack_smoothed",
    "evaluation_seed",
    "load_empirical",
    "run_attack",
    "smoothed_top_k",
]

EMPIRICAL_COLUMNS: tuple[str, ...] = ("radius", "precision", "recall", "f1", "num_inputs")
"""The columns of ``ATTACK_DIR/empirical.csv``, in order (metrics as fractions in [0, 1])."""

EMPIRICAL_CSV = "empirical.csv"
PER_INPUT = "per_input.npz"
SETTINGS = "attack.json"

evaluation_seed = attack_evaluation_seed  # the name this module has always exported


def _intersection(top: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """|L ∩ top|: int64 ``(N,)`` from the ``(N, k)`` predicted labels and the ``(N, c)`` masks of L."""
    return np.take_along_axis(labels, top, axis=1).sum(axis=1).astype(np.int64)


# ------------------------------------------------------------------------------------------------ results


@dataclass(frozen=True, eq=False)
class AttackResult:
    """What :func:`attack_smoothed` found for N inputs at one radius.

    Attributes:
        deltas: float tensor ``(N, *input_shape)`` on the CPU: ``||deltas[i]||_2 <= radius`` and, with an
            ``input_range``, ``x[i] + deltas[i]`` inside it.
        sizes: int64 ``(N,)``: ``|L ∩ smoothed top-k(x + delta)|`` measured on ``n`` fresh samples.
        counts: int64 ``(N, c)``: those samples' top-k' counts at ``x + delta``.
        predicted: int64 ``(N, k)``: the smoothed top-k at ``x + delta`` (ties by label index).
        clean_sizes: int64 ``(N,)`` the same measurement at ``x`` (same samples' seed), or ``None``.
        labels: bool ``(N, c)`` mask of L.
    """

    deltas: torch.Tensor
    sizes: np.ndarray
    counts: np.ndarray
    predicted: np.ndarray
    clean_sizes: np.ndarray | None
    labels: np.ndarray
    radius: float
    k: int
    k_prime: int
    sigma: float
    n: int

    def metrics(self) -> _certify.CertifiedMetrics:
        """Empirical top-k precision, recall and F1 at ``radius`` (the certificate's definitions)."""
        return _certify.certified_metrics(self.sizes, self.labels, self.k)


def _soft_top_k_prime(scores: torch.Tensor, k_prime: int, temperature: float) -> torch.Tensor:
    """Soft membership of the top-k' ``(B, c)``: sigmoid of each score's distance to the k'/k'+1 midpoint."""
    c = scores.shape[1]
    if k_prime >= c:
        return torch.ones_like(scores)
    top = torch.topk(scores, k_prime + 1, dim=1).values
    threshold = 0.5 * (top[:, k_prime - 1] + top[:, k_prime])
    return torch.sigmoid((scores - threshold[:, None]) / temperature)


def _attack_noise(
    seed: int, index: int, step: int, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    generator = torch.Generator(device=device)
    generator.manual_seed(noise_seed(seed, index, step, STREAM_ATTACK))
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)


def _project(delta: torch.Tensor, x: torch.Tensor, radius: float, input_range: tuple[float, float] | None) -> None:
    """In place: onto the l2 ball of ``radius`` (per input), then onto ``x + delta`` in ``input_range``.

    The box step moves every coordinate towards 0 (x lies in the range), so the ball constraint survives it.
    """
    norms = delta.reshape(delta.shape[0], -1).double().norm(dim=1)
    scale = torch.where(norms > radius, radius / (norms * (1.0 + 1e-6)), torch.ones_like(norms))
    delta.mul_(scale.to(delta.dtype).view(-1, *([1] * (delta.ndim - 1))))
    if input_range is not None:
        delta.copy_((x + delta).clamp_(*input_range) - x)


def _pgd(
    smoother: MultiGuard,
    x: torch.Tensor,
    labels: torch.Tensor,
    index: np.ndarray,
    *,
    radius: float,
    k: int,
    steps: int,
    samples: int,
    step_size: float,
    temperature: float,
    seed: int,
    input_range: tuple[float, float] | None,
) -> torch.Tensor:
    """PGD on one chunk of inputs ``x (B, *shape)`` with masks ``labels (B, c)``; returns delta ``(B, *shape)``."""
    model, sigma, k_prime = smoother.model, smoother.sigma, smoother.k_prime
    num, shape = x.shape[0], tuple(x.shape[1:])
    delta = torch.zeros_like(x)
    inside = labels.to(x.dtype)
    outside = 1.0 - inside
    active = (labels.any(dim=1) & (~labels).any(dim=1)).to(x.dtype)  # nothing to attack otherwise
    for step in range(steps):
        noise = torch.stack(
            [_attack_noise(seed, int(i), step, (samples, *shape), x.device, x.dtype) for i in index]
        )  # (B, m, *shape)
        delta.requires_grad_(True)
        batch = (x + delta)[:, None] + sigma * noise
        if smoother.clamp is not None:
            batch = batch.clamp(*smoother.clamp)
        scores = model(batch.reshape(num * samples, *shape))
        q = _soft_top_k_prime(scores.float(), k_prime, temperature).reshape(num, samples, -1).mean(dim=1)
        log_q = q.clamp_min(1e-6).log()
        with torch.no_grad():  # the k strongest labels outside L: the ones that can take L's places
            ranked = torch.where(outside > 0, q, torch.full_like(q, -1.0))
            rivals = torch.zeros_like(q).scatter_(1, torch.topk(ranked, k, dim=1).indices, 1.0) * outside
        gain = (rivals * log_q).sum(1) / rivals.sum(1).clamp_min(1.0)
        loss = (inside * log_q).sum(1) / inside.sum(1).clamp_min(1.0)
        objective = ((gain - loss) * active).sum()
        (grad,) = torch.autograd.grad(objective, delta)
        delta = delta.detach()
        flat = grad.reshape(num, -1)
        norms = flat.norm(dim=1).clamp_min(1e-12)
        delta += step_size * (flat / norms[:, None]).reshape(delta.shape)
        _project(delta, x, radius, input_range)
    return delta.detach()


def attack_smoothed(
    model: torch.nn.Module | Callable[[torch.Tensor], torch.Tensor] | MultiGuard,
    x: torch.Tensor | np.ndarray,
    labels: np.ndarray | torch.Tensor,
    *,
    radius: float,
    k: int,
    k_prime: int | None = None,
    sigma: float | None = None,
    steps: int = 20,
    samples: int = 32,
    n: int = 1000,
    seed: int = 0,
    index: np.ndarray | Sequence[int] | None = None,
    step_size: float | None = None,
    temperature: float = 1.0,
    input_range: tuple[float, float] | None = (0.0, 1.0),
    clamp: tuple[float, float] | None = None,
    eval_seed: int | None = None,
    batch_size: int = 1000,
    measure_clean: bool = False,
    device: str | torch.device | None = None,
) -> AttackResult:
    """Attack the smoothed classifier at each input; measure what is left of L in its top-k at ``x + delta``.

    Args:
        model: the base classifier (a module or callable mapping ``(B, *input_shape)`` to scores ``(B, c)``)
            or a :class:`MultiGuard`, whose model, sigma, k' and clamp are then used (``k_prime``, ``sigma``
            and ``clamp`` must be left out or agree).
        x: ``(N, *input_shape)`` inputs; labels: ``(N, c)`` boolean masks of L (e.g. the ground truth).
        radius: l2 radius R of the attack (0: no perturbation, only the measurement).
        k: labels the smoothed classifier predicts; k_prime: labels the base classifier predicts (default 1);
            sigma: noise standard deviation (required with a bare model).
        steps: PGD steps; samples: noisy copies per input and step in the surrogate's Monte Carlo mean.
        n: fresh samples per input that measure the attacked point (use the certification's n).
        seed: seeds the attack's noise (stream of its own, per ``(seed, index, step)``); the measurement uses
            :func:`evaluation_seed` ``(seed)`` unless ``eval_seed`` is given.
        index: ``(N,)`` non-negative integers naming the inputs (default ``range(N)``): the noise of input i
            depends on ``(seed, index[i])`` only.
        step_size: l2 length of each step (default ``2.5 * radius / steps``); temperature: of the soft top-k'.
        input_range: ``(lo, hi)`` that ``x + delta`` must stay in (default (0, 1), for images); ``None``: none.
        clamp: with a bare model, the base classifier's clamp of ``x + noise`` (as :class:`MultiGuard`'s).
        batch_size: forward batch size (inputs x samples per PGD forward; samples per measurement forward).
        measure_clean: also measure ``|L ∩ top-k|`` at ``x`` itself (``clean_sizes``).
        device: where to run (default: the smoother's / the model's device).

    Returns:
        an :class:`AttackResult`. Its ``sizes`` are an empirical upper bound on the worst case over the ball
        (up to the measurement's Monte Carlo error); a certified size e(R) of the same input should not exceed
        it except with probability alpha (the certificate's failure probability) or by Monte Carlo error of
        the measurement where labels are nearly tied.
    """
    radius = check_float(radius, "radius", 0.0)
    steps = check_int(steps, "steps", 0)
    samples = check_int(samples, "samples", 1)
    n = check_int(n, "n", 1)
    seed = check_int(seed, "seed", 0)
    batch_size = check_int(batch_size, "batch_size", 1)
    temperature = check_float(temperature, "temperature", 0.0, low_open=True)
    input_range = check_interval(input_range, "input_range")
    if isinstance(model, MultiGuard):
        smoother = model
        for name, value, own in (("k_prime", k_prime, smoother.k_prime), ("sigma", sigma, smoother.sigma),
                                 ("clamp", clamp, smoother.clamp)):
            if value is not None and (tuple(value) if name == "clamp" else value) != own:  # type: ignore[arg-type]
                raise ValueError(f"{name}={value!r} disagrees with the MultiGuard's {name}={own!r}")
        if device is not None and torch.device(device) != smoother.device:
            raise ValueError(f"device={device!r} disagrees with the MultiGuard's device {smoother.device}")
    else:
        if sigma is None:
            raise ValueError("sigma is required when model is not a MultiGuard")
        shape = tuple(labels.shape) if isinstance(labels, torch.Tensor) else np.shape(labels)
        if len(shape) != 2:
            raise ValueError(f"labels must be an (N, c) mask, got shape {shape}")
        num_classes = int(shape[1])
        smoother = MultiGuard(model, num_classes, sigma, k_prime=1 if k_prime is None else k_prime, clamp=clamp,
                              device=device)
    c = smoother.num_classes
    k = check_int(k, "k", 1)
    if k > c:
        raise ValueError(f"k must be <= the number of classes ({c}), got {k}")
    tensor = as_batch(x)
    num = tensor.shape[0]
    mask = as_label_mask(labels, num, c)
    index_arr = as_index(index, num)
    if step_size is None:
        step_size = 2.5 * radius / max(steps, 1)
    step_size = check_float(step_size, "step_size", 0.0)
    eval_seed = evaluation_seed(seed) if eval_seed is None else check_int(eval_seed, "eval_seed", 0)

    device_, dtype = smoother.device, smoother.dtype
    x_dev = tensor.to(device=device_, dtype=dtype).contiguous()
    if input_range is not None and num and (x_dev.min() < input_range[0] or x_dev.max() > input_range[1]):
        raise ValueError(f"x must lie in input_range {input_range} (pass input_range=None for unbounded inputs)")
    deltas = torch.zeros_like(x_dev)
    if radius > 0 and steps > 0 and num:
        chunk = max(1, batch_size // samples)
        labels_dev = torch.as_tensor(mask, device=device_)
        with eval_mode(smoother.model), torch.enable_grad():
            for start in range(0, num, chunk):
                part = slice(start, start + chunk)
                deltas[part] = _pgd(
                    smoother, x_dev[part], labels_dev[part], index_arr[part], radius=radius, k=k, steps=steps,
                    samples=samples, step_size=step_size, temperature=temperature, seed=seed,
                    input_range=input_range,
                )
    attacked = x_dev + deltas
    counts = np.asarray(smoother.sample_counts(attacked, n, seed=eval_seed, index=index_arr, batch_size=batch_size))
    clean_sizes = None
    if measure_clean:
        clean = np.asarray(smoother.sample_counts(x_dev, n, seed=eval_seed, index=index_arr, batch_size=batch_size))
        clean_sizes = _intersection(smoothed_top_k(clean, k), mask)
    predicted = smoothed_top_k(counts, k)
    return AttackResult(
        deltas=deltas.detach().cpu(),
        sizes=_intersection(predicted, mask),
        counts=counts.astype(np.int64),
        predicted=predicted,
        clean_sizes=clean_sizes,
        labels=mask,
        radius=radius,
        k=k,
        k_prime=smoother.k_prime,
        sigma=smoother.sigma,
        n=n,
    )


# ----------------------------------------------------------------------------------------------- ATTACK_DIR


@dataclass(frozen=True, eq=False)
class EmpiricalCurves:
    """The contents of ``ATTACK_DIR``: empirical precision / recall / F1 under attack, one value per radius.

    ``radius``, ``precision``, ``recall``, ``f1`` are float ``(R,)`` arrays (fractions in [0, 1]);
    ``num_inputs`` the number of inputs averaged; ``settings`` the dict of ``attack.json`` (k, k_prime, sigma,
    n, alpha, steps, samples, seed, checkpoint, dataset, ... and, when certified sizes were computed, the
    per-radius count of inputs whose empirical size fell below their certified size).
    """

    radius: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    num_inputs: int
    settings: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> np.ndarray:
        """The ``precision``, ``recall`` or ``f1`` array."""
        if name not in ("precision", "recall", "f1"):
            raise ValueError(f"name must be precision, recall or f1, got {name!r}")
        return getattr(self, name)


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
    device: str | torch.device = "cpu",
    log: Callable[[str], None] | None = None,
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
    """
    from .pipeline import dataset_for_checkpoint
    from .runs import select_inputs
    from .train import load_checkpoint

    radii_arr = _as_radii(radii)
    k = check_int(k, "k", 1)
    k_prime = check_int(k_prime, "k_prime", 1)
    n = check_int(n, "n", 1)
    seed = check_int(seed, "seed", 0)
    if not 0 < float(alpha) < 1:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    log = log or (lambda line: None)
    out = Path(out_dir)
    model, meta = load_checkpoint(checkpoint_path, device=device)
    data, info = dataset_for_checkpoint(meta, dataset=dataset, data_root=data_root, split=split)
    num_classes = int(meta["num_classes"])
    if k > num_classes or k_prime > num_classes:
        raise ValueError(f"k and k_prime must be <= the number of classes ({num_classes}), got {k} and {k_prime}")
    sigma = float(meta["sigma"]) if sigma is None else check_float(sigma, "sigma", 0.0, low_open=True)
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma} (the checkpoint was trained without noise: pass sigma)")
    clamp = (0.0, 1.0) if meta.get("clamp") else None
    smoother = MultiGuard(model, num_classes, sigma, k_prime=k_prime, clamp=clamp, device=device)
    indices = select_inputs(len(data), num_inputs, seed)
    images, masks = [], []
    for i in indices:
        image, label = data[int(i)]
        images.append(torch.as_tensor(image))
        masks.append(np.asarray(torch.as_tensor(label)) > 0.5)
    x = torch.stack(images)
    labels = np.stack(masks)
    out.mkdir(parents=True, exist_ok=True)

    certified = violations = None
    if certify:
        counts = smoother.sample_counts(x, n, seed=seed, index=indices, batch_size=batch_size)
        lower, upper = _certify.label_probability_bounds(counts, n, alpha)
        certified = _certify.certified_intersection_size(
            lower, upper, labels, k=k, k_prime=k_prime, sigma=sigma, radius=radii_arr
        )
    sizes = np.zeros((len(indices), radii_arr.size), dtype=np.int64)
    norms = np.zeros((len(indices), radii_arr.size))
    for j, radius in enumerate(radii_arr):
        result = attack_smoothed(
            smoother, x, labels, radius=float(radius), k=k, steps=steps, samples=samples, n=n, seed=seed,
            index=indices, step_size=step_size, temperature=temperature, batch_size=batch_size,
        )
        sizes[:, j] = result.sizes
        norms[:, j] = result.deltas.reshape(len(indices), -1).double().norm(dim=1).numpy()
        log(f"attack: R = {radius:g}: mean |L ∩ top-k| {result.sizes.mean():.3f} over {len(indices)} inputs")
    if certified is not None:
        violations = (sizes < certified).sum(axis=0).astype(np.int64)

    metrics = _certify.certified_metrics(sizes, labels, k)
    curves = EmpiricalCurves(
        radius=radii_arr, precision=np.asarray(metrics.precision), recall=np.asarray(metrics.recall),
        f1=np.asarray(metrics.f1), num_inputs=int(len(indices)),
    )
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(EMPIRICAL_COLUMNS)
    for j, radius in enumerate(radii_arr):
        writer.writerow([repr(float(radius)), repr(float(curves.precision[j])), repr(float(curves.recall[j])),
                         repr(float(curves.f1[j])), curves.num_inputs])
    arrays: dict[str, np.ndarray] = dict(indices=indices, labels=labels, radii=radii_arr, sizes=sizes,
                                         delta_norms=norms)
    if certified is not None:
        arrays["certified"] = certified
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    settings = {
        "checkpoint": os.fspath(checkpoint_path),
        **{key: info[key] for key in ("dataset", "data_root", "split", "dataset_options") if key in info},
        "k": k, "k_prime": k_prime, "sigma": sigma, "clamp": None if clamp is None else list(clamp), "n": n,
        "alpha": float(alpha), "seed": seed, "eval_seed": evaluation_seed(seed), "steps": steps, "samples": samples,
        "step_size": step_size, "temperature": temperature, "num_inputs": int(len(indices)),
        "radii": radii_arr.tolist(),
        "violations": None if violations is None else violations.tolist(),
    }  # fmt: skip
    atomic_write_bytes(out / PER_INPUT, buffer.getvalue())
    atomic_write_bytes(out / SETTINGS, (json.dumps(settings, indent=2) + "\n").encode())
    atomic_write_bytes(out / EMPIRICAL_CSV, text.getvalue().encode())  # last: its presence means a complete dir
    return AttackRun(
        out_dir=out, curves=EmpiricalCurves(**{**curves.__dict__, "settings": settings}), indices=indices,
        labels=labels, sizes=sizes, certified=certified, violations=violations, delta_norms=norms,
    )


def load_empirical(attack_dir: str | os.PathLike[str]) -> EmpiricalCurves:
    """Read ``ATTACK_DIR/empirical.csv`` (and ``attack.json`` when present) written by :func:`run_attack`.

    Raises ValueError naming the file if it is missing or its columns are not :data:`EMPIRICAL_COLUMNS`.
    """
    folder = Path(attack_dir)
    path = folder / EMPIRICAL_CSV
    if not path.is_file():
        raise ValueError(f"attack_dir: no {EMPIRICAL_CSV} in {folder} (run `multiguard attack --out {folder}`)")
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        rows = [row for row in reader if row]
    if header is None or tuple(header) != EMPIRICAL_COLUMNS:
        raise ValueError(f"attack_dir: {path} has columns {header}, expected {','.join(EMPIRICAL_COLUMNS)}")
    try:
        table = np.array([[float(value) for value in row] for row in rows], dtype=np.float64).reshape(-1, 5)
    except ValueError:
        raise ValueError(f"attack_dir: {path} holds a value that is not a number") from None
    settings: dict[str, Any] = {}
    if (folder / SETTINGS).is_file():
        settings = json.loads((folder / SETTINGS).read_text())
    num_inputs = int(table[0, 4]) if len(table) else 0
    return EmpiricalCurves(radius=table[:, 0], precision=table[:, 1], recall=table[:, 2], f1=table[:, 3],
                           num_inputs=num_inputs, settings=settings)
