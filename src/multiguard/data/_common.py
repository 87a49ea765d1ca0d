"""Pieces shared by the dataset families: the base dataset class, image loading, errors."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

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
    """Non-empty stripped lines of a UTF-8 text file."""
    with open(path, encoding="utf-8") as handle:
        return [line.strip() for line in handle if line.strip()]
