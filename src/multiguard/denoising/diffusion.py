"""One-step diffusion denoisers for denoised smoothing (Carlini et al., ICLR 2023), from the ``diffusers`` package.

An off-the-shelf diffusion model removes Gaussian noise of any level it was trained on, so it can stand in
front of a classifier trained on clean images with no training at all: the base classifier becomes
``classifier(D(x + eps))`` with ``D`` one call of the diffusion model at the timestep whose noise level
matches sigma. The certificate is unchanged (any base classifier); only the accuracy under noise depends on D.

Usage (needs ``pip install 'multiguard[diffusion]'``)::

    from multiguard.denoising.diffusion import load_diffusion_denoiser
    from multiguard.denoising.denoisers import DenoisedClassifier

    denoiser = load_diffusion_denoiser("google/ddpm-cifar10-32", sigma=0.25, image_size=32, in_channels=3)
    smoothed = MultiGuard(DenoisedClassifier(denoiser, classifier), num_classes=10, sigma=0.25)
    denoiser.identity      # what a run records: model, revision, weights digest, timestep, resize policy, ...

The one step, for noisy images ``x + eps`` in [0, 1] pixel units with ``eps ~ N(0, sigma^2 I)``:

1. ``y = 2 (x + eps) - 1``: the model's [-1, 1] range, so the noise std there is ``2 sigma``;
2. resize to the model's native size ``m`` if the certified images have another size ``S`` (see below);
3. DDPM-like models (a scheduler with ``alphas_cumprod``, e.g. ``DDPMScheduler``): the forward process is
   ``x_t = sqrt(abar_t) y_0 + sqrt(1 - abar_t) z``, so ``sqrt(abar_t) * y`` is a sample of ``x_t`` exactly
   when ``sqrt((1 - abar_t) / abar_t) = 2 sigma``. The timestep ``t`` is the integer whose noise level
   ``s_t = sqrt((1 - abar_t) / abar_t)`` is nearest to ``2 sigma`` (absolute difference; ties to the smaller
   t); ``s_t`` is increasing in t, so the mismatch ``|s_t - 2 sigma|`` is at most half the gap between two
   neighbouring levels, and ``noise_mismatch = s_t / (2 sigma) - 1`` is recorded (the model then expects a
   slightly different noise than it gets; the certificate does not depend on it). One call of the UNet at
   ``t`` gives epsilon (``prediction_type = 'epsilon'``: ``y_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``),
   the sample (``'sample'``) or v (``'v_prediction'``: ``y_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v``).
4. consistency models (``CMStochasticIterativeScheduler``, e.g. ``openai/diffusers-cd_imagenet64_l2``): the
   noise level is continuous, so ``sigma_k = 2 sigma`` exactly (no rounding, mismatch 0), and the one-step call
   is the model's own: ``y_0 = c_skip y + c_out UNet(y / sqrt(sigma_k^2 + sigma_data^2), t(sigma_k))``.
   A class-conditional model needs ``class_label`` (one fixed label for every input: the base classifier
   must be a function of its input).
5. ``y_0`` clamped to [-1, 1], resized back to S, mapped back to [0, 1]: the output has the input's shape.

Resolution policy. The l2 ball of the certificate is defined on the certified images (S x S), and the noise is
added there, so any resizing happens inside the base classifier, after the noise: nearest-neighbour when m is
an integer multiple of S (every pixel keeps noise std 2 sigma; blocks share it), area averaging when S is an
integer multiple of m (the std becomes ``2 sigma / (S / m)``), bilinear with antialiasing otherwise. The
timestep is chosen for the effective noise std after the resize (the root mean square, over output pixels, of
the resize applied to white noise, computed exactly from the resize's matrix), and the policy is recorded
(``resize``, ``model_size``, ``image_size``, ``effective_noise_std``) in :attr:`DiffusionDenoiser.identity`.
The denoised image is resized back to S with bilinear antialiasing.

Weights. ``source`` is a local folder (a ``UNet2DModel`` in the folder or its ``unet/`` subfolder and a
scheduler config in it or ``scheduler/``) or a Hugging Face model id, looked up in the local cache first
(``local_files_only``); a model that is not there is downloaded into that cache, and where that is impossible
(``HF_HUB_OFFLINE`` set, no network) ValueError gives one line saying so. Without ``diffusers`` installed,
ValueError names the extra to install.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from multiguard.common.validation import check_float, check_int

__all__ = [
    "DIFFUSION_EXTRA",
    "DiffusionDenoiser",
    "diffusers_denoiser",
    "load_diffusion_denoiser",
    "nearest_timestep",
    "resize_noise_gain",
]

DIFFUSION_EXTRA = "pip install 'multiguard[diffusion]'"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _diffusers() -> Any:
    """The ``diffusers`` module, or ValueError naming the extra that installs it."""
    try:
        import diffusers
    except ImportError as exc:
        raise ValueError(f"denoiser: diffusion denoisers need the diffusers package, which is not installed "
                         f"({exc.msg}): {DIFFUSION_EXTRA}") from None
    return diffusers


def nearest_timestep(alphas_cumprod: torch.Tensor, noise_std: float) -> tuple[int, float]:
    """The DDPM timestep whose noise level ``sqrt((1 - abar_t) / abar_t)`` is nearest to ``noise_std``.

    Args:
        alphas_cumprod: ``(T,)`` the scheduler's ``abar_t``, decreasing in t.
        noise_std: the noise std in the model's [-1, 1] units (``2 sigma``), > 0.

    Returns:
        ``(t, s_t)``: nearest by absolute difference, ties to the smaller t. ValueError if ``noise_std`` lies
        outside ``[s_0, s_{T-1}]`` by more than half the gap to the next level (the model never saw such noise).
    """
    noise_std = check_float(noise_std, "noise_std", 0.0, low_open=True)
    abar = alphas_cumprod.detach().to(torch.float64).cpu()
    levels = torch.sqrt((1 - abar) / abar)
    t = int(torch.argmin((levels - noise_std).abs()))  # argmin returns the first minimum: ties to the smaller t
    low, high = float(levels[0]), float(levels[-1])
    step_low = float(levels[1] - levels[0]) if len(levels) > 1 else 0.0
    step_high = float(levels[-1] - levels[-2]) if len(levels) > 1 else 0.0
    if noise_std < low - step_low / 2 or noise_std > high + step_high / 2:
        raise ValueError(f"sigma: noise std {noise_std:g} in the model's [-1, 1] units (2 sigma) is outside the "
                         f"noise levels of its {len(levels)} timesteps [{low:.4g}, {high:.4g}]")
    return t, float(levels[t])


def _resize_mode(image_size: int, model_size: int) -> str:
    if model_size == image_size:
        return "none"
    if model_size % image_size == 0:
        return "nearest"
    if image_size % model_size == 0:
        return "area"
    return "bilinear"


def _resize_to(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if mode == "none" or tuple(x.shape[-2:]) == size:
        return x
    if mode in ("nearest", "area"):
        return F.interpolate(x, size=size, mode=mode)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


def resize_noise_gain(image_size: int, model_size: int) -> float:
    """RMS over output pixels of the std of the resize (S -> m, the policy above) applied to unit white noise.

    Exact: the resize is separable, ``A = A_1 (x) A_1``, so the mean per-pixel variance is
    ``||A||_F^2 / m^2 = (||A_1||_F^2 / m)^2`` with ``A_1`` the 1-D resize matrix, and the gain its square root.
    1 for no resize and for nearest upsampling; ``m / S`` for area averaging.
    """
    image_size = check_int(image_size, "image_size", 1)
    model_size = check_int(model_size, "model_size", 1)
    mode = _resize_mode(image_size, model_size)
    if mode == "none":
        return 1.0
    # one 1-D basis vector per image, along H; W = 4 copies (torch's antialiased resize mishandles W = 1)
    basis = torch.eye(image_size).reshape(image_size, 1, image_size, 1).expand(-1, -1, -1, 4).contiguous()
    columns = _resize_to(basis, (model_size, 4), mode)[..., 0].double()
    frobenius = float((columns**2).sum())
    return frobenius / model_size


class DiffusionDenoiser(nn.Module):
    """One-step denoiser ``(N, C, S, S) -> (N, C, S, S)`` in [0, 1] from a diffusers ``UNet2DModel`` and scheduler.

    Build it with :func:`load_diffusion_denoiser` (from a folder or model id), or directly from a UNet and a
    scheduler (e.g. in a test): the noise level, timestep and resize policy are fixed at construction from
    ``sigma`` and ``image_size`` (see the module docstring). Attributes: ``timestep`` (the UNet's timestep
    argument: an integer for DDPM-like models, ``t(sigma_k)`` for consistency models), ``noise_level`` (the
    model's noise std at that timestep, [-1, 1] units), ``noise_mismatch`` (``noise_level / effective noise
    std - 1``), ``identity`` (a JSON-able dict for run records).
    """

    def __init__(self, unet: nn.Module, scheduler: Any, *, sigma: float, image_size: int, in_channels: int,
                 source: str | None = None, revision: str | None = None, weights_sha256: str | None = None,
                 class_label: int | None = None) -> None:
        super().__init__()
        self.sigma = check_float(sigma, "sigma", 0.0, low_open=True)
        self.image_size = check_int(image_size, "image_size", 1)
        self.in_channels = check_int(in_channels, "in_channels", 1)
        config = unet.config
        if int(config.in_channels) != self.in_channels or int(config.out_channels) != self.in_channels:
            raise ValueError(f"denoiser: the diffusion model {source or '(given)'} takes {config.in_channels} "
                             f"channel(s) and gives {config.out_channels}, not the {self.in_channels} of the "
                             "certified images")
        native = config.sample_size
        native = native[0] if isinstance(native, (tuple, list)) else native
        self.model_size = self.image_size if native is None else int(native)
        self.resize = _resize_mode(self.image_size, self.model_size)
        self.effective_noise_std = 2 * self.sigma * resize_noise_gain(self.image_size, self.model_size)
        self.unet = unet.eval()
        self.unet.requires_grad_(False)
        self.kind = "consistency" if type(scheduler).__name__ == "CMStochasticIterativeScheduler" else "ddpm"
        scheduler_config = dict(scheduler.config)
        self.prediction_type = scheduler_config.get("prediction_type", "epsilon")
        if self.kind == "ddpm":
            self._set_ddpm_timestep(scheduler, source)
        else:
            self._set_consistency_timestep(scheduler_config, scheduler)
        self.noise_mismatch = self.noise_level / self.effective_noise_std - 1
        conditional = getattr(config, "num_class_embeds", None)
        if conditional and class_label is None:
            raise ValueError(f"denoiser: the diffusion model {source or '(given)'} is class-conditional "
                             f"({conditional} classes): give class_label=<one fixed label>")
        self.class_label = None if not conditional else check_int(class_label, "class_label", 0, conditional - 1)
        self.identity: dict[str, Any] = {
            "kind": f"diffusers-{self.kind}", "source": source, "revision": revision, "weights_sha256": weights_sha256,
            "scheduler": type(scheduler).__name__, "prediction_type": self.prediction_type,
            "timestep": self.timestep, "noise_level": self.noise_level, "sigma": self.sigma,
            "effective_noise_std": self.effective_noise_std, "noise_mismatch": self.noise_mismatch,
            "image_size": self.image_size, "model_size": self.model_size, "resize": self.resize,
            "in_channels": self.in_channels, "class_label": self.class_label,
        }

    def _set_ddpm_timestep(self, scheduler: Any, source: str | None) -> None:
        """A DDPM-like model: the timestep whose noise level is nearest the effective noise, and the scales that
        map a noisy image to that timestep's input."""
        if getattr(scheduler, "alphas_cumprod", None) is None:
            raise ValueError(f"denoiser: the scheduler {type(scheduler).__name__} of {source or 'the model'} has "
                             "no alphas_cumprod (a DDPM-like scheduler) and is not a consistency model's")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"denoiser: prediction_type {self.prediction_type!r} of {source or 'the model'} is "
                             "not one of 'epsilon', 'sample', 'v_prediction'")
        t, level = nearest_timestep(scheduler.alphas_cumprod, self.effective_noise_std)
        abar = float(scheduler.alphas_cumprod.to(torch.float64)[t])
        self.timestep: int | float = t
        self.noise_level = level
        self.register_buffer("input_scale", torch.tensor(math.sqrt(abar)), persistent=False)
        self.register_buffer("noise_scale", torch.tensor(math.sqrt(1 - abar)), persistent=False)

    def _set_consistency_timestep(self, scheduler_config: dict[str, Any], scheduler: Any) -> None:
        """A consistency model: the time of the effective noise level (within the model's range) and the
        boundary-condition scalings at it."""
        sigma_min, sigma_max = float(scheduler_config["sigma_min"]), float(scheduler_config["sigma_max"])
        level = self.effective_noise_std
        if not sigma_min <= level <= sigma_max:
            raise ValueError(f"sigma: noise std {level:g} in the model's [-1, 1] units (2 sigma) is outside the "
                             f"consistency model's range [{sigma_min:g}, {sigma_max:g}]")
        sigma_data = float(scheduler_config["sigma_data"])
        c_skip, c_out = scheduler.get_scalings_for_boundary_condition(torch.tensor(level, dtype=torch.float64))
        self.timestep = float(scheduler.sigma_to_t(level))
        self.noise_level = level
        self.register_buffer("input_scale", torch.tensor(1 / math.sqrt(level**2 + sigma_data**2)),
                             persistent=False)
        self.register_buffer("c_skip", torch.tensor(float(c_skip)), persistent=False)
        self.register_buffer("c_out", torch.tensor(float(c_out)), persistent=False)

    def _unet(self, sample: torch.Tensor) -> torch.Tensor:
        timestep = torch.full((sample.shape[0],), self.timestep, device=sample.device,
                              dtype=torch.long if self.kind == "ddpm" else sample.dtype)
        labels = None if self.class_label is None else torch.full((sample.shape[0],), self.class_label,
                                                                   dtype=torch.long, device=sample.device)
        return self.unet(sample, timestep, class_labels=labels).sample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise noisy images ``(N, C, S, S)`` in [0, 1] pixel units; returns ``(N, C, S, S)`` in [0, 1]."""
        y = _resize_to(2 * x - 1, (self.model_size, self.model_size), self.resize)
        if self.kind == "ddpm":
            x_t = self.input_scale * y
            out = self._unet(x_t)
            if self.prediction_type == "epsilon":
                y0 = (x_t - self.noise_scale * out) / self.input_scale
            elif self.prediction_type == "sample":
                y0 = out
            else:  # v_prediction
                y0 = self.input_scale * x_t - self.noise_scale * out
        else:
            y0 = self.c_skip * y + self.c_out * self._unet(self.input_scale * y)
        y0 = y0.clamp(-1, 1)
        if self.resize != "none":
            y0 = F.interpolate(y0, size=x.shape[-2:], mode="bilinear", align_corners=False, antialias=True)
        return ((y0 + 1) / 2).clamp(0, 1)


# ------------------------------------------------------------------------------------------- loading


def _folder_digest(folder: Path) -> str:
    """sha256 over the names and bytes of the weight and config files of a model folder (sorted paths)."""
    digest = hashlib.sha256()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in (*_WEIGHT_SUFFIXES, ".json"))
    for path in files:
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _hub_folder(model_id: str, revision: str | None) -> tuple[Path, str]:
    """A model id's snapshot folder in the Hugging Face cache, downloading it if needed; ``(folder, commit)``."""
    from huggingface_hub import constants, snapshot_download

    patterns = ["*.json", "*.safetensors", "*.bin"]
    fetch = f"python -c \"from huggingface_hub import snapshot_download; snapshot_download('{model_id}')\""
    missing = f"denoiser: diffusers:{model_id} is not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
    try:
        folder = snapshot_download(model_id, revision=revision, local_files_only=True, allow_patterns=patterns)
    except Exception:  # noqa: BLE001 - not in the cache (the hub raises several kinds): try downloading
        if constants.HF_HUB_OFFLINE:
            raise ValueError(f"{missing} and HF_HUB_OFFLINE is set: download it once with network access "
                             f"({fetch}) or pass a local folder") from None
        try:
            folder = snapshot_download(model_id, revision=revision, allow_patterns=patterns)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, gated: one line
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise ValueError(f"{missing} and could not be downloaded ({reason}): download it once with network "
                             f"access ({fetch}) or pass a local folder") from None
    folder = Path(folder)
    return folder, folder.name  # snapshots/<commit>


def _component(folder: Path, name: str, config_file: str) -> Path:
    for candidate in (folder / name, folder):
        if (candidate / config_file).is_file():
            return candidate
    raise ValueError(f"denoiser: {folder} has no {config_file} (in it or in {name}/): not a diffusers UNet2DModel "
                     "folder")


def load_diffusion_denoiser(source: str | os.PathLike, *, sigma: float, image_size: int, in_channels: int,
                            revision: str | None = None, class_label: int | None = None,
                            device: str | torch.device = "cpu") -> DiffusionDenoiser:
    """Build the one-step diffusion denoiser for noise ``N(0, sigma^2 I)`` on ``in_channels x image_size^2`` images.

    Args:
        source: a local folder holding a diffusers ``UNet2DModel`` (``config.json`` and weights, in the folder or
            its ``unet/`` subfolder) and a scheduler (``scheduler_config.json``, in the folder or ``scheduler/``),
            or a Hugging Face model id such as ``google/ddpm-cifar10-32`` (from the cache, else downloaded).
        sigma: the certified noise level (pixels in [0, 1]); the timestep is chosen for it.
        image_size, in_channels: the certified images' side and channels (the classifier's); the model must
            have as many channels.
        revision: a hub revision (branch, tag or commit) for a model id.
        class_label: the fixed class label of a class-conditional model.
        device: where the model is put.

    Returns:
        the :class:`DiffusionDenoiser` in eval mode; its ``identity`` names the model (``source``: the id or the
        folder's absolute path; ``revision``: the snapshot's commit for an id; ``weights_sha256``: a digest of
        the weight and config files), the timestep and the resize policy.
    """
    diffusers = _diffusers()
    text = os.fspath(source)
    if not text:
        raise ValueError("denoiser: diffusers: needs a model id or a local folder (diffusers:<id or folder>)")
    local = Path(text).expanduser()
    if local.is_dir():
        folder, recorded, commit = local.resolve(), str(local.resolve()), None
    elif local.exists() or text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ValueError(f"denoiser: {text} is not a folder holding a diffusers model (nor a Hugging Face model id)")
    else:
        folder, commit = _hub_folder(text, revision)
        recorded = text
    unet_folder = _component(folder, "unet", "config.json")
    scheduler_folder = _component(folder, "scheduler", "scheduler_config.json")
    try:
        unet = diffusers.UNet2DModel.from_pretrained(unet_folder, local_files_only=True,
                                                     low_cpu_mem_usage=False)  # no accelerate needed
        config = diffusers.DDPMScheduler.load_config(scheduler_folder, local_files_only=True)
        scheduler_class = getattr(diffusers, config.get("_class_name", "DDPMScheduler"), diffusers.DDPMScheduler)
        scheduler = scheduler_class.from_config(config)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ValueError(f"denoiser: cannot load the diffusers model in {folder}: {reason}") from None
    denoiser = DiffusionDenoiser(unet, scheduler, sigma=sigma, image_size=image_size, in_channels=in_channels,
                                 source=recorded, revision=commit, weights_sha256=_folder_digest(folder),
                                 class_label=class_label)
    return denoiser.to(device)


def diffusers_denoiser(spec: str, *, sigma: float, image_size: int, in_channels: int,
                       device: str | torch.device = "cpu") -> DiffusionDenoiser:
    """The ``diffusers:<spec>`` denoiser source (:data:`multiguard.denoising.sources.DENOISER_SOURCES`).

    ``spec``: a local folder or a Hugging Face model id, optionally ``@revision`` (``google/ddpm-cifar10-32@main``)
    and ``#class_label`` for a class-conditional model (``openai/diffusers-cd_imagenet64_l2#0``).
    """
    rest, _, label = spec.partition("#")
    if label and not label.isdigit():
        raise ValueError(f"denoiser: diffusers:{spec}: the class label after '#' must be an integer, got {label!r}")
    source, revision = rest, None
    if "@" in rest and not Path(rest).expanduser().exists():
        source, _, revision = rest.rpartition("@")
    return load_diffusion_denoiser(source, sigma=sigma, image_size=image_size, in_channels=in_channels,
                                   revision=revision or None, class_label=int(label) if label else None, device=device)
