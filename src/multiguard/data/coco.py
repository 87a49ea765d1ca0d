"""MS-COCO 2014 in its usual layout.

Layout::

    root/annotations/instances_train2014.json
    root/annotations/instances_val2014.json
    root/train2014/<file_name>
    root/val2014/<file_name>

The 80 categories are mapped to labels 0..79 in ascending category id. Images with
no annotation at all are left out (they carry no label); ``dataset.skipped_unannotated`` counts them and
``multiguard datasets describe`` says how many. As in the paper, models
are evaluated on ``val`` (``test`` is accepted as another name for it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from multiguard.data._common import MultiLabelImageDataset, not_utf8_error, require

TRAIN_SPLIT, TEST_SPLIT = "train", "val"
DEFAULT_IMAGE_SIZE = 224


def load_coco2014(
    root: str | os.PathLike, split: str = TRAIN_SPLIT, image_size: int = DEFAULT_IMAGE_SIZE
) -> MultiLabelImageDataset:
    """COCO 2014 ``split`` (``train`` or ``val``); returns ``(image (3, S, S), labels (80,))`` items."""
    if split == "test":
        split = "val"
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val' for coco2014, got {split!r}")
    root = Path(root)
    ann_path = require(root / "annotations" / f"instances_{split}2014.json", "COCO annotation file")
    image_dir = require(root / f"{split}2014", "COCO image folder")
    try:
        with open(ann_path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as exc:
        raise ValueError(f"cannot parse COCO annotation file {ann_path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise not_utf8_error(ann_path, exc) from exc
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"COCO annotation file {ann_path} has no {key!r} list")
    categories = sorted(data["categories"], key=lambda cat: cat["id"])
    index = {cat["id"]: i for i, cat in enumerate(categories)}
    class_names = [cat["name"] for cat in categories]
    per_image: dict[int, set[int]] = {}
    for ann in data["annotations"]:
        if ann["category_id"] not in index:
            raise ValueError(
                f"unknown label: category id {ann['category_id']} (annotation {ann.get('id')}) in "
                f"{ann_path}; the category ids are {sorted(index)}"
            )
        per_image.setdefault(ann["image_id"], set()).add(index[ann["category_id"]])
    images = sorted(data["images"], key=lambda img: img["id"])
    kept = [img for img in images if per_image.get(img["id"])]
    labels = torch.zeros(len(kept), len(class_names), dtype=torch.float32)
    for row, img in enumerate(kept):
        labels[row, sorted(per_image[img["id"]])] = 1.0
    paths = [image_dir / img["file_name"] for img in kept]
    dataset = MultiLabelImageDataset("coco2014", split, paths, labels, class_names, image_size)
    dataset.skipped_unannotated = len(images) - len(kept)
    dataset.image_ids = [img["id"] for img in kept]
    return dataset
