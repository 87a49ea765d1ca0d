"""PASCAL VOC 2007 in its VOCdevkit layout.

Layout (``root`` is the folder that holds ``VOCdevkit``)::

    root/VOCdevkit/VOC2007/JPEGImages/<id>.jpg
    root/VOCdevkit/VOC2007/Annotations/<id>.xml          (not read: the labels come from ImageSets/Main)
    root/VOCdevkit/VOC2007/ImageSets/Main/<split>.txt    (optional: the image ids, in order)
    root/VOCdevkit/VOC2007/ImageSets/Main/<class>_<split>.txt   ("<id> 1|-1|0" per line)

In the per-class files 1 means the class is present, -1 absent and 0 present only
as "difficult" objects. As in the paper's protocol difficult-only counts as
negative; ``difficult_positive=True`` counts it as positive (the option is parsed strictly:
true/false, 1/0, yes/no; anything else is refused).

The labels come only from these ImageSets/Main files, as the VOC devkit writes them from the annotations;
the ``Annotations/*.xml`` files are not read (an edited XML file changes nothing until the ImageSets files
are written again).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from multiguard.data._common import DatasetFileError, MultiLabelImageDataset, parse_bool_option, read_lines, require

VOC_CLASSES = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]  # fmt: skip

TRAIN_SPLIT, TEST_SPLIT = "trainval", "test"
DEFAULT_IMAGE_SIZE = 224
LISTED_MISSING = 5  # label files named in full when some are missing (the rest are counted)


def voc_root(root: str | os.PathLike) -> Path:
    """The ``VOC2007`` folder under ``root`` (``root`` itself if it already is one)."""
    root = Path(root)
    if (root / "JPEGImages").is_dir() and (root / "ImageSets").is_dir():
        return root
    return require(root / "VOCdevkit" / "VOC2007", "VOC 2007 folder")


def load_voc2007(
    root: str | os.PathLike,
    split: str = TRAIN_SPLIT,
    image_size: int = DEFAULT_IMAGE_SIZE,
    difficult_positive: bool = False,
) -> MultiLabelImageDataset:
    """VOC 2007 ``split`` (``trainval``, ``test``, ``train`` or ``val``) with the 20 classes in standard order.

    Returns a dataset of ``(image (3, S, S) in [0, 1], labels (20,))``.
    """
    difficult_positive = parse_bool_option("difficult_positive", difficult_positive)
    base = voc_root(root)
    main = require(base / "ImageSets" / "Main", "VOC ImageSets/Main folder")
    require(base / "JPEGImages", "VOC JPEGImages folder")
    per_class: list[dict[str, int]] = []
    absent = [name for name in VOC_CLASSES if not (main / f"{name}_{split}.txt").is_file()]
    if absent:
        first = main / f"{absent[0]}_{split}.txt"
        others = [f"{name}_{split}.txt" for name in absent[1:]]
        listed = ", ".join(others[:LISTED_MISSING])
        more = f" and {len(others) - LISTED_MISSING} more" if len(others) > LISTED_MISSING else ""
        also = f"; {len(absent)} of {len(VOC_CLASSES)} missing, also {listed}{more}" if others else ""
        raise DatasetFileError(
            f"VOC label file for class {absent[0]!r}, split {split!r} not found: expected {first}{also} (the labels "
            "come from the ImageSets/Main/<class>_<split>.txt files of the devkit; Annotations/*.xml are not read)"
        )
    for name in VOC_CLASSES:
        path = main / f"{name}_{split}.txt"
        marks: dict[str, int] = {}
        for number, line in enumerate(read_lines(path), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("1", "-1", "0"):
                raise ValueError(f"{path}, line {number}: expected '<image id> 1|-1|0', got {line!r}")
            marks[parts[0]] = int(parts[1])
        per_class.append(marks)

    list_file = main / f"{split}.txt"
    if list_file.is_file():
        ids = [line.split()[0] for line in read_lines(list_file)]
    else:
        ids = list(per_class[0])
    positive = {1, 0} if difficult_positive else {1}
    labels = torch.zeros(len(ids), len(VOC_CLASSES), dtype=torch.float32)
    for c, marks in enumerate(per_class):
        for i, image_id in enumerate(ids):
            if marks.get(image_id, -1) in positive:
                labels[i, c] = 1.0
    paths = [base / "JPEGImages" / f"{image_id}.jpg" for image_id in ids]
    return MultiLabelImageDataset("voc2007", split, paths, labels, VOC_CLASSES, image_size)
