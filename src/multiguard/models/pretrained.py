"""The ``timm:`` and ``torchvision:`` prefix families (:func:`timm_family`, :func:`torchvision_family`, registered
by path in :data:`multiguard.models.architectures.ARCH_PREFIXES`), their ImageNet weights (through those
libraries' own download, with a one-line offline message naming the file to put in place) and local state_dict
files."""

from __future__ import annotations

import os
import pickle
import socket
import urllib.parse
import warnings
from pathlib import Path

import torch
from torch import nn

from multiguard.common.torch_files import read_torch_file  # noqa: F401 - its old import path (moved there)
from multiguard.common.user_code import _first_line

IMAGENET_MEAN = (0.485, 0.456, 0.406)


IMAGENET_STD = (0.229, 0.224, 0.225)



PRETRAINED_FORMS = "'imagenet' (timm: and torchvision: models) or a local state_dict file"


_SAVE_STATE_DICT = "torch.save(model.state_dict(), 'weights.pth')"


_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _pretrained_source(pretrained: object) -> str | None:
    """``None``, ``'imagenet'`` or the absolute path of a local weights file."""
    if pretrained is None or pretrained is False:
        return None
    if pretrained is True or (isinstance(pretrained, str) and pretrained.lower() == "imagenet"):
        return "imagenet"
    if isinstance(pretrained, (str, os.PathLike)):
        path = Path(pretrained).expanduser()
        if path.is_file():
            return os.fspath(path.resolve())
        if path.is_dir():
            raise ValueError(f"--pretrained {os.fspath(pretrained)}: is a folder; give a state_dict file "
                             f"(made with {_SAVE_STATE_DICT}) or 'imagenet'")
    raise ValueError(f"--pretrained {pretrained}: no such file; give {PRETRAINED_FORMS} (a state_dict file is made "
                     f"with {_SAVE_STATE_DICT})")


def _read_state_dict(path: str) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(
            f"--pretrained {path}: the file holds pickled Python objects (a whole model?), not a state_dict, and "
            f"MultiGuard does not unpickle code; where the model's class is defined, save its weights with "
            f"{_SAVE_STATE_DICT} and pass --pretrained weights.pth"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file name
        raise ValueError(f"--pretrained {path}: cannot read weights ({_first_line(exc)}); give a state_dict file "
                         f"made with {_SAVE_STATE_DICT}") from exc
    if isinstance(state, dict) and state.get("multiguard_checkpoint"):
        state = state["state_dict"]
        state = {k.split("net.", 1)[1]: v for k, v in state.items() if k.startswith("net.")}
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"--pretrained {path}: does not hold a state_dict (a dict of tensors); make one with "
                         f"{_SAVE_STATE_DICT}")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in state.items()}


def _load_state(net: nn.Module, state: dict, source: str, strict: bool = False) -> None:
    """Load ``state`` into ``net``; tensors whose shape differs (a classifier head) are skipped with a warning,
    or with ``strict`` refused: every tensor of ``net`` must then come from ``state`` and every one of
    ``state`` be used."""
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise ValueError(f"--pretrained {source}: no tensor in it matches the model's parameters (weights of "
                         "another architecture?)")
    skipped = sorted(set(state) - set(usable))
    missing = sorted(set(own) - set(usable))
    if strict and (skipped or missing):
        raise ValueError(f"--pretrained {source}: does not fit the model as it is: {len(missing)} of its tensors "
                         f"are not in the file or differ in shape {missing[:4]}, {len(skipped)} of the file's are "
                         f"unused {skipped[:4]} (check --arch and the number of classes)")
    if skipped or missing:
        warnings.warn(
            f"pretrained: loaded {len(usable)} tensors from {source}; not loaded (left as initialised): "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}",
            stacklevel=4,
        )
    net.load_state_dict(usable, strict=False)


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether the host of ``url`` accepts a connection (assumed so behind a proxy: the library tries)."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    parts = urllib.parse.urlsplit(url)
    if not parts.hostname:
        return False
    try:
        socket.create_connection((parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(arch: str, where: str, save_code: str, file_name: str, reason: str) -> str:
    return (f"--pretrained imagenet: cannot download the ImageNet weights of {arch} ({reason}; they are not in "
            f"{where}); offline, use a local state_dict file: on a machine with network run python -c \"{save_code}\", "
            f"copy {file_name} here and pass --pretrained {file_name}")


def _timm_imagenet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    """timm's pretrained weights through timm's own download and Hugging Face cache."""
    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.create_model(name, pretrained=False).pretrained_cfg or {}
    hub_id, url = cfg.get("hf_hub_id"), cfg.get("url")
    if not hub_id and not url:
        raise ValueError(f"--pretrained imagenet: timm has no pretrained weights for {name!r}")
    file_name = f"{name}.pth"
    save = f"import timm, torch; torch.save(timm.create_model('{name}', pretrained=True).state_dict(), '{file_name}')"
    overlay = None
    if hub_id:
        for candidate in ("model.safetensors", "pytorch_model.bin"):
            cached = try_to_load_from_cache(hub_id, candidate)
            if isinstance(cached, str):
                overlay = {"file": cached}  # already downloaded: timm loads it from the cache, no network
                break
    if overlay is None:
        source = f"{constants.ENDPOINT}/{hub_id}" if hub_id else url
        offline = constants.HF_HUB_OFFLINE and hub_id
        if offline or not _reachable(source):
            reason = "HF_HUB_OFFLINE is set" if offline else f"{urllib.parse.urlsplit(source).hostname} unreachable"
            raise ValueError(_offline_message(f"timm:{name}", f"the Hugging Face cache {constants.HF_HUB_CACHE}",
                                              save, file_name, reason))
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_channels,
                                 **({"pretrained_cfg_overlay": overlay} if overlay else {}))
    except Exception as exc:  # noqa: BLE001 - a failed download: one line with the offline alternative
        raise ValueError(_offline_message(f"timm:{name}", f"the Hugging Face cache {constants.HF_HUB_CACHE}",
                                          save, file_name, _first_line(exc))) from exc


def _torchvision_imagenet(name: str, net: nn.Module) -> None:
    """torchvision's default weights through torch.hub's own download and cache, loaded into ``net``."""
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(name).DEFAULT
    except (ValueError, KeyError) as exc:
        raise ValueError(f"--pretrained imagenet: torchvision has no pretrained weights for {name!r}") from exc
    file_name = f"{name}.pth"
    save = (f"import torch, torchvision; torch.save(torchvision.models.get_model('{name}', weights='DEFAULT')"
            f".state_dict(), '{file_name}')")
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    cached = (cache / os.path.basename(urllib.parse.urlsplit(weights.url).path)).is_file()
    if not cached and not _reachable(weights.url):
        raise ValueError(_offline_message(f"torchvision:{name}", f"torch.hub's cache {cache}", save, file_name,
                                          f"{urllib.parse.urlsplit(weights.url).hostname} unreachable"))
    try:
        state = weights.get_state_dict(progress=True, check_hash=True)
    except Exception as exc:  # noqa: BLE001 - a failed download: one line with the offline alternative
        raise ValueError(_offline_message(f"torchvision:{name}", f"torch.hub's cache {cache}", save, file_name,
                                          _first_line(exc))) from exc
    _load_state(net, state, f"torchvision's {weights}")


def _timm_model(name: str, num_classes: int, in_channels: int, imagenet: bool) -> tuple[nn.Module, tuple, tuple]:
    import timm

    if not timm.is_model(name):
        raise ValueError(f"arch: timm has no model {name!r} (see timm.list_models())")
    if imagenet:
        net = _timm_imagenet(name, num_classes, in_channels)
    else:
        try:
            net = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
        except Exception as exc:  # noqa: BLE001
            raise ValueError(f"arch: timm could not build {name!r}: {exc}") from exc
    cfg = getattr(net, "pretrained_cfg", None) or {}
    return net, tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def _torchvision_model(name: str, num_classes: int, in_channels: int, imagenet: bool) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models():
        raise ValueError(f"arch: torchvision has no model {name!r} (see torchvision.models.list_models())")
    if in_channels != 3:
        raise ValueError(f"in_channels: torchvision models take 3 channels, got {in_channels}")
    kwargs = {"aux_logits": False, "init_weights": True} if name in ("inception_v3", "googlenet") else {}
    net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if imagenet:
        _torchvision_imagenet(name, net)
    return net


def timm_family(name: str, *, num_classes: int, in_channels: int, image_size: int, pretrained: bool
                ) -> tuple[nn.Module, tuple[float, ...] | None, tuple[float, ...] | None]:
    """The ``timm:<name>`` family: ``timm.create_model(name, num_classes=c, in_chans=C)`` (ImageNet weights where
    ``pretrained``) and its pretrained config's normalisation for 3 channels (``None`` otherwise: none)."""
    net, mean, std = _timm_model(name, num_classes, in_channels, pretrained)
    return (net, mean, std) if in_channels == 3 and len(mean) == 3 else (net, None, None)


def torchvision_family(name: str, *, num_classes: int, in_channels: int, image_size: int, pretrained: bool
                       ) -> tuple[nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The ``torchvision:<name>`` family: ``torchvision.models.get_model(name, num_classes=c)`` (3 channels;
    ImageNet weights where ``pretrained``) with the ImageNet statistics."""
    return _torchvision_model(name, num_classes, in_channels, pretrained), IMAGENET_MEAN, IMAGENET_STD
