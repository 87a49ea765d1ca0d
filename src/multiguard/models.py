"""Base classifiers: one door, :func:`create_model`, to several families of architectures.

Every model takes images ``(N, C, S, S)`` with pixels in [0, 1] (the space the
Gaussian noise and the certificates live in) and returns logits ``(N, c)``. The
normalisation ``(x - mean) / std`` is the model's first layer, so a caller never
normalises by hand.

``arch`` forms::

    small_cnn                 three stride-2 3x3 convolutions (32-64-128), BatchNorm, ReLU,
                              global average pooling, one linear layer: sized for multidigits
    timm:<name>               timm.create_model(<name>, pretrained=False, num_classes=c, in_chans=C)
    torchvision:<name>        torchvision.models.get_model(<name>, weights=None, num_classes=c)
    package.module:factory    your own: factory(num_classes=c[, image_size=S][, in_channels=C])

Nothing is ever downloaded: ``pretrained`` must be a local file path.
"""

from __future__ import annotations

import importlib
import inspect
import os
import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["ARCH_FORMS", "IMAGENET_MEAN", "IMAGENET_STD", "Normalize", "SmallCNN", "create_model"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCH_FORMS = "'small_cnn', 'timm:<name>', 'torchvision:<name>' or 'package.module:factory'"


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel; mean and std are buffers ``(1, C, 1, 1)`` saved with the weights."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32)
        std_t = torch.as_tensor(list(std), dtype=torch.float32)
        if mean_t.ndim != 1 or mean_t.shape != std_t.shape:
            raise ValueError("mean and std must be sequences of the same length (one value per channel)")
        if bool((std_t <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    def extra_repr(self) -> str:
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


class SmallCNN(nn.Sequential):
    """Three stride-2 3x3 convolutions (32, 64, 128 channels) with BatchNorm and ReLU,
    global average pooling and one linear layer: ``(N, C, S, S) -> (N, num_classes)``."""

    def __init__(self, num_classes: int, in_channels: int = 3, widths: Sequence[int] = (32, 64, 128)):
        layers: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            layers += [
                nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            previous = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(previous, num_classes)]
        super().__init__(*layers)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _load_local_weights(net: nn.Module, path: str | os.PathLike) -> None:
    """Load a local state dict into ``net``; tensors whose shape differs (a classifier head) are skipped."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file name
        raise ValueError(f"pretrained: cannot read weights from {path}: {exc}") from exc
    if isinstance(state, dict) and state.get("multiguard_checkpoint"):
        state = state["state_dict"]
        state = {k.split("net.", 1)[1]: v for k, v in state.items() if k.startswith("net.")}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"pretrained: {path} does not hold a state dict")
    state = {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ValueError(f"pretrained: no tensor in {path} matches the model's parameters")
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    if skipped or missing:
        warnings.warn(
            f"pretrained: loaded {len(usable)} tensors from {path}; not loaded (left as initialised): "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}",
            stacklevel=3,
        )
    net.load_state_dict(usable, strict=False)


def _check_pretrained(pretrained: object) -> str | None:
    if pretrained is None or pretrained is False:
        return None
    if isinstance(pretrained, (str, os.PathLike)) and os.path.isfile(pretrained):
        return os.fspath(pretrained)
    raise ValueError(
        f"pretrained: {pretrained!r} is not a local file. MultiGuard never downloads weights (no "
        "hub download at run time): download them yourself and pass pretrained=PATH to the file"
    )


def _timm_model(name: str, num_classes: int, in_channels: int) -> tuple[nn.Module, tuple, tuple]:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"arch: timm has no model {name!r} (see timm.list_models())")
    try:
        net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    except Exception as exc:  # noqa: BLE001
        raise ValueError(f"arch: timm could not build {name!r}: {exc}") from exc
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return net, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _torchvision_model(name: str, num_classes: int, in_channels: int) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"arch: torchvision has no model {name!r} (see torchvision.models.list_models())")
    if in_channels != 3:
        raise ValueError(f"in_channels: torchvision models take 3 channels, got {in_channels}")
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)


def _factory_model(arch: str, num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    module_name, _, factory_name = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"arch: cannot import module {module_name!r} for {arch!r}: {exc}") from exc
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise ValueError(f"arch: module {module_name!r} has no callable {factory_name!r}")
    kwargs: dict[str, int] = {"num_classes": num_classes}
    try:
        params = inspect.signature(factory).parameters
        takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    except (TypeError, ValueError):
        params, takes_all = {}, False
    for key, value in (("image_size", image_size), ("in_channels", in_channels)):
        if takes_all or key in params:
            kwargs[key] = value
    net = factory(**kwargs)
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch: {arch!r} returned {type(net).__name__}, not a torch.nn.Module")
    return net


def create_model(
    arch: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    pretrained: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> nn.Module:
    """Build a multi-label classifier ``(N, in_channels, image_size, image_size) in [0, 1] -> logits (N, num_classes)``.

    Args:
        arch: ``'small_cnn'``, ``'timm:<name>'``, ``'torchvision:<name>'`` or ``'package.module:factory'``.
        num_classes: number of labels c.
        image_size: side S of the square input (passed to a user factory that accepts it).
        in_channels: C, 1 for grayscale (multidigits) or 3.
        pretrained: path of a local state dict (or of a MultiGuard checkpoint) to load; tensors whose
            shape does not match (e.g. a 1000-class head) are skipped with a warning. Never downloads.
        mean, std: per-channel normalisation applied inside the model; ``None`` means the
            architecture's default: ImageNet statistics (or timm's pretrained config) for timm and
            torchvision models with 3 channels, no normalisation (0, 1) otherwise. One value is
            repeated over all channels.

    Returns:
        ``nn.Sequential(Normalize(mean, std), net)``: ``model[0]`` the normalisation, ``model.net``
        (``model[1]``) the network. The chosen values are in ``model.mean``/``model.std`` (lists)
        and ``model.arch``.
    """
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be one of {ARCH_FORMS}, got {arch!r}")
    num_classes = _positive_int(num_classes, "num_classes")
    image_size = _positive_int(image_size, "image_size")
    in_channels = _positive_int(in_channels, "in_channels")
    weights = _check_pretrained(pretrained)
    default_mean: tuple = (0.0,) * in_channels
    default_std: tuple = (1.0,) * in_channels
    if arch == "small_cnn":
        net: nn.Module = SmallCNN(num_classes, in_channels)
    elif arch.startswith("timm:"):
        net, m, s = _timm_model(arch[5:], num_classes, in_channels)
        if in_channels == 3 and len(m) == 3:
            default_mean, default_std = m, s
    elif arch.startswith("torchvision:"):
        net = _torchvision_model(arch[12:], num_classes, in_channels)
        default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
    elif ":" in arch and all(part.isidentifier() for part in arch.replace(":", ".").split(".")):
        net = _factory_model(arch, num_classes, image_size, in_channels)
    else:
        raise ValueError(f"arch must be one of {ARCH_FORMS}, got {arch!r}")
    if weights is not None:
        _load_local_weights(net, weights)
    mean = list(default_mean if mean is None else mean)
    std = list(default_std if std is None else std)
    if len(mean) == 1:
        mean = mean * in_channels
    if len(std) == 1:
        std = std * in_channels
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean and std must have 1 or in_channels={in_channels} values, got {mean} and {std}")
    model = nn.Sequential()
    model.add_module("normalize", Normalize(mean, std))
    model.add_module("net", net)
    model.arch = arch
    model.mean, model.std = [float(v) for v in mean], [float(v) for v in std]
    return model
