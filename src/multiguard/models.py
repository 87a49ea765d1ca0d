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
import hashlib
import importlib
import importlib.util
import inspect
import os
import pickle
import socket
import sys
import sysconfig
import urllib.parse
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from .architectures import ARCHITECTURES, arch_forms
from .checkpoint_files import read_torch_file  # noqa: F401 - its old import path (moved there)
from .files import file_sha256

__all__ = [
    "ARCHITECTURES",
    "ARCH_FORMS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalize",
    "SmallCNN",
    "small_cnn",
    "create_model",
    "looks_like_probabilities",
    "resolve_factory",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCH_FORMS = arch_forms()  # as the built-ins define it; messages read arch_forms() (registered names too)
PRETRAINED_FORMS = "'imagenet' (timm: and torchvision: models) or a local state_dict file"
_FACTORY_CALL = "factory(num_classes=c[, image_size=S][, in_channels=C])"
_SAVE_STATE_DICT = "torch.save(model.state_dict(), 'weights.pth')"
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


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


def small_cnn(num_classes: int, in_channels: int = 3) -> nn.Module:
    """The built-in ``small_cnn`` (:class:`SmallCNN`): sized for multidigits."""
    return SmallCNN(num_classes, in_channels)


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


# ------------------------------------------------------------------------------------------ user factories


def _is_file_form(spec: str) -> bool:
    return spec.endswith(".py") or "/" in spec or os.sep in spec


@contextlib.contextmanager
def _on_sys_path(folder: Path) -> Iterator[None]:
    """``folder`` first on sys.path for the duration (so a model file can import its neighbours)."""
    entry = os.fspath(folder)
    added = entry not in sys.path
    if added:
        sys.path.insert(0, entry)
    try:
        yield
    finally:
        if added and entry in sys.path:
            sys.path.remove(entry)


def _module_from_file(path: Path, arch: str):
    """Import the Python file ``path``: inside a package as its dotted name (so relative imports work), else
    under a private module name (a file called ``code.py`` or ``models.py`` must not shadow another module)."""
    root, parts = path.parent, [path.stem]
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    name = ".".join(parts)
    try:
        if len(parts) > 1:
            loaded = sys.modules.get(name)
            if loaded is None:
                with _on_sys_path(root):
                    return importlib.import_module(name), root
            if getattr(loaded, "__file__", None) and Path(loaded.__file__).resolve() == path:
                return loaded, root
        # keyed on the file's content too: a file edited since it was imported is imported again
        content = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        private = f"_multiguard_arch_{hashlib.sha256(os.fsencode(path)).hexdigest()[:12]}_{content}_{path.stem}"
        if private in sys.modules:
            return sys.modules[private], root
        spec = importlib.util.spec_from_file_location(private, path)
        if spec is None or spec.loader is None:
            raise ValueError(f"arch: {path} is not a Python file (from {arch!r})")
        module = importlib.util.module_from_spec(spec)
        sys.modules[private] = module
        try:
            with _on_sys_path(path.parent):  # the file may import its neighbours
                spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(private, None)
            raise
        return module, root
    except ValueError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's file failed to import: say which and why, in one line
        raise ValueError(f"arch: importing the model file {path} failed: {_first_line(exc)}") from exc


def _installed(path: Path) -> bool:
    """Whether ``path`` lies in an installed location (site-packages or the standard library)."""
    roots = {sysconfig.get_paths()[key] for key in ("purelib", "platlib", "stdlib", "platstdlib")}
    text = os.fspath(path)
    return any(part in ("site-packages", "dist-packages") for part in path.parts) or any(
        text.startswith(os.fspath(Path(root).resolve()) + os.sep) for root in roots if root)


def resolve_factory(arch: str) -> tuple[Callable[..., nn.Module], str, Path | None]:
    """Find a user factory: ``(factory, arch to record, file defining it)``.

    ``arch`` is ``'path/to/file.py:factory'`` (relative to the current folder, or absolute) or
    ``'module:factory'`` (``module`` importable from sys.path or found in the current folder).
    The arch to record is the absolute file form unless the module is an installed package, so
    that a checkpoint rebuilds its model from any folder. Raises ValueError in one line naming the
    file or module and what to do.
    """
    spec, _, factory_name = arch.rpartition(":")
    if not spec or not factory_name.isidentifier():
        raise ValueError(f"arch must be one of {arch_forms()}, got {arch!r}")
    if _is_file_form(spec):
        path = Path(spec).expanduser()
        path = (path if path.is_absolute() else Path.cwd() / path).resolve()
        if not path.is_file():
            raise ValueError(f"arch: model file not found: {path} (from {arch!r}); a checkpoint rebuilds its "
                             "model from this file, so it must exist at that path")
        module, _ = _module_from_file(path, arch)
        recorded = f"{path}:{factory_name}"
    else:
        if not all(part.isidentifier() for part in spec.split(".")):
            raise ValueError(f"arch must be one of {arch_forms()}, got {arch!r}")
        module = None
        top = spec.split(".")[0]
        for extra in (None, Path.cwd()):
            try:
                with _on_sys_path(extra) if extra is not None else contextlib.nullcontext():
                    module = importlib.import_module(spec)
                break
            except ModuleNotFoundError as exc:
                if exc.name not in (top, spec) and not spec.startswith(f"{exc.name}."):
                    raise ValueError(f"arch: importing module {spec!r} failed: {_first_line(exc)}") from exc
            except Exception as exc:  # noqa: BLE001 - the user's module failed to import
                raise ValueError(f"arch: importing module {spec!r} failed: {_first_line(exc)}") from exc
        if module is None:
            raise ValueError(
                f"arch: cannot import module {spec!r} for {arch!r}: no {spec.replace('.', '/')}.py in the current "
                f"folder ({Path.cwd()}) nor on sys.path; give the file instead: --arch path/to/"
                f"{spec.split('.')[-1]}.py:{factory_name}"
            )
        file = getattr(module, "__file__", None)
        path = Path(file).resolve() if file else None
        recorded = f"{path}:{factory_name}" if path is not None and not _installed(path) else arch
    factory = getattr(module, factory_name, None)
    where = getattr(module, "__file__", None) or module.__name__
    if factory is None:
        raise ValueError(f"arch: {where} has no {factory_name!r} (from {arch!r})")
    if not callable(factory):
        raise ValueError(f"arch: {factory_name!r} in {where} is a {type(factory).__name__}, not a function "
                         f"(from {arch!r})")
    return factory, recorded, (Path(module.__file__).resolve() if getattr(module, "__file__", None) else None)


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
    factory, recorded, file = resolve_factory(arch)
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
    if not entry.info.get("builtin"):
        _check_model_output(net, label, num_classes, image_size, in_channels)
    return net


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


# ------------------------------------------------------------------------------------------ pretrained weights


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


# ------------------------------------------------------------------------------------------ timm, torchvision


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
    if imagenet and not arch.startswith(("timm:", "torchvision:")):
        raise ValueError(f"--pretrained imagenet: only timm:<name> and torchvision:<name> models have ImageNet "
                         f"weights, not {arch!r}; give a local state_dict file (made with {_SAVE_STATE_DICT})")
    default_mean: tuple = (0.0,) * in_channels
    default_std: tuple = (1.0,) * in_channels
    recorded, file = arch, None
    if arch in ARCHITECTURES:
        net: nn.Module = _registered_model(arch, num_classes, image_size, in_channels)
        entry = ARCHITECTURES.entry(arch)
        if "mean" in entry.info:
            default_mean, default_std = tuple(entry.info["mean"]), tuple(entry.info["std"])
    elif arch.startswith("timm:"):
        net, m, s = _timm_model(arch[5:], num_classes, in_channels, imagenet)
        if in_channels == 3 and len(m) == 3:
            default_mean, default_std = m, s
    elif arch.startswith("torchvision:"):
        net = _torchvision_model(arch[12:], num_classes, in_channels, imagenet)
        default_mean, default_std = IMAGENET_MEAN, IMAGENET_STD
    elif ":" in arch:
        net, recorded, file = _factory_model(arch, num_classes, image_size, in_channels)
    else:
        raise ValueError(f"arch must be one of {arch_forms()}, got {arch!r}")
    if weights is not None and not imagenet:
        _load_state(net, _read_state_dict(weights), weights, strict=strict)
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
