"""Describe a dataset split: its labels and, opening every file, its images (see :func:`describe`)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from multiguard.data._common import inspect_images

__all__ = ["describe"]


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


def _image_check(dataset: Dataset, progress: bool | None) -> dict[str, Any]:
    """:func:`inspect_images` of the files behind ``dataset`` (a Subset: only its images); tensors: their shape."""
    base, indices = dataset, None
    while isinstance(base, Subset):
        inner = list(base.indices)
        indices = inner if indices is None else [inner[i] for i in indices]
        base = base.dataset
    paths = getattr(base, "paths", None)
    if paths is not None:
        paths = list(paths) if indices is None else [base.paths[i] for i in indices]
        return inspect_images(paths, progress=progress)
    images = getattr(base, "images", None)
    if isinstance(images, torch.Tensor):  # in memory: nothing to open; every image has the tensor's shape
        count = len(dataset)
        channels, height, width = images.shape[1:]
        return {"checked": count, "unreadable": [], "sizes": {f"{width}x{height}": count} if count else {},
                "modes": {("L" if channels == 1 else "RGB"): count} if count else {}, "conversions": {}}
    return {"checked": 0, "unreadable": [], "sizes": {}, "modes": {}, "conversions": {}}


def _left_out(base: Dataset) -> dict[str, Any] | None:
    """Images the dataset's files list but the split leaves out, and why (COCO: images without annotations)."""
    skipped = getattr(base, "skipped_unannotated", None)
    if not skipped:
        return None
    return {"count": int(skipped), "why": "listed in the annotation file without any annotation (no label to learn)"}


def describe(dataset: Dataset, check_images: bool = True, progress: bool | None = None) -> dict[str, Any]:
    """Summary of a dataset's labels and, with ``check_images``, of its image files.

    Labels are read without loading images when the dataset has ``labels``. With
    ``check_images`` every image file is opened and decoded (a tqdm bar for 1000 images or more
    on a terminal; ``progress`` forces it on or off), so that a missing or corrupt file shows up
    here rather than in the middle of training.

    Returns a dict with keys ``name``, ``split``, ``images``, ``classes``,
    ``class_names``, ``label_counts`` ({class: images holding it}),
    ``label_frequency`` ({class: fraction of images holding it}),
    ``mean_labels_per_image``, ``images_without_labels``, ``images_left_out`` (files the layout lists that
    the split leaves out, e.g. COCO images without any annotation: ``{"count", "why"}``, or ``None``),
    ``image_size`` (the side the images are
    resized to) and ``image_size_note`` (why, where the size was chosen from the images); with
    ``check_images`` also ``images_checked``, ``unreadable_images`` (a list of ``{"path", "error"}``),
    ``image_sizes`` ({"WxH": count}, most common first) and ``image_modes`` ({PIL mode: count},
    e.g. RGB, L for grayscale; every image is converted to ``in_channels`` when loaded) and
    ``image_conversions`` ({what loading changes: count}, e.g. 16-bit values scaled, transparency composited on
    white, EXIF rotation: see :func:`multiguard.data._common.conversion_notes`).
    Format it with :func:`format_description`.
    """
    labels, names = _labels_of(dataset)
    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    n = labels.shape[0]
    counts = labels.gt(0).sum(0).tolist() if n else [0] * len(names)
    per_image = labels.gt(0).sum(1)
    description: dict[str, Any] = {
        "name": getattr(base, "name", type(base).__name__),
        "split": getattr(base, "split", None),
        "images": n,
        "classes": len(names),
        "class_names": names,
        "label_counts": dict(zip(names, (int(c) for c in counts), strict=True)),
        "label_frequency": {name: (c / n if n else 0.0) for name, c in zip(names, counts, strict=True)},
        "mean_labels_per_image": float(per_image.float().mean()) if n else 0.0,
        "images_without_labels": int((per_image == 0).sum()) if n else 0,
        "images_left_out": _left_out(base),
        "image_size": getattr(base, "image_size", None),
        "image_size_note": getattr(base, "image_size_note", None),
    }
    if check_images:
        check = _image_check(dataset, progress)
        description.update(images_checked=check["checked"], unreadable_images=check["unreadable"],
                           image_sizes=check["sizes"], image_modes=check["modes"],
                           image_conversions=check["conversions"])
    return description
