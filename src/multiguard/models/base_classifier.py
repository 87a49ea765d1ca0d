"""Which base classifier a run uses, as one value: the checkpoint (and its SHA-256), the denoiser in front of
it, sigma, the sampling mode and the device. No torch at import: torch loads in :meth:`BaseClassifierSpec.load`.

A run's counts hold for exactly one base classifier, so everything that decides it is said once, here: the
device is resolved once, each file is hashed once, the model is loaded once, and the run records the same
facts the classifier was built from (:meth:`BaseClassifierSpec.run_fields`, :meth:`BaseClassifierSpec.record`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiguard.common.files import file_sha256
from multiguard.common.noise_kinds import check_noise
from multiguard.common.validation import check_bool, check_choice, check_int, check_positive

__all__ = ["BaseClassifierSpec", "ModeSpec"]


# How far (as a ratio either way) --sigma may be from the checkpoint's training sigma before a warning.
SIGMA_FAR = 1.5


@dataclass(frozen=True)
class ModeSpec:
    """How the base classifier's forward runs, as a user asks for it (torch-free; see
    :mod:`multiguard.sampling.acceleration`): ``precision`` (fp32, bf16, fp16 or auto), ``channels_last`` (``None``:
    what the precision implies) and ``compile``. :meth:`resolve` gives the mode on a device."""

    precision: str = "fp32"
    channels_last: bool | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        from multiguard.sampling.modes import PRECISIONS

        check_choice(self.precision, "precision", PRECISIONS)
        if self.channels_last is not None:
            check_bool(self.channels_last, "channels_last")
        check_bool(self.compile, "compile")

    def resolve(self, device: Any) -> Any:
        """The :class:`multiguard.sampling.acceleration.SamplingMode` this means on ``device`` (imports torch)."""
        from multiguard.sampling.acceleration import resolve_mode

        return resolve_mode(self.precision, self.channels_last, self.compile, device)


@dataclass(frozen=True)
class BaseClassifierSpec:
    """The base classifier of a run: ``classifier(denoiser(x + noise))`` in ``mode`` on ``device``.

    Args:
        checkpoint: a classifier checkpoint of :func:`multiguard.training.classifier.train`.
        sigma: the noise level (``None``: the checkpoint's training sigma).
        mode: the sampling mode (:class:`ModeSpec`, or a resolved
            :class:`multiguard.sampling.acceleration.SamplingMode`: anything with ``precision``, ``channels_last`` and
            ``compile``).
        denoiser: a denoiser checkpoint to put in front of the classifier (denoised smoothing), a registered
            ``<source>:<spec>`` form (``diffusers:<model id or folder>``, kept as a string), or ``None``.
        device: where the model runs: a device name already resolved (e.g. the torchrun context's) or
            ``"auto"`` (resolved once, on first use).
        k_prime: the base classifier's top-k' (what a sequential run's stop rule reads; counts are stored for
            every k' anyway).
        thresholds: per-label thresholds (:class:`multiguard.certificates.thresholds.LabelThresholds`) of a
        thresholded base
            classifier, or ``None``: a run then stores each label's on-counts beside the top-k' counts, and the
            thresholds are part of its identity.
        noise, shared_noise: the noise kind (``"float"`` or ``"sound"``, :mod:`multiguard.common.noise_kinds`) and
            whether one noise block is shared by every input (``MultiGuard(noise=..., shared_noise=...)``).

    :meth:`load` builds the smoothed classifier once; :attr:`checkpoint_meta`, :attr:`checkpoint_sha256` and
    :attr:`denoiser_sha256` read each file once.
    """

    checkpoint: Path
    sigma: float | None = None
    mode: Any = field(default_factory=ModeSpec)
    denoiser: Path | str | None = None
    device: str | None = "auto"
    k_prime: int = 1
    thresholds: Any = None
    noise: str = "float"
    shared_noise: bool = False
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "checkpoint", Path(self.checkpoint))
        if self.denoiser is not None and not self.denoiser_is_source:
            object.__setattr__(self, "denoiser", Path(self.denoiser))
        check_int(self.k_prime, "k_prime", 1)
        check_noise(self.noise)
        check_bool(self.shared_noise, "shared_noise")
        if self.sigma is not None:  # before any file is read or made
            object.__setattr__(self, "sigma", check_positive(self.sigma, "sigma"))

    def _once(self, key: str, make: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def resolved_device(self) -> str:
        """The device: ``"auto"`` (or ``None``) resolved once to CUDA where available, else the CPU; a named
        device (e.g. the torchrun context's, already resolved) as given (checked where the model loads)."""
        if self.device not in (None, "auto"):
            return str(self.device)

        def resolve() -> str:
            from multiguard.common.devices import resolve_device

            return str(resolve_device(self.device))

        return self._once("device", resolve)

    @property
    def checkpoint_sha256(self) -> str:
        """The checkpoint file's SHA-256 (read once)."""
        return self._once("checkpoint_sha256", lambda: file_sha256(self.checkpoint))

    @property
    def denoiser_is_source(self) -> bool:
        """Whether the denoiser is a registered ``<source>:<spec>`` form (e.g. ``diffusers:...``), not a file."""
        from multiguard.denoising.sources import denoiser_source

        return self.denoiser is not None and denoiser_source(os.fspath(self.denoiser)) is not None

    @property
    def denoiser_sha256(self) -> str | None:
        """The denoiser file's SHA-256 (read once), or the digest of a source denoiser's identity (builds it);
        ``None`` without a denoiser."""
        if self.denoiser is None:
            return None
        if self.denoiser_is_source:
            return self.denoiser_record()["denoiser_sha256"]
        return self._once("denoiser_sha256", lambda: file_sha256(self.denoiser))

    def _loaded(self) -> tuple[Any, dict[str, Any]]:
        def load_model() -> tuple[Any, dict[str, Any]]:
            from multiguard.models.checkpoints import load_checkpoint

            return load_checkpoint(self.checkpoint, device=self.resolved_device)

        return self._once("model", load_model)

    @property
    def checkpoint_meta(self) -> dict[str, Any]:
        """The checkpoint's metadata (architecture, classes, training sigma, dataset, ...)."""
        return self._loaded()[1]

    def sigma_warning(self) -> str | None:
        """One line when ``sigma`` is far (more than a factor 1.5) from the checkpoint's training sigma, without a
        denoiser (a denoiser's mismatch is refused where it is loaded); None otherwise. The certificate still
        holds at ``sigma``; the base classifier has not seen such noise, so it is usually a poor one."""
        trained = self.checkpoint_meta.get("sigma")
        if self.sigma is None or self.denoiser is not None or not trained:
            return None
        ratio = float(self.sigma) / float(trained)
        if 1 / SIGMA_FAR <= ratio <= SIGMA_FAR:
            return None
        return (f"warning: sigma {self.sigma:g} is {ratio:.3g}x the checkpoint's training sigma {float(trained):g}: "
                "the certificate holds at that sigma, but the model never saw such noise (expect small radii; "
                "leave --sigma out to use the training sigma)")

    def load(self) -> Any:
        """The smoothed classifier (:class:`multiguard.sampling.smoothed.MultiGuard`), built once.

        Raises ValueError naming the checkpoint, the denoiser or sigma where they do not fit together."""

        def build() -> Any:
            from multiguard.models.checkpoints import smoothed_from_checkpoint

            model, meta = self._loaded()
            return smoothed_from_checkpoint(
                model, meta, k_prime=self.k_prime, sigma=self.sigma, device=self.resolved_device,
                precision=self.mode.precision, channels_last=self.mode.channels_last, compile=self.mode.compile,
                denoiser=self.denoiser, thresholds=self.thresholds, noise=self.noise, shared_noise=self.shared_noise,
            )

        return self._once("smoothed", build)

    def with_thresholds(self, thresholds: Any) -> BaseClassifierSpec:
        """The same base classifier with per-label ``thresholds`` (read from the class names of
        :attr:`checkpoint_meta`), sharing the model and the digests already read (no file is read twice)."""
        import dataclasses

        spec = dataclasses.replace(self, thresholds=thresholds)
        spec._cache.update({key: value for key, value in self._cache.items() if key != "smoothed"})
        return spec

    def denoiser_identity(self) -> dict[str, Any] | None:
        """What a prediction names of its denoiser: ``{"denoiser": path or source form, "sha256": the file's
        SHA-256 or the digest of the source's identity, "settings": its training settings or identity}``;
        ``None`` without a denoiser."""
        if self.denoiser is None:
            return None
        record = self.denoiser_record()
        return {"denoiser": os.fspath(record["denoiser"]), "sha256": record["denoiser_sha256"],
                "settings": record["denoiser_settings"]}

    def denoiser_record(self) -> dict[str, Any]:
        """What a run records about the denoiser: ``denoiser`` (path), ``denoiser_sha256`` and
        ``denoiser_settings`` (``None`` values without one)."""
        if self.denoiser is None:
            return {"denoiser": None, "denoiser_sha256": None, "denoiser_settings": None}
        if self.denoiser_is_source:  # the identity of the denoiser the source built (model, timestep, ...)
            from multiguard.denoising.denoisers import denoiser_in, denoiser_record

            return self._once("denoiser_record", lambda: denoiser_record(self.denoiser, denoiser_in(self.load())))

        def settings() -> dict[str, Any]:
            from multiguard.common.torch_files import read_denoiser_checkpoint

            meta = read_denoiser_checkpoint(self.denoiser)["meta"]
            return {key: meta.get(key) for key in ("arch", "arch_options", "objective", "sigma", "dataset", "epoch",
                                                     "classifier_sha256", "stability_epochs")}

        return {"denoiser": os.fspath(self.denoiser), "denoiser_sha256": self.denoiser_sha256,
                "denoiser_settings": self._once("denoiser_settings", settings)}

    def run_fields(self) -> dict[str, Any]:
        """The fields of :class:`multiguard.runs.spec.RunSpec` this base classifier decides (loads it)."""
        smoother = self.load()
        model = self._loaded()[0]
        return {
            "checkpoint_sha256": self.checkpoint_sha256,
            "model_file_sha256": getattr(model, "arch_file_sha256", None),
            "denoiser_sha256": self.denoiser_sha256,
            "arch": self.checkpoint_meta["arch"],
            "num_classes": int(self.checkpoint_meta["num_classes"]),
            "sigma": smoother.sigma,
            "clamp": None if smoother.clamp is None else list(smoother.clamp),
            **smoother.mode.as_metadata(),
            "thresholds": None if self.thresholds is None else self.thresholds.identity(),
            "noise": smoother.noise.name,
            "shared_noise": smoother.shared_noise,
        }

    def record(self) -> dict[str, Any]:
        """The descriptive facts a run records beside :meth:`run_fields`: the checkpoint path, the training
        sigma, torch's version, the denoiser's path and settings, and the noise in words with its alpha slack."""
        import torch

        record = self.denoiser_record()
        del record["denoiser_sha256"]  # an identity field (run_fields)
        if self.thresholds is not None:
            record["thresholds_source"] = self.thresholds.source
        model_file = getattr(self._loaded()[0], "arch_file", None)
        if model_file is not None:  # the file behind model_file_sha256 (a file factory's)
            record["model_file"] = os.fspath(model_file)
        smoother = self.load()
        record["noise_description"] = smoother.describe_noise()
        # the sampler's addition to alpha per noise value (0 for float noise; docs/soundness.md)
        record["noise_alpha_slack_per_value"] = float(getattr(getattr(smoother.noise, "table", None), "slack", 0.0))
        return {**record, "checkpoint": os.fspath(self.checkpoint),
                "train_sigma": float(self.checkpoint_meta["sigma"]), "torch_version": str(torch.__version__)}
