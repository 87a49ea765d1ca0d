"""Certified labels for image files: checkpoint + images -> :class:`ImagePrediction` per image (the step behind
``multiguard predict``)."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from multiguard.certificates import metrics as _metrics
from multiguard.certificates.stop_rule import StopRule
from multiguard.common.devices import resolve_device
from multiguard.common.validation import check_int
from multiguard.models.base_classifier import BaseClassifierSpec, ModeSpec

__all__ = ["ImagePrediction", "LoadedModel", "load_model", "predict_images"]


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
    batch_seconds: float | None = None  # wall time of sampling and certifying the whole batch of images
    # with thresholds: labels certified on (name, radius), undecided (names), certified off (name, radius)
    certified_on: list[tuple[str, float]] | None = None
    undecided: list[str] | None = None
    certified_off: list[tuple[str, float]] | None = None
    # the denoiser in front of the classifier: its path or source form, SHA-256 and settings (None: no denoiser)
    denoiser: dict[str, Any] | None = None
    noise: str = ""  # the noise in words: "sound, rounded Gaussian on the 1/255 grid" or the float line
    # the file's (width, height), the (width, height) of the image certified, and how one became the other:
    # the radii are l2 norms in the certified image's pixels (in [0, 1]), not the file's
    file_size: tuple[int, int] | None = None
    certified_size: tuple[int, int] | None = None
    resize: str = "stretch"
    # the noise level and failure probability the radii hold at, and the checkpoint's training sigma (a sigma far
    # from it is allowed, and said: the JSON reader sees both)
    sigma: float | None = None
    alpha: float | None = None
    training_sigma: float | None = None

    @property
    def resized(self) -> bool:
        """Whether the file had another size than the image certified (then the radii are not in its pixels)."""
        return self.file_size is not None and self.file_size != self.certified_size

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (infinite radii become the string ``"inf"``; ``trivial[e-1]``: whether the guarantee
        for e holds by counting alone, whatever the model)."""
        return {
            "image": self.path,
            "labels": self.labels,
            "radii": [r if np.isfinite(r) else "inf" for r in self.radii],
            "trivial": [e <= self.trivial for e in range(1, len(self.radii) + 1)],
            "file_size": None if self.file_size is None else list(self.file_size),
            "certified_size": None if self.certified_size is None else list(self.certified_size),
            "resize": self.resize if self.resized else None,
            "radius_units": "l2 norm in the pixels (in [0, 1]) of the certified image"
                            + (f", {self.certified_size[0]}x{self.certified_size[1]}" if self.certified_size else ""),
            "sigma": self.sigma,
            "alpha": self.alpha,
            "training_sigma": self.training_sigma,
            "mode": self.mode,
            "noise": self.noise,
            "samples": self.samples,
            "batch_seconds": self.batch_seconds,
            "denoiser": self.denoiser,
            **({} if self.certified_on is None else {"thresholded": {
                "on": {name: r if np.isfinite(r) else "inf" for name, r in self.certified_on},
                "undecided": list(self.undecided or []),
                "off": {name: r if np.isfinite(r) else "inf" for name, r in self.certified_off or []},
            }}),
        }


def content_index(images: torch.Tensor, salt: bytes = b"") -> np.ndarray:
    """int64 ``(N,)``: each image's noise index from its pixels (the first 56 bits of the SHA-256 of ``salt`` and
    the image as the model sees it), so that an image gets the same noise, and the same answer, wherever it stands
    in the list and however often it is named. A distinct ``salt`` per request keeps the noise of requests merged
    into one model call apart (:meth:`LoadedModel.predict_merged`)."""
    arrays = images.detach().cpu().contiguous().numpy()
    return np.array([int.from_bytes(hashlib.sha256(salt + a.tobytes()).digest()[:7], "big") for a in arrays],
                    dtype=np.int64)


def _load_images(images: Sequence[str | os.PathLike[str]], size: int, channels: int,
                 resize: str) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The image files as a batch ``(N, channels, size, size)`` fitted as ``resize`` says, and each file's own
    (width, height)."""
    from multiguard.data._common import image_file_size, load_image

    for path in images:
        if Path(path).is_dir():
            raise ValueError(f"images: {path} is a folder; name the image files in it (e.g. {Path(path) / '*.png'})")
    batch = torch.stack([load_image(path, size, channels, resize=resize) for path in images])
    return batch, [image_file_size(path) for path in images]


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
    stop_rule: StopRule | None = None,
    denoiser: str | os.PathLike[str] | None = None,
    thresholds: Any = None,
    threshold_scale: str = "probability",
    q: float = 0.5, noise: str = "float",
    resize: str = "stretch",
    log: Callable[[str], None] | None = None,
) -> list[ImagePrediction]:
    """Predict k labels for each image file with the smoothed classifier and certify them (per-e radii).

    With probability at least ``1 - alpha`` per image, at least e of the returned labels stay among the
    smoothed classifier's top k under any perturbation of l2 norm below ``radii[e-1]`` (pixels in [0, 1]).
    The guarantee is for the base classifier in the sampling mode given by ``precision``, ``channels_last``
    and ``compile`` (recorded in each prediction's ``mode``); to claim a run's certificate, use the run's mode.
    ``stop_rule`` (``StopRule(radius=R)``, :class:`~multiguard.certificates.stop_rule.StopRule`): sample each
    image only until the number of its labels certified at R is settled (n is then the most samples; the rule's
    futility, schedule, spending, margin and bounds, see :meth:`MultiGuard.certify`); ``samples`` says how many
    it used, ``batch_seconds`` how long the
    whole batch took (selection, estimation and certificate).
    ``denoiser``: a denoiser checkpoint in front of the classifier (denoised smoothing).
    ``noise``: ``"float"`` or ``"sound"`` (the rounded Gaussian on the 1/255 grid; 8-bit image files are on it,
    others are refused naming the grid); each prediction's ``noise`` names it. Every request draws its own noise
    (never shared across images).

    ``thresholds`` (a number, a file with one per label, or a
    :class:`~multiguard.certificates.thresholds.LabelThresholds`;
    ``threshold_scale``): the thresholded certificate too, from the same estimation samples at cut ``q``: each
    prediction's ``certified_on`` (labels with their radius), ``undecided`` and ``certified_off`` (with the
    radius up to which they stay off); these statements hold together with the top-k ones, with probability at
    least ``1 - alpha`` for each image.

    The noise of each image is seeded from ``seed`` and the image's content (:func:`content_index`): the same
    image gets the same labels and radii wherever it stands in ``images``.

    ``resize``: how a file of another size than the model's square is fitted to it (``"stretch"``, the default,
    ``"pad"`` or ``"refuse"``; see :func:`~multiguard.data.load_image`). The radii are then in the pixels of the
    fitted image: each prediction's ``file_size`` and ``certified_size`` say both sizes.
    ``log``: where a warning goes (``sigma`` far from the checkpoint's training sigma); ``None``: nowhere.
    """
    from multiguard.data._common import check_resize

    check_resize(resize)
    if not images:
        raise ValueError("images: name at least one image file")
    for path in images:
        if Path(path).is_dir():
            raise ValueError(f"images: {path} is a folder; name the image files in it (e.g. {Path(path) / '*.png'})")
    served = load_model(checkpoint, k_prime=k_prime, sigma=sigma, device=device, precision=precision,
                        channels_last=channels_last, compile=compile, denoiser=denoiser, thresholds=thresholds,
                        threshold_scale=threshold_scale, noise=noise, load=False)
    if log is not None and (warning := served.spec.sigma_warning()) is not None:
        log(warning)
    served.check_k(k)
    size = served.image_size
    batch, file_sizes = _load_images(images, size, served.channels, resize)
    served.check_grid(batch, [os.fspath(path) for path in images], "--noise float; noise='float' in Python")
    served.load()
    predictions = served.predict(batch, [os.fspath(path) for path in images], k=k, n0=n0, n=n, alpha=alpha,
                                 seed=seed, batch_size=batch_size, stop_rule=stop_rule, q=q)
    for prediction, file_size in zip(predictions, file_sizes, strict=True):
        prediction.file_size, prediction.certified_size, prediction.resize = file_size, (size, size), resize
    return predictions

@dataclass
class LoadedModel:
    """A base classifier built once (checkpoint, denoiser, thresholds, mode, noise) and its smoothed classifier,
    to predict batches of images with (:meth:`predict`): what ``multiguard predict`` does per call and
    ``multiguard serve`` once, at start."""

    spec: BaseClassifierSpec
    smoother: Any = None

    @property
    def meta(self) -> dict[str, Any]:
        return self.spec.checkpoint_meta

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def channels(self) -> int:
        return int(self.meta.get("in_channels", 3))

    def check_k(self, k: object) -> int:
        """``k`` as an int in [1, the number of classes], else ValueError naming ``k``."""
        return check_int(k, "k", 1, len(self.class_names), high_label="the number of classes")

    def check_grid(self, batch: torch.Tensor, names: Sequence[str], fix: str) -> None:
        """With sound noise, refuse in one line naming the file the first image of ``batch`` ``(N, C, H, W)``
        whose pixels are off the 1/255 grid (a 16-bit or float image): the sound noise is defined on 8-bit
        pixels only. ``fix``: how this caller switches to float noise (``"--noise float"``)."""
        if self.spec.noise != "sound":
            return
        from multiguard.common.noise_kinds import off_grid_rows

        off = off_grid_rows(batch.detach().cpu().numpy())
        for name, bad in zip(names, off.tolist(), strict=True):
            if bad:
                raise ValueError(f"image {name}: its pixels are not 8-bit (off the 1/255 grid: a 16-bit or float "
                                 "image); sound noise needs 8-bit pixels: save the file as an 8-bit image, or use "
                                 f"float noise ({fix})")

    def load(self) -> LoadedModel:
        """Build the smoothed classifier (model load, compile) if not yet built; returns self."""
        if self.smoother is None:
            self.smoother = self.spec.load()
        return self

    def identity(self) -> dict[str, Any]:
        """What a run records of this base classifier: :meth:`BaseClassifierSpec.run_fields` and
        :meth:`BaseClassifierSpec.record`, with the class names."""
        self.load()
        return {**self.spec.run_fields(), **self.spec.record(), "class_names": self.class_names,
                "image_size": self.image_size, "in_channels": self.channels}

    def predict(self, batch: torch.Tensor, paths: Sequence[str], *, k: int = 3, n0: int = 100, n: int = 1000,
                alpha: float = 0.001, seed: int = 0, batch_size: int = 1000, stop_rule: StopRule | None = None,
                q: float = 0.5, index: np.ndarray | None = None) -> list[ImagePrediction]:
        """:func:`predict_images` for a loaded ``batch`` ``(N, C, H, W)`` in [0, 1] named ``paths`` (the
        ``image`` of each answer): the noise of each image from ``seed`` and its content (:func:`content_index`;
        ``index``: the images' noise indices ``(N,)`` instead)."""
        k = self.check_k(k)
        smoother = self.load().smoother
        started = time.perf_counter()
        index = content_index(batch) if index is None else index
        result = smoother.predict(batch, k=k, n0=n0, n=n, alpha=alpha, seed=seed, index=index,
                                  batch_size=batch_size, stop_rule=stop_rule, q=q)
        seconds = time.perf_counter() - started
        predictions = _image_predictions(result, paths, self.class_names, k, seconds, smoother.mode.as_metadata(),
                                         self.spec.denoiser_identity(), smoother.describe_noise())
        trained = self.meta.get("sigma")
        for prediction in predictions:
            prediction.training_sigma = None if trained is None else float(trained)
        return predictions


    def predict_merged(self, batches: Sequence[torch.Tensor], paths: Sequence[Sequence[str]], *, seed: int,
                       **certificate: Any) -> list[list[ImagePrediction]]:
        """The predictions of several requests' ``batches`` (each ``(N_r, C, H, W)``, named ``paths[r]``) in ONE
        call of the smoothed classifier, so that the engine packs their samples into full forward batches; one
        list per request, in order. ``certificate``: the keywords of :meth:`predict` but ``seed`` and ``index``.

        The images of request r get the noise indices :func:`content_index` ``(batch, salt=r)``: under the one
        ``seed`` of the call, each request's noise is independent of every other's (the same image in two requests
        meets independent noise; twice in one request, the same), and each answer is exactly the one
        :meth:`predict` gives that request alone with the same seed and indices (the engine's counts do not depend
        on how samples are batched). ``batch_seconds`` is the time of the whole call."""
        if len(batches) != len(paths):
            raise ValueError(f"paths: {len(paths)} lists of names for {len(batches)} batches")
        index = np.concatenate([content_index(batch, _request_salt(r)) for r, batch in enumerate(batches)])
        flat = [name for names in paths for name in names]
        predictions = self.predict(torch.cat(list(batches)), flat, seed=seed, index=index, **certificate)
        bounds = np.cumsum([0, *(len(names) for names in paths)])
        return [predictions[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def _request_salt(position: int) -> bytes:
    """The :func:`content_index` salt of the request at ``position`` in a merged call."""
    return b"multiguard-request:" + position.to_bytes(8, "big")


def load_model(checkpoint: str | os.PathLike[str], *, k_prime: int = 1, sigma: float | None = None,
               device: str = "auto", precision: str = "fp32", channels_last: bool | None = None,
               compile: bool = False, denoiser: str | os.PathLike[str] | None = None, thresholds: Any = None,
               threshold_scale: str = "probability", noise: str = "float", load: bool = True) -> LoadedModel:
    """The base classifier of ``checkpoint`` as :func:`predict_images` builds it (same arguments), built once;
    ``load``: build the smoothed classifier now (else at the first prediction)."""
    spec = BaseClassifierSpec(checkpoint, sigma=sigma, device=str(resolve_device(device)), k_prime=k_prime,
                              mode=ModeSpec(precision, channels_last, compile), denoiser=denoiser, noise=noise)
    if thresholds is not None:
        from multiguard.certificates.thresholds import parse_threshold

        spec = spec.with_thresholds(parse_threshold(thresholds, list(spec.checkpoint_meta["class_names"]),
                                                    threshold_scale))
    served = LoadedModel(spec)
    return served.load() if load else served



def _image_predictions(result: Any, images: Sequence[str | os.PathLike[str]], names: list[str], k: int,
                       seconds: float, mode: dict[str, Any], denoiser_identity: dict[str, Any] | None,
                       noise_words: str) -> list[ImagePrediction]:
    """One :class:`ImagePrediction` per image from the batch's :class:`~multiguard.sampling.certificate.Prediction`
    (class names for indices, the trivial part, the thresholded certificate's labels on, undecided and off)."""
    num_classes = len(names)
    trivial = _metrics.trivial_intersection_size(result.mask, k)
    predictions = [
        ImagePrediction(os.fspath(path), [names[j] for j in result.labels[i]], [float(r) for r in result.radii[i]],
                        trivial=int(trivial[i]), num_classes=num_classes, mode=dict(mode),
                        samples=int(result.samples[i]), batch_seconds=seconds, denoiser=denoiser_identity,
                        noise=noise_words, sigma=float(result.sigma), alpha=float(result.alpha))
        for i, path in enumerate(images)
    ]
    if result.thresholded is not None:
        on, off = result.thresholded.on_radius, result.thresholded.off_radius
        for i, prediction in enumerate(predictions):
            order = np.argsort(-on[i], kind="stable")
            prediction.certified_on = [(names[j], float(on[i, j])) for j in order if on[i, j] > 0]
            prediction.undecided = [names[j] for j in range(num_classes) if on[i, j] == 0 and off[i, j] == 0]
            prediction.certified_off = [(names[j], float(off[i, j])) for j in range(num_classes) if off[i, j] > 0]
    return predictions


