"""Checkpoints: rebuilding from what :func:`multiguard.training.classifier.train` saved the model, its dataset split
and the
smoothed classifier. The one way from a checkpoint file to a :class:`MultiGuard` (the file format itself, read and
written, is :mod:`multiguard.common.torch_files`).

A checkpoint is a ``torch.save`` dict with keys ``multiguard_checkpoint`` (the format version),
``state_dict``, ``optimizer`` and ``meta`` (everything needed to rebuild the model and its data: arch,
num_classes, image_size, in_channels, mean, std, class_names, dataset, data_root, splits, sigma, clamp, ...).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from multiguard.common.devices import resolve_device
from multiguard.common.torch_files import CHECKPOINT_FORMAT, CHECKPOINT_MARKER, read_checkpoint
from multiguard.common.validation import check_positive
from multiguard.data import dataset_version, get_dataset, is_composed
from multiguard.data._common import class_list_difference
from multiguard.models.factory import create_model
from multiguard.sampling.smoothed import MultiGuard

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_MARKER",
    "dataset_for_checkpoint",
    "load_checkpoint",
    "read_checkpoint",
    "smoothed_from_checkpoint",
]


def _build(meta: dict) -> nn.Module:
    """The untrained model the metadata describes."""
    return create_model(meta["arch"], meta["num_classes"], meta["image_size"], meta["in_channels"],
                        mean=meta["mean"], std=meta["std"])


def _check_meta(meta: object, path: str | os.PathLike) -> dict:
    """The checkpoint's metadata if the fields every command reads are there and of their type; else a one-line
    ValueError naming the file and the field (a checkpoint of ours always has them: it was damaged or edited)."""
    if not isinstance(meta, dict):
        raise ValueError(f"checkpoint: {path} is damaged (its 'meta' is not a dict)")
    for key in ("arch", "num_classes", "image_size", "class_names", "sigma"):
        if key not in meta:
            raise ValueError(f"checkpoint: {path} is damaged (no '{key}' in it)")
    for key in ("num_classes", "image_size", "in_channels"):
        value = meta.get(key, 3)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"checkpoint: {path} is damaged (its '{key}' is {value!r}, not an integer >= 1)")
    sigma = meta["sigma"]
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not sigma >= 0:
        raise ValueError(f"checkpoint: {path} is damaged (its 'sigma' is {sigma!r}, not a number >= 0)")
    return meta


def _weights_mismatch(model: nn.Module, weights: object) -> str:
    """What does not fit between ``model`` and a state dict, for one line: missing, unexpected and reshaped
    tensors, each counted with the first name (and shapes)."""
    if not isinstance(weights, dict):
        return f"its weights are a {type(weights).__name__}, not a state dict"
    own = model.state_dict()
    missing = [name for name in own if name not in weights]
    extra = [name for name in weights if name not in own]
    shapes = [name for name in own if name in weights and hasattr(weights[name], "shape")
              and tuple(weights[name].shape) != tuple(own[name].shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} tensor(s) of the model missing, e.g. {missing[0]}")
    if extra:
        parts.append(f"{len(extra)} not in the model, e.g. {extra[0]}")
    if shapes:
        name = shapes[0]
        parts.append(f"{len(shapes)} of another shape, e.g. {name}: {tuple(weights[name].shape)} in the file, "
                     f"{tuple(own[name].shape)} in the model")
    return "; ".join(parts) or "the weights do not load"


def _model_file_change(model: nn.Module, meta: dict) -> str | None:
    """``'the model file F changed since the checkpoint was trained (...)'`` when the Python file defining the
    checkpoint's model (a file factory) no longer has the SHA-256 training recorded; ``None`` otherwise (also
    for checkpoints that recorded none)."""
    recorded, now = meta.get("arch_file_sha256"), getattr(model, "arch_file_sha256", None)
    if recorded is None or now is None or recorded == now:
        return None
    return (f"the model file {model.arch_file} changed since the checkpoint was trained (SHA-256 {now[:12]}..., "
            f"then {recorded[:12]}...)")


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild the model saved by :func:`train`.

    Returns ``(model, meta)``: the model in eval mode on ``device``, taking images
    ``(N, in_channels, image_size, image_size)`` in [0, 1] and returning logits ``(N, num_classes)``;
    ``meta`` the checkpoint's metadata (see :func:`train`). Raises ValueError naming the file if it is
    not a MultiGuard checkpoint.
    """
    checkpoint = read_checkpoint(path)
    meta = _check_meta(checkpoint["meta"], path)
    try:
        model = _build(meta)
    except KeyError as missing:  # a checkpoint of ours always has them: it was damaged or edited
        raise ValueError(f"checkpoint: {path} is damaged (no {missing} in it)") from None
    changed = _model_file_change(model, meta)
    try:
        model.load_state_dict(checkpoint["state_dict"])
        model.class_names = list(meta["class_names"])
    except KeyError as missing:
        raise ValueError(f"checkpoint: {path} is damaged (no {missing} in it)") from None
    except RuntimeError:  # load_state_dict: weights of other shapes or names than the model's
        reason = _weights_mismatch(model, checkpoint["state_dict"])
        if model.arch_file is not None:  # the user's model file builds another model than the one trained
            how = changed or f"was {model.arch_file} edited since {path} was trained?"
            raise ValueError(f"checkpoint: the weights in {path} do not fit the model its file builds now ({how}; "
                             f"{reason}); restore the file as it was when the checkpoint was trained") from None
        raise ValueError(f"checkpoint: {path} is damaged (its weights do not fit its model: {reason})") from None
    if changed:
        warnings.warn(f"{changed}: the checkpoint's weights run in the code as it is now", UserWarning, stacklevel=2)
    return model.to(resolve_device(device)).eval(), meta


def dataset_for_checkpoint(
    meta: dict[str, Any],
    *,
    dataset: str | None = None,
    data_root: str | os.PathLike[str] | None = None,
    split: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """The dataset split to certify a checkpoint on, rebuilt as the checkpoint saw it.

    Defaults come from the checkpoint: its dataset, data root and test split. The images get the model's
    image size; multidigits is rebuilt from the training seed and size (the images are a function of them).
    Returns ``(dataset, description)`` with the fields a run records (dataset, data_root, split,
    dataset_options, dataset_version, image_size).
    """
    name = dataset or meta["dataset"]
    same = name == meta["dataset"]
    root = data_root if data_root is not None else (meta.get("data_root") if same else None)
    split = split or (meta.get("test_split") if same else None)
    options: dict[str, Any] = dict(meta.get("dataset_options") or {}) if same else {}
    seed = int(meta.get("seed", 0))
    if is_composed(name) and same:  # composed datasets: the split's size is a dataset option
        sizes = {meta.get("test_split"): meta.get("test_size"), meta.get("train_split"): meta.get("train_size")}
        if sizes.get(split) and "size" not in options:
            options["size"] = int(sizes[split])
    data = get_dataset(name, root=root, split=split, image_size=int(meta["image_size"]), seed=seed, **options)
    expected = meta.get("class_names")
    difference = None if expected is None else class_list_difference(expected, data.class_names)
    if difference is not None:  # the label columns would be compared with another class's scores
        source = getattr(data, "class_list_file", None) or f"{name} {getattr(data, 'split', split)}"
        raise ValueError(f"dataset: the classes of {source} are not the checkpoint's: {difference}")
    num_classes = len(data.class_names)
    if num_classes != int(meta["num_classes"]):
        raise ValueError(
            f"dataset: {name} has {num_classes} classes but the checkpoint's model predicts {meta['num_classes']}"
        )
    options_record = dict(options)
    if is_composed(name):  # composed from the seed
        options_record["seed"] = seed
    info = {
        "dataset": name,
        "data_root": None if root is None else os.fspath(root),
        "split": getattr(data, "split", split),
        "dataset_options": options_record,
        "dataset_version": dataset_version(name),
        "image_size": int(meta["image_size"]),
        "class_names": list(data.class_names),
    }
    return data, info


def smoothed_from_checkpoint(
    model: nn.Module,
    meta: dict[str, Any],
    *,
    k_prime: int = 1,
    sigma: float | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    channels_last: bool | None = None,
    compile: bool = False,
    denoiser: str | os.PathLike | None = None,
    thresholds: Any = None,
    noise: str = "float",
    shared_noise: bool = False,
) -> MultiGuard:
    """The smoothed classifier of a loaded checkpoint: its model, class count and clamp, with the training
    sigma unless ``sigma`` is given (a checkpoint trained without noise needs one). ``precision``,
    ``channels_last`` and ``compile`` set the sampling mode (:mod:`multiguard.sampling.acceleration`), which is part of
    the base classifier.

    ``denoiser``: a denoiser checkpoint (:func:`multiguard.training.denoiser.train_denoiser`) or a registered
    ``<source>:<spec>`` form such as ``diffusers:<model id or folder>``
    (:func:`multiguard.denoising.denoisers.build_denoiser`)
    to put in front of the model: the base classifier becomes ``model(denoiser(x + noise))`` (denoised smoothing;
    the certificate is the same; the sampling mode covers the denoiser too). A denoiser trained for another sigma
    or image size is refused with a ValueError.

    ``thresholds``: per-label thresholds (:class:`multiguard.certificates.thresholds.LabelThresholds`) of a
    thresholded base
    classifier (``MultiGuard(thresholds=...)``), or ``None``. ``noise``, ``shared_noise``: as in :class:`MultiGuard`.
    """
    if sigma is not None:
        sigma = check_positive(sigma, "sigma")  # a negative or NaN sigma is a mistake in the argument
    elif not float(meta["sigma"]) > 0:
        raise ValueError("sigma: the checkpoint was trained without noise: pass --sigma, the noise level to smooth "
                         "with (e.g. the one its denoiser was trained for)")
    else:
        sigma = float(meta["sigma"])
    clamp = (0.0, 1.0) if meta.get("clamp") else None
    if denoiser is not None:
        from multiguard.denoising.denoisers import DenoisedClassifier, build_denoiser

        model_device = next((t.device for t in (*model.parameters(), *model.buffers())), torch.device("cpu"))
        denoiser_model = build_denoiser(denoiser, sigma=sigma, image_size=int(meta["image_size"]),
                                        in_channels=int(meta.get("in_channels", 3)), device=model_device)
        model = DenoisedClassifier(denoiser_model, model)
    return MultiGuard(model, int(meta["num_classes"]), check_positive(sigma, "sigma"), k_prime=k_prime,
                      clamp=clamp, device=None if device is None else resolve_device(device),
                      precision=precision, channels_last=channels_last, compile=compile, thresholds=thresholds,
                      noise=noise, shared_noise=shared_noise)
