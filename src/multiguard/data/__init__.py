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

Torch and PIL are used here, but no other room of :mod:`multiguard` but :mod:`multiguard.common` is imported.

Example::

    from multiguard.data import get_dataset, describe, format_description
    train = get_dataset("multidigits", split="train", seed=0)
    print(format_description(describe(train)))
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from multiguard.common.registry import Registry

if TYPE_CHECKING:
    from torch.utils.data import Dataset

__all__ = [
    "DATASETS",
    "DatasetFileError",
    "DatasetInfo",
    "dataset_version",
    "MultiLabelImageDataset",
    "dataset_names",
    "default_splits",
    "describe",
    "format_description",
    "get_dataset",
    "is_composed",
    "load_image",
    "register_dataset",
]

# Importing this package does not import torch (the command line reads the registry for its help): these
# names load their module on first use.
_LAZY = {"DatasetFileError": "._common", "MultiLabelImageDataset": "._common", "load_image": "._common",
         "inspect_images": "._common", "describe": ".summary"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _load_multidigits(root: Any, split: str, image_size: int | None, seed: int, **options: Any) -> Dataset:
    from multiguard.data import multidigits

    return multidigits.load_multidigits(split=split, image_size=image_size, seed=seed, **options)


def _load_voc2007(root: Any, split: str, image_size: int | None, seed: int, **options: Any) -> Dataset:
    from multiguard.data import voc

    return voc.load_voc2007(root, split=split, image_size=image_size, **options)


def _load_coco2014(root: Any, split: str, image_size: int | None, seed: int, **options: Any) -> Dataset:
    from multiguard.data import coco

    return coco.load_coco2014(root, split=split, image_size=image_size)


def _load_nuswide(root: Any, split: str, image_size: int | None, seed: int, **options: Any) -> Dataset:
    from multiguard.data import nuswide

    return nuswide.load_nuswide(root, split=split, image_size=image_size)


def _load_csv(root: Any, split: str, image_size: int | None, seed: int, **options: Any) -> Dataset:
    from multiguard.data import csvfolder

    return csvfolder.load_csv(root, split=split, image_size=image_size)


@dataclass(frozen=True)
class DatasetInfo:
    """One dataset family: everything the library, the command line and its help know about it.

    Attributes:
        name: the name users type (``--dataset NAME``).
        description: one line for ``datasets list`` and help texts (the layout under the root).
        train_split, test_split: the default splits.
        image_size: default side S of the square inputs; ``None``: chosen from the images.
        needs_root: whether the dataset lives in a folder the user gives (``--data-root``).
        options: the names of the family's extra options (``--dataset-option KEY=VALUE``).
        composed: whether the dataset is composed in memory from ``seed`` (as multidigits): then the seed
            and the split sizes (the ``size`` option) decide its images, and a run records them.
        version: the version of the pixels the loader gives for a name, split and options, raised whenever
            a release changes them (``None``: never changed). A run records it in its identity, so that a run
            made on other pixels is not resumed or merged with new samples.
        load: ``load(root, split, image_size, seed, **options) -> Dataset`` (``image_size`` may be
            ``None``: the family's default).
    """

    name: str
    description: str
    train_split: str
    test_split: str
    image_size: int | None
    needs_root: bool
    options: tuple[str, ...]
    load: Callable[..., Dataset] = field(repr=False, compare=False)
    composed: bool = False
    version: int | None = None


#: The one registry of dataset families, each entry's target its :class:`DatasetInfo` (its own typed record): a
#: new family is one module in this package and one :func:`register_dataset` (its loader is imported when first
#: used, so reading the registry needs no torch); get_dataset, `multiguard datasets list` and the command line's
#: help read everything from it.
DATASETS: Registry[DatasetInfo, None] = Registry("dataset", argument="--dataset")


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add the family ``info`` to :data:`DATASETS` under its name (which must be new: ValueError otherwise)."""
    if not isinstance(info, DatasetInfo):
        raise ValueError(f"dataset: register a DatasetInfo, got {type(info).__name__}")
    return DATASETS.register(info.name, info, help=info.description)


for _info_of_family in (
    DatasetInfo(
        "multidigits",
        "embedded: 2x2 grids of 1-4 scikit-learn handwritten digits, 10 classes, grayscale",
        "train", "test", 32, False,
        ("size", "min_digits", "max_digits"), _load_multidigits, composed=True,
        version=2,  # 2: 8-bit pixels (0.2.0); 1: float pixels
    ),
    DatasetInfo(
        "voc2007", "PASCAL VOC 2007, root/VOCdevkit/VOC2007, 20 classes, labels from ImageSets/Main "
        "(Annotations/*.xml not read)",
        "trainval", "test", 224, True, ("difficult_positive",), _load_voc2007,
    ),
    DatasetInfo(
        "coco2014", "MS-COCO 2014, root/annotations + root/{train,val}2014, 80 classes",
        "train", "val", 224, True, (), _load_coco2014,
    ),
    DatasetInfo(
        "nuswide", "NUS-WIDE (ASL release), root/nus_wid_data.csv + Concepts81.txt, 81 classes",
        "train", "val", 224, True, (), _load_nuswide,
    ),
    DatasetInfo(
        "csv", "your own images: root/classes.txt + root/<split>.csv (path,labels joined by |)",
        "train", "test", None, True, (), _load_csv,
    ),
):  # fmt: skip
    register_dataset(_info_of_family)
del _info_of_family


def dataset_names(conjunction: str = "or") -> str:
    """The registered names as running text, e.g. ``'multidigits, voc2007, coco2014, nuswide or csv'`` (for help)."""
    return DATASETS.text(conjunction)


def is_composed(name: str) -> bool:
    """Whether dataset ``name`` is composed in memory from a seed (:attr:`DatasetInfo.composed`); ``False`` for a
    name no family has."""
    return name in DATASETS and DATASETS[name].composed


def dataset_version(name: str) -> int | None:
    """The :attr:`DatasetInfo.version` of dataset ``name`` (``None`` for a name no family has)."""
    return DATASETS[name].version if name in DATASETS else None


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
        image_size: side S of the square images; ``None`` = the family's default: 32 for multidigits,
            224 for voc2007, coco2014, nuswide; for csv, from the images (the larger side of their most
            common size, at most 224; ``dataset.image_size_note`` says which).
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
    if info.needs_root:
        if root is None:
            raise ValueError(f"root: dataset {name!r} needs root, the folder holding it ({info.description})")
        if not os.path.isdir(root):
            from multiguard.data._common import DatasetFileError

            raise DatasetFileError(
                f"dataset folder for {name} not found: expected {os.path.abspath(root)} "
                "(moved? give its new place with --data-root, or root= in Python)"
            )
    return info.load(root, split, image_size, seed, **options)


def format_description(description: dict[str, Any] | list[dict[str, Any]], list_unreadable: bool = True) -> str:
    """A plain-text table of one :func:`describe` result, or of several (e.g. one per split) side by side;
    ``list_unreadable=False``: the unreadable images counted, not listed (``datasets verify`` lists them)."""
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
    notes = {d.get("image_size_note") or d.get("image_size") for d in descs}
    for i, d in enumerate(descs):
        out += _image_lines(d, len(descs) > 1, size_line=i == 0 or len(notes) > 1, list_unreadable=list_unreadable)
    return "\n".join(out)


_MODE_NAMES = {"L": "grayscale", "1": "black and white", "P": "palette", "RGB": "colour", "RGBA": "colour + alpha",
               "LA": "grayscale + alpha", "CMYK": "CMYK"}


def _channels_text(mode: str) -> str:
    from multiguard.data._common import mode_channels

    channels = mode_channels(mode)
    return "? channels" if channels is None else f"{channels} channel{'s' if channels > 1 else ''}"


def _image_lines(d: dict[str, Any], name_split: bool, size_line: bool = True, list_unreadable: bool = True
                 ) -> list[str]:
    """The image-file part of :func:`format_description` for one description."""
    head = f"{d['split'] or d['name']} images" if name_split else "images"
    out = [""]
    left_out = d.get("images_left_out")
    if left_out:
        count = left_out["count"]
        out.append(f"{head}: {count} image{'s' if count != 1 else ''} left out: {left_out['why']}")
    if size_line and d.get("image_size_note"):
        out.append(f"model input: {d['image_size_note']}")
    elif size_line and d.get("image_size"):
        out.append(f"model input: image size {d['image_size']}")
    if "images_checked" not in d:
        return out
    sizes = list(d["image_sizes"].items())
    shown = ", ".join(f"{size} ({count})" for size, count in sizes[:4])
    if len(sizes) > 4:
        shown += f" and {len(sizes) - 4} other sizes ({sum(c for _, c in sizes[4:])})"
    modes = ", ".join(f"{mode}{' ' + _MODE_NAMES[mode] if mode in _MODE_NAMES else ''} "
                      f"[{_channels_text(mode)}] ({count})" for mode, count in d["image_modes"].items())
    bad = d["unreadable_images"]
    out.append(f"{head}: read {d['images_checked'] - len(bad)} of {d['images_checked']}; "
               f"sizes {shown or 'none'}; modes {modes or 'none'}")
    converted = ", ".join(f"{note} ({count})" for note, count in (d.get("image_conversions") or {}).items())
    if converted:  # what loading does to these files besides decoding and resizing: worth a look
        out.append(f"{head}: converted when loaded: {converted}")
    if bad and not list_unreadable:
        out.append(f"{head}: {len(bad)} unreadable (listed above)")
    elif bad:
        out.append(f"{head}: {len(bad)} unreadable:")
        out += [f"  {item['path']}: {item['error']}" for item in bad[:20]]
        if len(bad) > 20:
            out.append(f"  ... and {len(bad) - 20} more (--json lists all)")
    return out
