"""Denoised smoothing: a denoiser in front of a classifier you already have, and denoiser checkpoints.

Randomized smoothing certifies *any* base classifier, so the base classifier may be a composition
``classifier(denoiser(x + noise))`` (Salman et al., NeurIPS 2020): an off-the-shelf classifier trained on
clean images, behind a denoiser trained once per noise level sigma and image domain. The certificate of
:class:`multiguard.sampling.smoothed.MultiGuard` holds unchanged for :class:`DenoisedClassifier`; only its
accuracy under noise depends on how well the denoiser restores the image.

Usage::

    from multiguard import MultiGuard
    from multiguard.denoising.denoisers import DenoisedClassifier, load_denoiser, check_denoiser

    denoiser, dmeta = load_denoiser("denoiser.pt")          # from multiguard.training.denoiser.train_denoiser
    check_denoiser(dmeta, sigma=0.5, image_size=32, in_channels=1)   # refuses another sigma or image size
    smoothed = MultiGuard(DenoisedClassifier(denoiser, classifier), num_classes=10, sigma=0.5)

Architectures (``arch``), each mapping ``(N, C, S, S) -> (N, C, S, S)`` in [0, 1] pixel units::

    dncnn                   DnCNN-style residual network at full resolution, no BatchNorm: ``depth`` 3x3
                            convolutions of ``width`` channels predict the noise, which is subtracted
                            (defaults width 16, depth 4: a few times the cost of the demo's small_cnn)
    unet                    a small U-Net whose convolutions all work below full resolution: ``levels``
                            stride-2 stages of ``width``, 2 x ``width``, ... channels, transposed convolutions
                            back up with skip connections, and a last convolution that also sees the noisy
                            input (residual); a wide receptive field for few operations per pixel (defaults
                            width 32, levels 2, depth 2: train-denoiser's default, the best certified F1 per
                            unit of sampling cost measured on multidigits)
    path/to/file.py:factory or package.module:factory
                            your own: ``factory(in_channels=C[, image_size=S])`` returning an nn.Module, found
                            as :func:`multiguard.common.user_code.resolve_factory` finds a classifier's factory (the
                            checkpoint records the file's absolute path)

A ``--denoiser`` value may also be ``<source>:<spec>`` with the source registered in
:data:`multiguard.denoising.sources.DENOISER_SOURCES` (``diffusers:<model id or folder>``: a pretrained diffusion
model's one-step denoiser, :mod:`multiguard.denoising.diffusion`); :func:`build_denoiser` builds either form.

Denoiser checkpoints hold the weights and the metadata needed to rebuild and to check the denoiser
(``sigma``, ``arch``, ``arch_options``, ``image_size``, ``in_channels``, ``dataset``, ``objective``, ...);
they are written atomically (:func:`multiguard.common.files.atomic_write_bytes`).
"""

from __future__ import annotations

import inspect
import math
import os
from typing import Any

import torch
from torch import nn

from multiguard.common.devices import resolve_device
from multiguard.common.files import file_sha256
from multiguard.common.torch_files import (
    DENOISER_FORMAT,
    DENOISER_MARKER,
    read_denoiser_checkpoint,
    save_denoiser_checkpoint,
)
from multiguard.common.user_code import resolve_factory
from multiguard.common.validation import check_int
from multiguard.denoising.architectures import DENOISER_ARCHITECTURES, denoiser_arch_forms
from multiguard.denoising.networks import DnCNN, SmallUNet
from multiguard.denoising.sources import DENOISER_SOURCES, denoiser_source, identity_sha256

__all__ = [
    "DENOISER_ARCHITECTURES",
    "DENOISER_ARCHS",
    "DENOISER_FORMAT",
    "DENOISER_MARKER",
    "DenoisedClassifier",
    "DnCNN",
    "SmallUNet",
    "build_denoiser",
    "check_denoiser",
    "create_denoiser",
    "denoiser_in",
    "denoiser_record",
    "load_denoiser",
    "read_denoiser_checkpoint",
    "save_denoiser_checkpoint",
]

DENOISER_ARCHS = DENOISER_ARCHITECTURES.names()  # the built-in names (a registered one is a name too)
DENOISER_ARCH_FORMS = denoiser_arch_forms()  # as the built-ins define it; messages read denoiser_arch_forms()


class DenoisedClassifier(nn.Module):
    """The base classifier of denoised smoothing: ``classifier(denoiser(x))``.

    Give it to :class:`multiguard.sampling.smoothed.MultiGuard` like any model: the noise is added to ``x`` before
    the denoiser, so the smoothed classifier certifies ``x -> classifier(denoiser(x + eps))`` with the same
    guarantee as any base classifier. Shapes: ``(N, C, S, S)`` in [0, 1] -> logits ``(N, c)``. The
    classifier's ``class_names`` (if any) are kept.
    """

    def __init__(self, denoiser: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        for value, name in ((denoiser, "denoiser"), (classifier, "classifier")):
            if not isinstance(value, nn.Module):
                raise ValueError(f"{name} must be a torch.nn.Module, got {type(value).__name__}")
        self.denoiser = denoiser
        self.classifier = classifier
        if hasattr(classifier, "class_names"):
            self.class_names = list(classifier.class_names)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.denoiser(x))


# ------------------------------------------------------------------------------------------- building


def _factory_denoiser(arch: str, in_channels: int, image_size: int) -> tuple[nn.Module, str]:
    """A user's denoiser and the arch to record (the factory file's absolute path, as for classifiers)."""
    factory, recorded, _ = resolve_factory(arch, denoiser_arch_forms)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {key: value for key, value in (("in_channels", in_channels), ("image_size", image_size))
              if takes_all or key in params}
    try:
        net = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: one line naming it and the call
        call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"arch: denoiser factory {arch} failed when called with ({call}): {exc}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch: {arch!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net, recorded


def create_denoiser(arch: str, in_channels: int, image_size: int, **options: int) -> nn.Module:
    """Build a denoiser ``(N, in_channels, image_size, image_size) -> same shape``, pixels in [0, 1].

    Args:
        arch: ``'dncnn'``, ``'unet'``, ``'path/to/file.py:factory'`` or ``'package.module:factory'`` (see the
            module docstring).
        in_channels: C (1 for multidigits, 3 for colour images).
        image_size: side S of the square images.
        **options: ``width`` and ``depth`` of ``dncnn`` (defaults 16, 4); ``width``, ``levels`` and ``depth``
            of ``unet`` (16, 2, 1); none for a factory.

    Returns:
        the denoiser, with ``arch`` and ``arch_options`` attributes (what a checkpoint needs to rebuild it;
        ``arch_options`` holds every option of a built-in architecture, defaults included; ``arch`` of a
        factory is its file's absolute path).
    """
    in_channels = check_int(in_channels, "in_channels", 1)
    image_size = check_int(image_size, "image_size", 1)
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be one of {denoiser_arch_forms()}, got {arch!r}")
    if arch in DENOISER_ARCHITECTURES:
        entry = DENOISER_ARCHITECTURES.entry(arch)
        allowed = set(entry.record.options)
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise ValueError(f"arch_options: {arch!r} takes {sorted(allowed) or 'no options'}, got {unknown}")
        factory = entry.load()
        net: nn.Module = factory(in_channels, **options)
        multiple = entry.record.image_size_multiple
        if multiple is not None and image_size % multiple(options):
            raise ValueError(f"image_size must be divisible by 2**levels = {multiple(options)} for the {arch} "
                             f"denoiser, got {image_size}" if arch == "unet" else
                             f"image_size must be divisible by {multiple(options)} for the {arch} denoiser, "
                             f"got {image_size}")
        # record every option, defaults included, so that equal denoisers compare equal
        defaults = inspect.signature(factory).parameters
        options = {key: options.get(key, defaults[key].default) for key in sorted(allowed) if key in defaults}
    elif ":" in arch:
        if options:
            raise ValueError(f"arch_options: {arch!r} takes no options, got {sorted(options)}")
        net, arch = _factory_denoiser(arch, in_channels, image_size)
    else:
        raise ValueError(f"arch must be one of {denoiser_arch_forms()}, got {arch!r}")
    net.arch = arch
    net.arch_options = dict(options)
    return net


# ---------------------------------------------------------------------------------------- checkpoints


def load_denoiser(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the denoiser saved at ``path``: ``(denoiser in eval mode on device, meta)``."""
    checkpoint = read_denoiser_checkpoint(path)
    meta = checkpoint["meta"]
    denoiser = create_denoiser(meta["arch"], int(meta["in_channels"]), int(meta["image_size"]),
                               **dict(meta.get("arch_options") or {}))
    denoiser.load_state_dict(checkpoint["state_dict"])
    return denoiser.to(resolve_device(device)).eval(), meta


def check_denoiser(meta: dict[str, Any], *, sigma: float, image_size: int, in_channels: int,
                   path: str | os.PathLike | None = None) -> None:
    """Refuse a denoiser trained for another noise level or image shape than the one it is used at.

    A denoiser only removes the noise it was trained on: one trained at sigma = 0.25 leaves noise at
    sigma = 0.5 in, and a classifier behind it is no better than without it. Raises ValueError naming the
    denoiser and both values; the check is exact for sigma (``math.isclose`` at 1e-9).
    """
    name = f"denoiser {os.fspath(path)}" if path is not None else "denoiser"
    trained = float(meta["sigma"])
    if not math.isclose(trained, float(sigma), rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(f"{name} was trained for sigma = {trained:g}, not the sigma = {float(sigma):g} certified "
                         "here: train one for this sigma (multiguard train-denoiser --sigma)")
    if int(meta["image_size"]) != int(image_size) or int(meta["in_channels"]) != int(in_channels):
        raise ValueError(f"{name} was trained on {meta['in_channels']}x{meta['image_size']}x{meta['image_size']} "
                         f"images, not the {in_channels}x{image_size}x{image_size} images of this classifier")


def build_denoiser(denoiser: str | os.PathLike, *, sigma: float, image_size: int, in_channels: int,
                   device: str | torch.device = "cpu") -> nn.Module:
    """The denoiser a ``--denoiser`` value names, checked for the certified sigma and images, in eval mode.

    ``denoiser``: a denoiser checkpoint file (:func:`multiguard.training.denoiser.train_denoiser`; refused when trained
    for another sigma or image shape, see :func:`check_denoiser`), or ``<source>:<spec>`` with ``source``
    registered in :data:`multiguard.denoising.sources.DENOISER_SOURCES` (e.g. ``diffusers:google/ddpm-cifar10-32``:
    the source builds it for this sigma and image shape, and gives it an ``identity`` dict).
    Shapes: ``(N, in_channels, image_size, image_size) -> same``, pixels in [0, 1].
    """
    form = denoiser_source(denoiser)
    if form is None:
        module, meta = load_denoiser(denoiser, device=device)
        check_denoiser(meta, sigma=sigma, image_size=image_size, in_channels=in_channels, path=denoiser)
        return module
    source, spec = form
    module = DENOISER_SOURCES.get(source)(spec, sigma=sigma, image_size=image_size, in_channels=in_channels,
                                          device=device)
    if not isinstance(module, nn.Module) or not isinstance(getattr(module, "identity", None), dict):
        raise ValueError(f"denoiser: the {source!r} denoiser source returned {type(module).__name__}, not an "
                         "nn.Module with an identity dict")
    return module.eval()


def denoiser_record(denoiser: str | os.PathLike | None, module: nn.Module | None = None) -> dict[str, Any]:
    """What a RUN_DIR or an ATTACK_DIR records about the denoiser in front of its classifier (``None`` values
    without one): ``denoiser`` (the path or the ``<source>:<spec>`` value), ``denoiser_sha256`` (a resume must
    match it) and ``denoiser_settings``: a checkpoint's ``arch``, ``arch_options``, ``objective``, ``sigma``,
    ``dataset``, ``epoch`` and ``classifier_sha256``, or a source's ``identity`` (then ``module``, the built
    denoiser, is needed, and ``denoiser_sha256`` is the digest of the identity)."""
    if denoiser is None:
        return {"denoiser": None, "denoiser_sha256": None, "denoiser_settings": None}
    if denoiser_source(denoiser) is not None:
        identity = getattr(module, "identity", None)
        if not isinstance(identity, dict):
            raise ValueError(f"denoiser: the record of {denoiser} needs the built denoiser (its identity)")
        return {"denoiser": os.fspath(denoiser), "denoiser_sha256": identity_sha256(identity),
                "denoiser_settings": dict(identity)}
    meta = read_denoiser_checkpoint(denoiser)["meta"]
    settings = {key: meta.get(key) for key in ("arch", "arch_options", "objective", "sigma", "dataset", "epoch",
                                                 "classifier_sha256", "stability_epochs")}
    return {"denoiser": os.fspath(denoiser), "denoiser_sha256": file_sha256(denoiser), "denoiser_settings": settings}


def denoiser_in(model: Any) -> nn.Module | None:
    """The denoiser inside a smoothed classifier (``MultiGuard``) or a :class:`DenoisedClassifier`, else ``None``."""
    model = getattr(model, "model", model)
    return model.denoiser if isinstance(model, DenoisedClassifier) else None
