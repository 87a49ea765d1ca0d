"""A user's own multi-label dataset described by CSV files.

Layout::

    root/classes.txt     one class name a line: the label order
    root/<split>.csv     header ``path,labels``; paths relative to root; labels joined by ``|``
                         (may be empty: an image with no label)

Example ``train.csv``::

    path,labels
    images/0001.jpg,cat|dog
    images/0002.png,

Both files are UTF-8; a byte-order mark (as Excel's "CSV UTF-8" export writes) is fine, another encoding is
refused naming the file and how to convert it; a class listed twice is refused by name. With
``image_size=None`` the side of the square model inputs comes from the images: the larger side
of their most common size, at most 224 (see :func:`image_size_from_images`); the dataset's
``image_size_note`` says which size was chosen and why.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from multiguard.data._common import (
    MultiLabelImageDataset,
    infer_image_size,
    labels_to_vector,
    open_text,
    read_class_list,
    require,
)

TRAIN_SPLIT, TEST_SPLIT = "train", "test"
DEFAULT_IMAGE_SIZE = None  # from the images: see image_size_from_images


def _read_split(root: Path, csv_path: Path, class_index: dict[str, int]) -> tuple[list[Path], list[torch.Tensor]]:
    paths, rows = [], []
    with open_text(csv_path) as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is not None:
            reader.fieldnames = [name.strip() for name in reader.fieldnames]
        if reader.fieldnames is None or not {"path", "labels"} <= set(reader.fieldnames):
            raise ValueError(f"{csv_path} must have a header with columns 'path,labels', got {reader.fieldnames}")
        for number, record in enumerate(reader, start=2):
            where = f"{csv_path}, line {number}"
            path = (record["path"] or "").strip()
            if not path:
                raise ValueError(f"{where}: empty path")
            text = (record["labels"] or "").strip()
            names = [name.strip() for name in text.split("|") if name.strip()] if text else []
            rows.append(labels_to_vector(names, class_index, where))
            paths.append(root / path)
    return paths, rows


def _split_files(root: Path) -> list[Path]:
    """The ``<split>.csv`` files of ``root`` (those whose header names the columns path and labels)."""
    found = []
    for csv_path in sorted(root.glob("*.csv")):
        try:
            with open(csv_path, encoding="utf-8-sig", newline="") as handle:
                header = next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError):
            continue
        if {"path", "labels"} <= {name.strip() for name in header}:
            found.append(csv_path)
    return found


def image_size_from_images(root: str | os.PathLike) -> tuple[int, str]:
    """``(S, note)``: the input side chosen from the images of every split of ``root``, and why.

    All splits share one size (a model trained on ``train`` must take ``test`` images too):
    the larger side of the most common width x height among the images listed in all
    ``<split>.csv`` files (at most 1000 of them opened, headers only), capped at 224.
    """
    root = Path(root)
    paths: list[Path] = []
    for csv_path in _split_files(root):
        with open_text(csv_path) as handle:
            reader = csv.DictReader(handle)
            reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
            paths += [root / (record["path"] or "").strip() for record in reader if (record["path"] or "").strip()]
    return infer_image_size(paths)


def load_csv(
    root: str | os.PathLike, split: str = TRAIN_SPLIT, image_size: int | None = DEFAULT_IMAGE_SIZE
) -> MultiLabelImageDataset:
    """Dataset ``root/<split>.csv`` with classes from ``root/classes.txt``; items ``(image (3, S, S), labels (c,))``.

    ``image_size=None``: ``S`` from the images (:func:`image_size_from_images`), said in ``image_size_note``.
    """
    root = Path(root)
    class_list_file = require(root / "classes.txt", "class list")
    class_names = read_class_list(class_list_file)
    class_index = {name: i for i, name in enumerate(class_names)}
    csv_path = require(root / f"{split}.csv", f"CSV file for split {split!r}")
    paths, rows = _read_split(root, csv_path, class_index)
    labels = torch.stack(rows) if rows else torch.zeros(0, len(class_names))
    note = None  # the size was given
    if image_size is None:
        image_size, note = image_size_from_images(root)
    dataset = MultiLabelImageDataset("csv", split, paths, labels, class_names, image_size)
    dataset.image_size_note = note
    dataset.class_list_file = class_list_file
    return dataset
