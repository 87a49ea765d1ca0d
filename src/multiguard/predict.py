"""Certified labels for image files: checkpoint + images -> :class:`ImagePrediction` per image (the step behind
``multiguard predict``)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import certify as _certify
from .checkpoints import load_checkpoint, smoothed_from_checkpoint
from .devices import resolve_device
from .validation import check_int

__all__ = ["ImagePrediction", "predict_images"]



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


