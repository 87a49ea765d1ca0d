"""Check a dataset folder before training on it: ``multiguard datasets verify NAME --root DIR``.

For each split, :func:`verify_dataset` loads it with the family's loader (every label file the loader needs
present and parseable), compares its image count with the official one from the manifest
(:mod:`multiguard.data.download`; ``--manifest FILE`` gives other counts), opens and decodes every image
(:func:`multiguard.data.describe`), and keeps the label statistics ``datasets describe`` prints. Every
problem is one line naming the split and the file: a missing image, a corrupt image, a wrong split count.

Official counts: VOC 2007 trainval 5,011 and test 4,952 (train 2,501, val 2,510); COCO 2014 train 82,783
and val 40,504 images in the annotation files and folders, of which 82,081 and 40,137 carry at least one
label (the loader skips the others: the paper's 82,081 training images are these); NUS-WIDE: the ASL split
is defined by its csv (about 154,000 train and 66,000 val rows), so its count is the csv's and every image it
lists must be there.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multiguard.data import DATASETS, format_description, get_dataset
from multiguard.data.download import DatasetManifest, _count_files, manifest_entries

__all__ = ["SplitCheck", "VerifyReport", "verify_dataset"]


@dataclass
class SplitCheck:
    """What :func:`verify_dataset` found in one split."""

    split: str
    images: int | None = None  # images the split lists (None: it could not be loaded)
    expected: int | None = None  # the official count, where there is one
    missing: list[str] = field(default_factory=list)  # image files that are not there
    corrupt: list[dict[str, str]] = field(default_factory=list)  # {"path", "error"}: there, but not decodable
    problems: list[str] = field(default_factory=list)  # one line each, naming the split and the file
    notes: list[str] = field(default_factory=list)  # facts that are not problems
    description: dict[str, Any] | None = None  # :func:`multiguard.data.describe` of the split

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass
class VerifyReport:
    """The result of :func:`verify_dataset`: ``ok`` when no split has a problem."""

    name: str
    root: Path
    splits: list[SplitCheck]

    @property
    def ok(self) -> bool:
        return all(check.ok for check in self.splits)

    @property
    def problems(self) -> list[str]:
        return [line for check in self.splits for line in check.problems]

    def text(self, max_listed: int = 20) -> str:
        """The report as printed by ``datasets verify``: per split its count, its problems counted by kind (every
        problem but the image ones in full; the first ``max_listed`` missing and the first ``max_listed`` corrupt
        images in full, then how many more: ``--json`` lists them all) and the label statistics of the loadable
        splits."""
        out = [f"{self.name} in {self.root}:"]
        for check in self.splits:
            out += _split_text(check, max_listed)
        described = [check.description for check in self.splits if check.description is not None]
        if described:
            out += ["", format_description(described, list_unreadable=False)]
        out.append("")
        out.append("verify: ok" if self.ok else f"verify: {len(self.problems)} problem(s) found")
        return "\n".join(out)


def _split_text(check: SplitCheck, max_listed: int) -> list[str]:
    """The lines of one split in :meth:`VerifyReport.text`."""
    count = "not loadable" if check.images is None else f"{check.images} images"
    if check.expected is not None:
        count += f" (official: {check.expected})"
    kinds = [(len(check.missing), "missing"), (len(check.corrupt), "corrupt (not decodable)")]
    counted = ", ".join(f"{number} {kind} image{'s' if number != 1 else ''}" for number, kind in kinds if number)
    state = "ok" if check.ok else f"{len(check.problems)} problem(s)" + (f": {counted}" if counted else "")
    out = [f"  {check.split}: {count}; {state}"]
    out += [f"    {line}" for line in check.notes]
    image_lines = {f"{check.split}: missing image: {path}" for path in check.missing}
    image_lines |= {f"{check.split}: corrupt image: {item['path']}: {item['error']}" for item in check.corrupt}
    out += [f"    {line}" for line in check.problems if line not in image_lines]
    for number, kind, lines in ((len(check.corrupt), "corrupt", [f"{check.split}: corrupt image: {item['path']}: "
                                                                 f"{item['error']}" for item in check.corrupt]),
                                (len(check.missing), "missing", [f"{check.split}: missing image: {path}"
                                                                 for path in check.missing])):
        out += [f"    {line}" for line in lines[:max_listed]]
        if number > max_listed:
            out.append(f"    ... and {number - max_listed} more {kind} images (datasets verify --json lists "
                       "every one)")
    return out


def _expected(manifest: DatasetManifest, name: str, split: str) -> int | None:
    if name == "coco2014":  # the loader's count is that of the annotated images
        return manifest.annotated.get("val" if split == "test" else split)
    return (manifest.splits or {}).get(split)


def _check_split(name: str, root: Path, split: str, manifest: DatasetManifest, check_images: bool,
                 progress: bool | None) -> SplitCheck:
    from multiguard.data._common import DatasetFileError
    from multiguard.data.summary import describe

    check = SplitCheck(split=split)
    try:
        dataset = get_dataset(name, root=root, split=split)
    except (DatasetFileError, ValueError, OSError) as exc:
        check.problems.append(f"{split}: cannot be loaded: {exc}")
        return check
    check.images = len(dataset)
    check.expected = _expected(manifest, name, split)
    if check.expected is not None and check.images != check.expected:
        what = "annotated images" if name == "coco2014" else "images"
        check.problems.append(f"{split}: wrong split count: {check.images} {what} where the official count is "
                              f"{check.expected}")
    if name == "coco2014":
        folder_split = "val" if split == "test" else split
        total = check.images + getattr(dataset, "skipped_unannotated", 0)
        official = (manifest.splits or {}).get(folder_split)
        check.notes.append(f"{total} images in instances_{folder_split}2014.json, "
                           f"{total - check.images} without any label (skipped)")
        if official is not None and total != official:
            check.problems.append(f"{split}: wrong split count: instances_{folder_split}2014.json lists {total} "
                                  f"images where the official count is {official}")
        in_folder = _count_files(root / f"{folder_split}2014")
        if official is not None and in_folder != official:
            check.problems.append(f"{split}: wrong split count: {root / f'{folder_split}2014'} holds {in_folder} "
                                  f"files where the official count is {official}")
    if name == "nuswide" and manifest.approximate_splits.get(split):
        check.notes.append(f"the ASL split lists {check.images} {split} images (published: about "
                           f"{manifest.approximate_splits[split]:,})")
    description = describe(dataset, check_images=check_images, progress=progress)
    check.description = description
    for item in description.get("unreadable_images", []):
        if item["error"] == "file not found":
            check.missing.append(item["path"])
            check.problems.append(f"{split}: missing image: {item['path']}")
        else:
            check.corrupt.append(item)
            check.problems.append(f"{split}: corrupt image: {item['path']}: {item['error']}")
    return check


def verify_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    splits: Sequence[str] | None = None,
    manifest: str | os.PathLike[str] | None = None,
    check_images: bool = True,
    progress: bool | None = None,
) -> VerifyReport:
    """Check every split of dataset ``name`` in ``root`` (see the module docstring); never raises for a
    problem in the data, which is reported instead.

    Args:
        splits: the splits to check; ``None``: the family's training and test splits.
        manifest: a user manifest whose official counts replace the shipped ones for the datasets it names.
        check_images: open and decode every image (``False``: the images are not looked at, not even
            whether they exist; only the label files and the counts are checked).

    Raises:
        ValueError: an unknown dataset (or one without a folder), or a bad manifest (naming it). A dataset
            without a manifest entry (``csv``) has no official counts: its files and images are checked.
    """
    if name not in DATASETS or not DATASETS[name].needs_root:
        known = sorted(n for n, info in DATASETS.items() if info.needs_root)
        raise ValueError(f"name: verify checks a dataset folder: one of {', '.join(known)}, got {name!r}")
    entry = manifest_entries(manifest).get(name) or DatasetManifest(name, name, "", (), None, source="none")
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"root: {root} is not a folder (fetch the data first: multiguard datasets download "
                         f"{name} --root {root})")
    info = DATASETS[name]
    chosen = list(splits) if splits else [info.train_split, info.test_split]
    return VerifyReport(name=name, root=root,
                        splits=[_check_split(name, root, split, entry, check_images, progress) for split in chosen])
