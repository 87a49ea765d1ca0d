"""Base classifiers: one door, :func:`create_model`, to several families of architectures.

Every model takes images ``(N, C, S, S)`` with pixels in [0, 1] (the space the
Gaussian noise and the certificates live in) and returns logits ``(N, c)``. The
normalisation ``(x - mean) / std`` is the model's first layer, so a caller never
normalises by hand.

``arch`` forms::

    small_cnn                 three stride-2 3x3 convolutions (32-64-128), BatchNorm, ReLU,
                              global average pooling, one linear layer: sized for multidigits
    timm:<name>               timm.create_model(<name>, num_classes=c, in_chans=C)
    torchvision:<name>        torchvision.models.get_model(<name>, num_classes=c)
    PREFIX:<name>             a family registered in ARCH_PREFIXES (timm and torchvision are two)
    path/to/file.py:factory   your own: factory(num_classes=c[, image_size=S][, in_channels=C]) from that file
    module:factory            the same from a module found in the current folder or on sys.path

A factory must accept ``num_classes`` and return an ``nn.Module`` whose forward gives logits
``(B, num_classes)`` (no final sigmoid). The built model's ``arch`` records how to rebuild it from
any folder: a factory defined in a file outside the installed packages is recorded as the
absolute path of that file (``/home/me/project/mymodels.py:tiny_cnn``).

``pretrained``: ``None``; ``"imagenet"`` (timm and torchvision models: their own download and cache,
``~/.cache/huggingface`` for timm, ``~/.cache/torch/hub`` for torchvision; offline, the weights must
be in that cache or in a local file); or the path of a local ``state_dict`` file (or of a MultiGuard
checkpoint).
"""

from __future__ import annotations

import contextlib
import inspect
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from multiguard.common.files import file_sha256
from multiguard.common.user_code import _first_line, _is_file_form, _on_sys_path, resolve_factory
from multiguard.models.architectures import ARCH_PREFIXES, ARCHITECTURES, arch_forms, arch_prefix, prefix_forms
from multiguard.models.networks import Normalize
from multiguard.models.pretrained import (
    _SAVE_STATE_DICT,
    _load_state,
    _pretrained_source,
    _read_state_dict,
)

__all__ = ["ARCH_FORMS", "create_model", "looks_like_probabilities"]


ARCH_FORMS = arch_forms()  # as the built-ins define it; messages read arch_forms() (registered names too)


_FACTORY_CALL = "factory(num_classes=c[, image_size=S][, in_channels=C])"


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value




def _factory_kwargs(factory: Callable, label: str, num_classes: int, image_size: int,
                    in_channels: int) -> dict[str, int]:
    """The keyword arguments to call ``factory`` with; ValueError when its signature cannot take them."""
    offered = {"num_classes": num_classes, "image_size": image_size, "in_channels": in_channels}
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {"num_classes": num_classes}
    takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    named = {name: p for name, p in params.items()
             if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)}
    if "num_classes" not in named and not takes_all:
        takes = ", ".join(params) or "no parameters"
        raise ValueError(
            f"arch: factory {label} must accept num_classes (it takes {takes}): define it as "
            f"def {getattr(factory, '__name__', 'factory')}(num_classes, ...) and return a model whose output is "
            "logits of shape (B, num_classes)"
        )
    required = [name for name, p in params.items() if p.default is inspect.Parameter.empty
                and p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
                and name not in offered]
    if required:
        raise ValueError(
            f"arch: factory {label} requires {', '.join(required)}, which MultiGuard cannot pass (it calls "
            f"{_FACTORY_CALL}); give {'it a default' if len(required) == 1 else 'them defaults'}"
        )
    return {key: value for key, value in offered.items() if takes_all or key in named}


def _check_model_output(net: nn.Module, label: str, num_classes: int, image_size: int, in_channels: int) -> None:
    """One forward pass on a batch of 2 images in [0, 1]: the output must be logits ``(2, num_classes)``."""
    batch = torch.rand((2, in_channels, image_size, image_size), generator=torch.Generator().manual_seed(0))
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(batch)
    except Exception as exc:  # noqa: BLE001 - the user's model failed: one line naming it and the input
        raise ValueError(f"arch: the model of factory {label} fails on a batch of shape {tuple(batch.shape)} "
                         f"(images in [0, 1]): {_first_line(exc)}") from exc
    finally:
        net.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"arch: the model of factory {label} returns a {type(out).__name__} from forward; it must "
                         f"return the logits tensor of shape (B, num_classes) = (2, {num_classes}) for a batch of 2")
    if tuple(out.shape) != (2, num_classes):
        hint = " (does the factory pass its num_classes to the last layer?)" if out.ndim == 2 else ""
        raise ValueError(f"arch: the model of factory {label} returns shape {tuple(out.shape)} for a batch of 2; "
                         f"it must return logits of shape (B, num_classes) = (2, {num_classes}){hint}")


def _factory_model(arch: str, num_classes: int, image_size: int, in_channels: int
                   ) -> tuple[nn.Module, str, Path | None]:
    factory, recorded, file = resolve_factory(arch, arch_forms)
    label = arch if file is None or _is_file_form(arch.rpartition(":")[0]) else f"{arch} ({file})"
    kwargs = _factory_kwargs(factory, label, num_classes, image_size, in_channels)
    try:
        with _on_sys_path(file.parent) if file is not None else contextlib.nullcontext():
            net = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: one line naming it and the call
        call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"arch: factory {label} failed when called as {arch.rpartition(':')[2]}({call}): "
                         f"{_first_line(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch: factory {label} returned a {type(net).__name__}, not a torch.nn.Module: return the "
                         "network itself (an nn.Module whose forward gives logits of shape (B, num_classes))")
    _check_model_output(net, label, num_classes, image_size, in_channels)
    return net, recorded, file


def _registered_model(arch: str, num_classes: int, image_size: int, in_channels: int) -> nn.Module:
    """The model of the architecture registered as ``arch`` (:data:`ARCHITECTURES`), checked as a factory's is
    unless it is a built-in."""
    entry = ARCHITECTURES.entry(arch)
    factory = entry.load()
    label = f"{arch!r} (registered)"
    kwargs = _factory_kwargs(factory, label, num_classes, image_size, in_channels)
    try:
        net = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the registered factory failed: one line naming it and the call
        call = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise ValueError(f"arch: {label} failed when called with ({call}): {_first_line(exc)}") from exc
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch: {label} returned a {type(net).__name__}, not a torch.nn.Module")
    if not entry.record.builtin:
        _check_model_output(net, label, num_classes, image_size, in_channels)
    return net


Normalisation = tuple[tuple[float, ...], tuple[float, ...]] | None


def _prefixed_model(arch: str, num_classes: int, image_size: int, in_channels: int, imagenet: bool
                    ) -> tuple[nn.Module, Normalisation]:
    """The model of ``PREFIX:<name>`` from the family registered as PREFIX (:data:`ARCH_PREFIXES`) and its
    default normalisation (``None``: none), checked as a factory's is unless the family is a built-in."""
    prefix, _, name = arch.partition(":")
    entry = ARCH_PREFIXES.entry(prefix)
    label = f"{arch!r} (the {prefix}: family)"
    try:
        built = entry.load()(name, num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                             pretrained=imagenet)
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - a registered family failed: one line naming it and the model
        raise ValueError(f"arch: {label} failed to build {name!r}: {_first_line(exc)}") from exc
    net, mean, std = built if isinstance(built, tuple) else (built, None, None)
    if not isinstance(net, nn.Module):
        raise ValueError(f"arch: {label} returned a {type(net).__name__}, not a torch.nn.Module")
    if not entry.record.builtin:
        _check_model_output(net, label, num_classes, image_size, in_channels)
    return net, None if mean is None else (tuple(mean), tuple(std))


# Outputs of a batch, all inside [0, 1], look like probabilities when some are near 0: trained against labels,
# a model's scores for absent labels fall towards 0 when they are probabilities and below 0 when they are logits.
PROBABILITY_NEAR_ZERO = 0.05


def looks_like_probabilities(model: nn.Module, outputs: torch.Tensor | None = None) -> str | None:
    """Why ``model`` seems to output probabilities instead of logits, or ``None`` if it does not.

    MultiGuard's losses apply the sigmoid themselves and its top-k works on any scores, so a model
    ending in a sigmoid trains badly (the loss saturates) without any error. Detected when the last
    layer is ``nn.Sigmoid``/``nn.Softmax``, or when ``outputs`` (a batch of at least 16 scores, e.g.
    the first training batch after an epoch) all lie in [0, 1] with some near 0 (:data:`PROBABILITY_NEAR_ZERO`):
    a fresh logits model without BatchNorm may put a whole batch inside [0, 1] by chance, but not at 0.
    """
    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    if leaves and isinstance(leaves[-1], (nn.Sigmoid, nn.Softmax)):
        return f"its last layer is {type(leaves[-1]).__name__}"
    if outputs is not None and outputs.numel() >= 16:
        values = outputs.detach().float()
        low, high = float(values.min()), float(values.max())
        # Probabilities trained against labels spread over [0, 1]; a fresh logits model (small weights, no
        # BatchNorm) can put a whole batch in a narrow band inside [0, 1] by chance, which says nothing.
        if low >= 0.0 and high <= 1.0 and low <= PROBABILITY_NEAR_ZERO:
            return f"all its {values.numel()} outputs on a batch lie in [0, 1], from {low:.2f} to {high:.2f}"
    return None


def create_model(
    arch: str,
    num_classes: int,
    image_size: int,
    in_channels: int = 3,
    pretrained: str | os.PathLike | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    strict: bool = False,
) -> nn.Module:
    """Build a multi-label classifier ``(N, in_channels, image_size, image_size) in [0, 1] -> logits (N, num_classes)``.

    Args:
        arch: ``'small_cnn'``, ``'timm:<name>'``, ``'torchvision:<name>'``, ``'path/to/file.py:factory'`` or
            ``'module:factory'`` (see the module docstring). A factory's model is run once on a batch of 2
            images to check that it returns logits ``(2, num_classes)``.
        num_classes: number of labels c.
        image_size: side S of the square input (passed to a user factory that accepts it).
        in_channels: C, 1 for grayscale (multidigits) or 3.
        pretrained: ``None``; ``'imagenet'`` for timm and torchvision models (downloaded through the
            library's own cache when online; offline, a one-line error names the local-file alternative);
            or the path of a local state_dict (or a MultiGuard checkpoint). Tensors whose shape does not
            match (e.g. a 1000-class head) are skipped with a warning.
        mean, std: per-channel normalisation applied inside the model; ``None`` means the
            architecture's default: ImageNet statistics (or timm's pretrained config) for timm and
            torchvision models with 3 channels, no normalisation (0, 1) otherwise (small_cnn, your
            factories). One value is repeated over all channels.
        strict: the ``pretrained`` weights must fit exactly (no tensor skipped either way), else ValueError.

    Returns:
        ``nn.Sequential(Normalize(mean, std), net)``: ``model[0]`` the normalisation, ``model.net``
        (``model[1]``) the network. The chosen values are in ``model.mean``/``model.std`` (lists);
        ``model.arch`` is the arch to record to rebuild it from any folder (a factory file's absolute
        path); ``model.arch_file`` and ``model.arch_file_sha256`` the file defining a factory and its SHA-256
        (``None`` for the built-in kinds: what the model's code is); ``model.pretrained`` the weights loaded
        (``None``, ``'imagenet'`` or an absolute path).

    Raises:
        ValueError: one line naming the argument (``arch``, ``--pretrained``, ...), the file or factory
            at fault and the fix.
    """
    if not isinstance(arch, str) or not arch:
        raise ValueError(f"arch must be one of {arch_forms()}, got {arch!r}")
    num_classes = _positive_int(num_classes, "num_classes")
    image_size = _positive_int(image_size, "image_size")
    in_channels = _positive_int(in_channels, "in_channels")
    weights = _pretrained_source(pretrained)
    imagenet = weights == "imagenet"
    prefix = arch_prefix(arch) if arch not in ARCHITECTURES else None
    if imagenet and (prefix is None or not ARCH_PREFIXES.record(prefix).imagenet):
        raise ValueError(f"--pretrained imagenet: only {' and '.join(prefix_forms(imagenet_only=True))} models have "
                         f"ImageNet weights, not {arch!r}; give a local state_dict file (made with {_SAVE_STATE_DICT})")
    normalisation: Normalisation = None
    recorded, file = arch, None
    if arch in ARCHITECTURES:
        net: nn.Module = _registered_model(arch, num_classes, image_size, in_channels)
        record = ARCHITECTURES.record(arch)
        if record.mean is not None:
            normalisation = tuple(record.mean), tuple(record.std)
    elif prefix is not None:
        net, normalisation = _prefixed_model(arch, num_classes, image_size, in_channels, imagenet)
    elif ":" in arch:
        net, recorded, file = _factory_model(arch, num_classes, image_size, in_channels)
    else:
        raise ValueError(f"arch must be one of {arch_forms()}, got {arch!r}")
    if weights is not None and not imagenet:
        _load_state(net, _read_state_dict(weights), weights, strict=strict)
    default_mean, default_std = normalisation or ((0.0,) * in_channels, (1.0,) * in_channels)
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
    model.arch = recorded
    model.arch_file = file  # the Python file defining a factory's model (None for the built-in kinds)
    model.arch_file_sha256 = None if file is None else file_sha256(file)
    model.pretrained = weights
    model.mean, model.std = [float(v) for v in mean], [float(v) for v in std]
    return model
