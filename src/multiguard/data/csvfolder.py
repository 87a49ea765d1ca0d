"""A user's own multi-label dataset described by CSV files.

Layout::

    root/classes.txt     one class name a line: the label order
    root/<split>.csv     header ``path,labels``; paths relative to root; labels joined by ``|``
                         (may be empty: an image with no label)

Example ``train.csv``::

    path,labels
    images/0001.jpg,cat|dog
    images/0002.png,
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from ._common import MultiLabelImageDataset, labels_to_vector, read_lines, require

TRAIN_SPLIT, TEST_SPLIT = "train", "test"
DEFAULT_IMAGE_SIZE = 224


def load_csv(
    root: str | os.PathLike, split: str = TRAIN_SPLIT, image_size: int = DEFAULT_IMAGE_SIZE
) -> MultiLabelImageDataset:
    """Dataset ``root/<split>.csv`` with classes from ``root/classes.txt``; items ``(image (3, S, S), labels (c,))``."""
    root = Path(root)
    class_names = read_lines(require(root / "classes.txt", "class list"))
    if len(set(class_names)) != len(class_names):
        raise ValueError(f"{root / 'classes.txt'} lists a class twice")
    class_index = {name: i for i, name in enumerate(class_names)}
    csv_path = require(root / f"{split}.csv", f"CSV file for split {split!r}")
    paths, rows = [], []
    with open(csv_path, encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
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
    labels = torch.stack(rows) if rows else torch.zeros(0, len(class_names))
    return MultiLabelImageDataset("csv", split, paths, labels, class_names, image_size)
