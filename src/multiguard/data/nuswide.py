"""NUS-WIDE in the layout of the ASL release used by the paper.

Layout::

    root/nus_wid_data.csv   columns: image path (relative to root), label list, split
    root/Concepts81.txt     one concept a line: the class list, in label order

The CSV header names its columns; the path column is the one whose name contains
``path`` (or ``file``/``image``), the label column the one containing ``label`` and
the split column the one containing ``split``; a leading unnamed index column is
ignored. Labels are written as a Python list, e.g. ``['sky', 'clouds']``; splits
are ``train`` and ``val`` (``test`` is accepted as another name for ``val``).
"""

from __future__ import annotations

import ast
import csv
import os
from pathlib import Path

import torch

from multiguard.data._common import MultiLabelImageDataset, labels_to_vector, open_text, read_class_list, require

TRAIN_SPLIT, TEST_SPLIT = "train", "val"
DEFAULT_IMAGE_SIZE = 224
CSV_NAME, CONCEPTS_NAME = "nus_wid_data.csv", "Concepts81.txt"


def _column(header: list[str], keys: tuple[str, ...], path: Path) -> int:
    for key in keys:
        for i, name in enumerate(header):
            if key in name.strip().lower():
                return i
    raise ValueError(f"{path}: no column whose name contains {keys[0]!r} in header {header}")


def _parse_labels(text: str, where: str) -> list[str]:
    text = text.strip()
    if not text:
        return []
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(f"{where}: cannot parse the label list {text!r}") from exc
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: the label list must be a list of strings, got {text!r}")
    return [v.strip() for v in value]


def load_nuswide(
    root: str | os.PathLike, split: str = TRAIN_SPLIT, image_size: int = DEFAULT_IMAGE_SIZE
) -> MultiLabelImageDataset:
    """NUS-WIDE ``split`` (``train`` or ``val``); returns ``(image (3, S, S), labels (81,))`` items."""
    if split == "test":
        split = "val"
    root = Path(root)
    csv_path = require(root / CSV_NAME, "NUS-WIDE label file")
    class_list_file = require(root / CONCEPTS_NAME, "NUS-WIDE concept list")
    class_names = read_class_list(class_list_file)
    class_index = {name: i for i, name in enumerate(class_names)}
    paths, rows = [], []
    with open_text(csv_path) as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{csv_path} is empty")
        path_col = _column(header, ("path", "file", "image"), csv_path)
        label_col = _column(header, ("label",), csv_path)
        split_col = _column(header, ("split",), csv_path)
        for number, record in enumerate(reader, start=2):
            if not record:
                continue
            if record[split_col].strip() != split:
                continue
            where = f"{csv_path}, line {number}"
            names = _parse_labels(record[label_col], where)
            rows.append(labels_to_vector(names, class_index, where))
            paths.append(root / record[path_col].strip())
    if not rows:
        raise ValueError(f"split {split!r} has no rows in {csv_path}")
    labels = torch.stack(rows)
    dataset = MultiLabelImageDataset("nuswide", split, paths, labels, class_names, image_size)
    dataset.class_list_file = class_list_file
    return dataset
