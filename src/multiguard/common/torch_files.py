"""The two checkpoint file formats, read and written in one place: classifiers
(:func:`multiguard.training.classifier.train`)
and denoisers (:func:`multiguard.training.denoiser.train_denoiser`).

A checkpoint is a ``torch.save`` dict ``{MARKER: version, "state_dict", "optimizer", "meta"}`` whose marker says
which kind of model it holds (``multiguard_checkpoint`` for classifiers, ``multiguard_denoiser`` for
denoisers). Files are written atomically (temporary name in the same folder, then renamed: a reader sees the old
file or the whole new one) and read with ``weights_only`` (no code is unpickled). Every refusal is one
ValueError naming the argument and the file: a folder, a missing file, a file torch cannot read, another kind of
checkpoint, a damaged marker or metadata, a format newer than this MultiGuard reads.

Rebuilding models from these files is :mod:`multiguard.models.checkpoints` (classifiers) and
:func:`multiguard.denoising.denoisers.load_denoiser` (denoisers).
"""

from __future__ import annotations

import io
import os
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from multiguard import __version__
from multiguard.common.files import atomic_write_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_MARKER",
    "CLASSIFIER_FILE",
    "DENOISER_FILE",
    "DENOISER_FORMAT",
    "DENOISER_MARKER",
    "CheckpointFile",
    "read_checkpoint",
    "read_denoiser_checkpoint",
    "read_torch_file",
    "save_denoiser_checkpoint",
    "save_torch_atomic",
    "write_checkpoint",
]

CHECKPOINT_MARKER = "multiguard_checkpoint"
CHECKPOINT_FORMAT = 1
DENOISER_MARKER = "multiguard_denoiser"
DENOISER_FORMAT = 1


@dataclass(frozen=True)
class CheckpointFile:
    """One checkpoint format: its marker key and version, and how messages name it.

    ``argument``: the argument messages name (``checkpoint``, ``denoiser``); ``kind``: what the file should be
    (``MultiGuard checkpoint``); ``made_by``: the command that writes such files; ``required_meta``: the
    metadata keys a writer must provide; ``others``: ``{marker of another format: hint}`` for a file of the
    other kind.
    """

    marker: str
    version: int
    argument: str
    kind: str
    made_by: str
    required_meta: tuple[str, ...] = ()
    others: tuple[tuple[str, str], ...] = ()

    def write(self, path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
              optimizer: Mapping[str, Any] | None = None, train_state: Mapping[str, Any] | None = None) -> None:
        """Write ``{marker: version, state_dict (on the CPU), optimizer, meta}`` to ``path`` atomically, with
        ``train_state`` (what resuming needs beyond these: the trained weights where ``state_dict`` holds the EMA
        weights, the schedule, the gradient scaler, the EMA) where given."""
        missing = [key for key in self.required_meta if key not in meta]
        if missing:
            raise ValueError(f"meta: a {self.argument} checkpoint needs {missing}")
        save_torch_atomic({self.marker: self.version,
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           "optimizer": optimizer, "meta": meta,
                           **({"train_state": _to_cpu(train_state)} if train_state else {})}, path)

    def read(self, path: str | os.PathLike) -> dict[str, Any]:
        """The raw checkpoint dict (keys ``marker``, ``state_dict``, ``optimizer``, ``meta``); ValueError naming
        the file if it is missing, unreadable, of another kind, damaged or of a newer format."""
        path = Path(path)
        obj = read_torch_file(path, self.argument, self.kind, self.made_by, marker=self.marker)
        if not isinstance(obj, dict) or self.marker not in obj:
            hint = next((text for marker, text in self.others if isinstance(obj, dict) and marker in obj), "")
            raise ValueError(f"{self.argument}: {path} is not a {self.kind} (no {self.marker!r} key){hint}")
        marker = obj[self.marker]
        if isinstance(marker, bool) or not isinstance(marker, int) or not isinstance(obj.get("meta"), dict):
            raise ValueError(f"{self.argument}: {path} is damaged (its {self.marker!r} or 'meta' entry is not ours)")
        if marker > self.version:
            raise ValueError(f"{self.argument}: {path} has format {marker}, newer than this "
                             f"MultiGuard ({__version__}) reads ({self.version})")
        return obj


CLASSIFIER_FILE = CheckpointFile(CHECKPOINT_MARKER, CHECKPOINT_FORMAT, "checkpoint", "MultiGuard checkpoint",
                                 "multiguard train --out")
DENOISER_FILE = CheckpointFile(
    DENOISER_MARKER, DENOISER_FORMAT, "denoiser", "MultiGuard denoiser", "multiguard train-denoiser --out",
    required_meta=("arch", "arch_options", "in_channels", "image_size", "sigma"),
    others=((CHECKPOINT_MARKER, " (it is a classifier checkpoint: pass it as --checkpoint)"),),
)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _holds_key(path: Path, key: str) -> bool:
    """Whether the torch file ``path`` is a dict with ``key`` (e.g. a denoiser's marker); unreadable: False."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not one of ours, whatever the reason
        return False
    return isinstance(obj, dict) and key in obj


def read_torch_file(path: str | os.PathLike, argument: str, kind: str, made_by: str,
                    marker: str | None = None) -> Any:
    """What ``torch.load`` reads from a file of ours (``weights_only``: no code is unpickled), or a one-line
    ValueError naming ``argument`` and the file: a folder (with a ``*.pt`` inside it suggested: with ``marker``,
    the key files of this kind hold, only a file that has it, so a ``--denoiser`` folder never suggests a
    classifier), a missing file, or one torch cannot read as a ``kind`` (e.g. ``"MultiGuard checkpoint"``).
    ``made_by`` names the command that writes such files."""
    path = Path(path)
    if path.is_dir():
        found = [p for p in sorted(path.glob("*.pt")) if marker is None or _holds_key(p, marker)]
        hint = f" such as {found[0]}" if found else ""
        raise ValueError(f"{argument}: {path} is a folder; give the {argument} file{hint} ({made_by})")
    if not path.is_file():
        raise ValueError(f"{argument}: no such file: {path}")
    try:
        with warnings.catch_warnings():  # torch's warnings on a file that is not ours: the error below says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever the reason, name the file in one line
        raise ValueError(f"{argument}: {path} is not a {kind}: {_what_it_is(path, exc)}; {kind}s are written by "
                         f"{made_by}") from exc


_IMAGE_SIGNATURES = ((b"\x89PNG", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF8", "GIF"), (b"BM", "BMP"),
                     (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _what_it_is(path: Path, exc: BaseException) -> str:
    """What a file torch could not load looks like, in words, from its first bytes (never torch's own advice,
    which suggests ``weights_only=False``: loading an untrusted file that way runs its code)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if not head:
        return "the file is empty"
    for signature, name in _IMAGE_SIGNATURES:
        if head.startswith(signature):
            return f"it is a {name} image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "it is a WebP image"
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except zipfile.BadZipFile:
            return "the archive is truncated or damaged (copy the file again)"
        if names and all(name.endswith(".npy") for name in names):
            return "it is a NumPy .npz archive"
        if any(name.endswith("data.pkl") for name in names):
            if "Weights only load failed" in str(exc) or "weights_only" in str(exc):
                return ("it holds Python objects other than tensors and plain values, which MultiGuard never "
                        "unpickles (unpickling runs code)")
            return "the torch archive is damaged (copy the file again)"
        return "it is a zip archive, not a torch file"
    if head[:1] == b"\x80":
        return ("it is a plain pickle, which MultiGuard never unpickles (unpickling runs code); save tensors "
                "with torch.save")
    return "it is not a torch file"


def save_torch_atomic(obj: dict, path: str | os.PathLike) -> None:
    """Serialise ``obj`` with ``torch.save`` and write it through the package's one atomic writer (the folder is
    created if needed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The raw classifier checkpoint dict (keys ``multiguard_checkpoint``, ``state_dict``, ``optimizer``,
    ``meta``). Raises ValueError naming the file if it is missing, unreadable or not a MultiGuard checkpoint."""
    return CLASSIFIER_FILE.read(path)


def write_checkpoint(path: str | os.PathLike, model: nn.Module, meta: dict[str, Any],
                     optimizer: Mapping[str, Any] | None = None, train_state: Mapping[str, Any] | None = None) -> None:
    """Write a classifier checkpoint atomically (see :data:`CLASSIFIER_FILE`): ``state_dict`` holds the weights
    ``model`` serves (``meta["weights"]``: ``"ema"`` or ``"trained"``), ``train_state`` what a resume needs."""
    CLASSIFIER_FILE.write(path, model, meta, optimizer, train_state)


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, Mapping):
        return {key: _to_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(item) for item in value)
    return value


def save_denoiser_checkpoint(path: str | os.PathLike, denoiser: nn.Module, meta: dict[str, Any],
                             optimizer: dict[str, Any] | None = None) -> None:
    """Write ``{multiguard_denoiser, state_dict, optimizer, meta}`` to ``path`` atomically (torch.save bytes).

    ``meta`` must hold at least ``arch``, ``arch_options``, ``in_channels``, ``image_size`` and ``sigma``.
    """
    DENOISER_FILE.write(path, denoiser, meta, optimizer)


def read_denoiser_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The raw denoiser checkpoint dict; ValueError naming the file if it is missing or not a denoiser."""
    return DENOISER_FILE.read(path)
