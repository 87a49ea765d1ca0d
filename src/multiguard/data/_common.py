"""Pieces shared by the dataset families: the base dataset class, image loading, errors."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset


class DatasetFileError(FileNotFoundError, ValueError):
    """A file or folder that a dataset layout requires is missing.

    It is both a ``FileNotFoundError`` and a ``ValueError`` so that callers that
    turn ``ValueError`` into a one-line message handle it too.
    """


def require(path: str | os.PathLike, what: str) -> Path:
    """Return ``path`` as a Path, or raise DatasetFileError naming it and what it should hold."""
    path = Path(path)
    if not path.exists():
        raise DatasetFileError(f"{what} not found: expected {path}")
    return path


def check_image_size(image_size: int) -> int:
    """Validate ``image_size`` (a positive int) and return it."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
    return int(image_size)


def load_image(path: str | os.PathLike, image_size: int, channels: int = 3) -> torch.Tensor:
    """Read an image file as a float tensor ``(channels, image_size, image_size)`` in [0, 1].

    The image is converted to RGB (``channels=3``) or grayscale (``channels=1``) and
    resized (bilinear, aspect ratio not kept) to a square of side ``image_size``.
    Raises DatasetFileError if the file is missing and ValueError naming the file if
    it cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetFileError(f"image not found: expected {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB" if channels == 3 else "L")
            img = img.resize((image_size, image_size), Image.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"cannot read image {path}: {exc}") from exc
    tensor = torch.from_numpy(array.copy()).float().div_(255.0)
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    else:
        tensor = tensor.permute(2, 0, 1).contiguous()
    return tensor


def labels_to_vector(names: Sequence[str], class_index: dict[str, int], where: str) -> torch.Tensor:
    """Multi-hot float vector ``(c,)`` for the label names; an unknown name raises ValueError.

    ``where`` says where the labels came from (a file and row) for the error message.
    """
    vector = torch.zeros(len(class_index), dtype=torch.float32)
    for name in names:
        if name not in class_index:
            raise ValueError(
                f"unknown label {name!r} in {where}; the class list is {list(class_index)}"
            )
        vector[class_index[name]] = 1.0
    return vector


class MultiLabelImageDataset(Dataset):
    """Images read from files with a fixed multi-hot label matrix.

    Items are ``(image, labels)``: image a float tensor ``(in_channels, image_size,
    image_size)`` in [0, 1], labels a float multi-hot tensor ``(c,)``.

    Attributes:
        class_names: the c class names in label order.
        labels: float tensor ``(N, c)`` of all labels (read without loading images).
        paths: the N image paths.
        in_channels: 3 (images are converted to RGB).
        image_size: side of the square images.
        name, split: the dataset family and split.
    """

    in_channels = 3
    image_size_note: str | None = None  # why this image size, where it was chosen from the images

    def __init__(
        self,
        name: str,
        split: str,
        paths: Sequence[Path],
        labels: torch.Tensor,
        class_names: Sequence[str],
        image_size: int,
    ):
        self.name = name
        self.split = split
        self.paths = list(paths)
        self.labels = labels.float()
        self.class_names = list(class_names)
        self.image_size = check_image_size(image_size)
        if self.labels.shape != (len(self.paths), len(self.class_names)):
            raise ValueError("labels must have shape (number of images, number of classes)")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = load_image(self.paths[index], self.image_size, self.in_channels)
        return image, self.labels[index].clone()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, split={self.split!r}, images={len(self)}, "
            f"classes={len(self.class_names)}, image_size={self.image_size})"
        )


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a UTF-8 text file (a byte-order mark, as Excel and Notepad write, is dropped)."""
    with open(path, encoding="utf-8-sig") as handle:
        return [line.strip() for line in handle if line.strip()]


# Images whose most common size is larger than this are resized to it when the size is chosen automatically.
AUTO_IMAGE_SIZE_CAP = 224
# At most this many images (evenly spread over the list) are opened to choose the size.
AUTO_IMAGE_SIZE_SAMPLE = 1000


def infer_image_size(paths: Sequence[Path], fallback: int = AUTO_IMAGE_SIZE_CAP) -> tuple[int, str]:
    """Side ``S`` for square model inputs, from the images themselves, and a sentence saying why.

    ``S`` is the larger side of the most common image size (width x height) among the images
    (at most :data:`AUTO_IMAGE_SIZE_SAMPLE` of them, evenly spread), capped at
    :data:`AUTO_IMAGE_SIZE_CAP` so that photos are not trained at full resolution. Only image
    headers are read. Unreadable images are skipped; if none can be read, ``fallback``.
    """
    paths = list(paths)
    if len(paths) > AUTO_IMAGE_SIZE_SAMPLE:
        picks = np.linspace(0, len(paths) - 1, AUTO_IMAGE_SIZE_SAMPLE).round().astype(int)
        paths = [paths[i] for i in picks]
    sizes: Counter[tuple[int, int]] = Counter()
    for path in paths:
        try:
            with Image.open(path) as img:
                sizes[img.size] += 1
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
            continue
    if not sizes:
        return fallback, f"image size {fallback} (the default: none of the {len(paths)} images could be read)"
    (width, height), count = sizes.most_common(1)[0]
    side = max(width, height)
    why = f"the most common size, {width}x{height}, of {count} of the {sum(sizes.values())} images read"
    if side > AUTO_IMAGE_SIZE_CAP:
        return AUTO_IMAGE_SIZE_CAP, (f"image size {AUTO_IMAGE_SIZE_CAP} (images are resized down to it: {why}; "
                                     "choose another with --image-size)")
    return side, f"image size {side} ({why}; choose another with --image-size)"


_MODE_CHANNELS = {"1": 1, "L": 1, "P": 3, "RGB": 3, "YCbCr": 3, "LAB": 3, "HSV": 3, "RGBA": 4, "CMYK": 4,
                  "LA": 2, "I": 1, "F": 1, "I;16": 1}


def inspect_images(paths: Sequence[Path], progress: bool | None = None) -> dict[str, Any]:
    """Open and decode every image: which cannot be read, their sizes and their colour modes.

    Returns ``{"checked": N, "unreadable": [{"path", "error"}], "sizes": {"WxH": count}
    (most common first), "modes": {"RGB": count, ...} (PIL modes; every image is converted to
    RGB when loaded)}``. ``progress``: a tqdm bar; ``None`` shows it for 1000 images or more on a
    terminal.
    """
    from tqdm.auto import tqdm

    paths = list(paths)
    disable = (None if len(paths) >= 1000 else True) if progress is None else not progress
    sizes: Counter[str] = Counter()
    modes: Counter[str] = Counter()
    unreadable: list[dict[str, str]] = []
    for path in tqdm(paths, desc="opening images", unit="img", disable=disable, leave=False):
        if not Path(path).is_file():
            unreadable.append({"path": str(path), "error": "file not found"})
            continue
        try:
            with Image.open(path) as img:
                img.load()  # decodes the whole file: a truncated or corrupt image fails here, as in training
                sizes[f"{img.size[0]}x{img.size[1]}"] += 1
                modes[img.mode] += 1
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            unreadable.append({"path": str(path), "error": reason})
    return {"checked": len(paths), "unreadable": unreadable, "sizes": dict(sizes.most_common()),
            "modes": dict(modes.most_common())}


def mode_channels(mode: str) -> int | None:
    """Number of channels of a PIL image mode (``None`` if unknown)."""
    return _MODE_CHANNELS.get(mode)
