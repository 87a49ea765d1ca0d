"""Multi-label datasets behind one entry point, :func:`get_dataset`.

Every dataset yields ``(image, labels)``: ``image`` a float tensor ``(C, S, S)`` in
[0, 1] (``C`` = ``dataset.in_channels``, ``S`` = ``image_size``), ``labels`` a float
multi-hot tensor ``(c,)``; ``dataset.class_names`` lists the c classes in label
order and ``dataset.labels`` holds all labels ``(N, c)``.

Families (see each module for its exact layout)::

    voc2007      root/VOCdevkit/VOC2007/...             splits trainval, test (also train, val)
    coco2014     root/annotations/instances_*2014.json  splits train, val
    nuswide      root/nus_wid_data.csv + Concepts81.txt splits train, val
    csv          root/classes.txt + root/<split>.csv    any split name
    multidigits  embedded (scikit-learn digits)         splits train, test

Example::

    from multiguard.data import get_dataset, describe, format_description
    train = get_dataset("multidigits", split="train", seed=0)
    print(format_description(describe(train)))
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from . import coco, csvfolder, multidigits, nuswide, voc
from ._common import DatasetFileError, MultiLabelImageDataset, load_image

__all__ = [
    "DATASETS",
    "DatasetFileError",
    "DatasetInfo",
    "MultiLabelImageDataset",
    "default_splits",
    "describe",
    "format_description",
    "get_dataset",
    "load_image",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`get_dataset` knows about a dataset family."""

    name: str
    description: str
    train_split: str
    test_split: str
    image_size: int
    needs_root: bool
    options: tuple[str, ...]


DATASETS: dict[str, DatasetInfo] = {
    "multidigits": DatasetInfo(
        "multidigits",
        "embedded: 2x2 grids of 1-4 scikit-learn handwritten digits, 10 classes, grayscale",
        multidigits.TRAIN_SPLIT, multidigits.TEST_SPLIT, multidigits.DEFAULT_IMAGE_SIZE, False,
        ("size", "min_digits", "max_digits"),
    ),
    "voc2007": DatasetInfo(
        "voc2007", "PASCAL VOC 2007, root/VOCdevkit/VOC2007, 20 classes",
        voc.TRAIN_SPLIT, voc.TEST_SPLIT, voc.DEFAULT_IMAGE_SIZE, True, ("difficult_positive",),
    ),
    "coco2014": DatasetInfo(
        "coco2014", "MS-COCO 2014, root/annotations + root/{train,val}2014, 80 classes",
        coco.TRAIN_SPLIT, coco.TEST_SPLIT, coco.DEFAULT_IMAGE_SIZE, True, (),
    ),
    "nuswide": DatasetInfo(
        "nuswide", "NUS-WIDE (ASL release), root/nus_wid_data.csv + Concepts81.txt, 81 classes",
        nuswide.TRAIN_SPLIT, nuswide.TEST_SPLIT, nuswide.DEFAULT_IMAGE_SIZE, True, (),
    ),
    "csv": DatasetInfo(
        "csv", "your own: root/classes.txt + root/<split>.csv (path,labels joined by |)",
        csvfolder.TRAIN_SPLIT, csvfolder.TEST_SPLIT, csvfolder.DEFAULT_IMAGE_SIZE, True, (),
    ),
}  # fmt: skip


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise ValueError(f"name: unknown dataset {name!r}; known datasets are {sorted(DATASETS)}")
    return DATASETS[name]


def default_splits(name: str) -> tuple[str, str]:
    """``(train_split, test_split)`` of a dataset family, e.g. ``('trainval', 'test')`` for voc2007."""
    info = _info(name)
    return info.train_split, info.test_split


def get_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    split: str | None = None,
    image_size: int | None = None,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load one split of a multi-label dataset.

    Args:
        name: one of ``DATASETS``: ``multidigits``, ``voc2007``, ``coco2014``, ``nuswide``, ``csv``.
        root: the dataset folder (all but ``multidigits``, which is embedded).
        split: split name; ``None`` = the family's training split (see :func:`default_splits`).
        image_size: side S of the square images; ``None`` = 32 for multidigits, 224 otherwise.
        seed: only multidigits uses it: the dataset is a deterministic function of it.
        **options: family options: voc2007 ``difficult_positive`` (bool, default False:
            difficult-only objects count as negative); multidigits ``size`` (number of
            images, default 8000 train / 2000 test), ``min_digits``, ``max_digits``.

    Returns:
        A torch Dataset of ``(image (C, S, S) float in [0, 1], labels (c,) float multi-hot)``
        with attributes ``class_names``, ``labels (N, c)``, ``in_channels``, ``image_size``.

    Raises:
        ValueError: unknown name, option or split; an unknown label name (naming it and the
            class list); an unreadable image (naming the file, when it is read).
        DatasetFileError (a FileNotFoundError and a ValueError): a missing file or folder,
            naming the path the layout expects.
    """
    info = _info(name)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise ValueError(
            f"options: {name} does not take {unknown}; it takes {list(info.options) or 'no options'}"
        )
    split = info.train_split if split is None else split
    image_size = info.image_size if image_size is None else image_size
    if name == "multidigits":
        return multidigits.load_multidigits(split=split, image_size=image_size, seed=seed, **options)
    if root is None:
        raise ValueError(f"root: dataset {name!r} needs root, the folder holding it ({info.description})")
    if not os.path.isdir(root):
        raise DatasetFileError(f"dataset folder for {name} not found: expected {root}")
    if name == "voc2007":
        return voc.load_voc2007(root, split=split, image_size=image_size, **options)
    if name == "coco2014":
        return coco.load_coco2014(root, split=split, image_size=image_size)
    if name == "nuswide":
        return nuswide.load_nuswide(root, split=split, image_size=image_size)
    return csvfolder.load_csv(root, split=split, image_size=image_size)


def _labels_of(dataset: Dataset) -> tuple[torch.Tensor, list[str]]:
    if isinstance(dataset, Subset):
        labels, names = _labels_of(dataset.dataset)
        return labels[torch.as_tensor(list(dataset.indices), dtype=torch.long)], names
    names = list(dataset.class_names)
    labels = getattr(dataset, "labels", None)
    if labels is None:
        labels = torch.stack([dataset[i][1] for i in range(len(dataset))]) if len(dataset) else None
    if labels is None:
        labels = torch.zeros(0, len(names))
    return torch.as_tensor(labels).float(), names


def describe(dataset: Dataset) -> dict[str, Any]:
    """Summary of a dataset's labels (read without loading images when it has ``labels``).

    Returns a dict with keys ``name``, ``split``, ``images``, ``classes``,
    ``class_names``, ``label_counts`` ({class: images holding it}),
    ``label_frequency`` ({class: fraction of images holding it}),
    ``mean_labels_per_image`` and ``images_without_labels``.
    Format it with :func:`format_description`.
    """
    labels, names = _labels_of(dataset)
    base = dataset.dataset if isinstance(dataset, Subset) else dataset
    n = labels.shape[0]
    counts = labels.gt(0).sum(0).tolist() if n else [0] * len(names)
    per_image = labels.gt(0).sum(1)
    return {
        "name": getattr(base, "name", type(base).__name__),
        "split": getattr(base, "split", None),
        "images": n,
        "classes": len(names),
        "class_names": names,
        "label_counts": dict(zip(names, (int(c) for c in counts), strict=True)),
        "label_frequency": {name: (c / n if n else 0.0) for name, c in zip(names, counts, strict=True)},
        "mean_labels_per_image": float(per_image.float().mean()) if n else 0.0,
        "images_without_labels": int((per_image == 0).sum()) if n else 0,
    }


def format_description(description: dict[str, Any] | list[dict[str, Any]]) -> str:
    """A plain-text table of one :func:`describe` result, or of several (e.g. one per split) side by side."""
    descs = [description] if isinstance(description, dict) else list(description)
    if not descs:
        return ""
    names = descs[0]["class_names"]
    headers = ["class"] + [f"{d['split'] or d['name']}" for d in descs]
    rows = [
        [name] + [f"{d['label_counts'].get(name, 0)} ({100 * d['label_frequency'].get(name, 0.0):.1f}%)"
                  for d in descs]
        for name in names
    ]
    rows.append(["images"] + [str(d["images"]) for d in descs])
    rows.append(["mean labels/image"] + [f"{d['mean_labels_per_image']:.2f}" for d in descs])
    rows.append(["images without labels"] + [str(d["images_without_labels"]) for d in descs])
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(cells, widths, strict=True)))

    title = f"{descs[0]['name']}: {descs[0]['classes']} classes"
    out = [title, line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows[: len(names)]]
    out.append(line(["-" * w for w in widths]))
    out += [line(r) for r in rows[len(names):]]
    return "\n".join(out)
