"""The dataset manifest: what each downloadable dataset's files are, where they live, how they are checked and
how they unpack (``manifest.json`` beside this module, or a user's own file of the same format; docs/datasets.md).
Parsed into frozen values; every malformed entry is a ValueError naming the file and the place. No torch."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

__all__ = ["DatasetManifest", "ManifestFile", "downloadable_names", "load_manifest", "manifest_entries",
           "shipped_manifest"]

MANIFEST_VERSION = 1
CHECKSUMS = ("md5", "sha256")  # the algorithms a manifest may give, each checked when given
UNPACKERS = ("tar", "zip", "none")


@dataclass(frozen=True)
class ManifestFile:
    """One file of a dataset: where it is, how to check it and how it unpacks.

    Attributes:
        name: the file name (of the archive, or of the file itself when ``unpack`` is ``none``).
        urls: tried in this order.
        size: bytes, or ``None`` when unknown (no size published).
        checksums: ``{"md5": hex, "sha256": hex}``, those published (may be empty: then ``checksum_note``
            says so and how the file is checked instead).
        unpack: ``tar``, ``zip`` or ``none`` (the file is placed as it is).
        into: the folder below ROOT it unpacks into (``""``: ROOT itself).
        check: paths below ROOT that exist once it is unpacked (moved into place last).
        counts: ``{folder below ROOT: at least this many files}`` once it is unpacked.
        licence: the file's licence, in one line.
    """

    name: str
    urls: tuple[str, ...]
    size: int | None
    checksums: dict[str, str]
    unpack: str
    into: str
    check: tuple[str, ...]
    counts: dict[str, int]
    licence: str
    checksum_note: str | None = None


@dataclass(frozen=True)
class DatasetManifest:
    """Everything the downloader and ``datasets verify`` know about one dataset."""

    name: str
    title: str
    licence: str
    files: tuple[ManifestFile, ...]
    splits: dict[str, int] | None  # official image counts per split (None: defined by the dataset's own files)
    annotated: dict[str, int] = field(default_factory=dict)  # images with at least one label, where published
    approximate_splits: dict[str, int] = field(default_factory=dict)
    concepts: tuple[str, ...] = ()  # nuswide: the class list written to Concepts81.txt
    manual: tuple[str, ...] = ()  # steps a person must do (lines; {root} is replaced by the root)
    source: str = ""  # the manifest file it came from


def _fail(source: str, where: str, what: str) -> ValueError:
    return ValueError(f"manifest: {source}: {where}: {what}")


def _parse_file(entry: Any, source: str, where: str) -> ManifestFile:
    if not isinstance(entry, dict):
        raise _fail(source, where, "must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise _fail(source, where, f"'name' must be a plain file name, got {name!r}")
    where = f"{where} ({name})"
    urls = entry.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and "://" in u for u in urls):
        raise _fail(source, where, f"'urls' must be a non-empty list of URLs, got {urls!r}")
    size = entry.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
        raise _fail(source, where, f"'size' must be a number of bytes or null, got {size!r}")
    checksums = {}
    for algorithm in CHECKSUMS:
        value = entry.get(algorithm)
        if value is None:
            continue
        length = hashlib.new(algorithm).digest_size * 2
        if not isinstance(value, str) or len(value) != length or any(c not in "0123456789abcdef" for c in value):
            raise _fail(source, where, f"'{algorithm}' must be {length} lowercase hex digits, got {value!r}")
        checksums[algorithm] = value
    note = entry.get("checksum_note")
    if not checksums and not note:
        raise _fail(source, where, f"give a checksum ({' or '.join(CHECKSUMS)}), or a 'checksum_note' saying "
                                   "why there is none and how the file is checked instead")
    unpack = entry.get("unpack", "none")
    if unpack not in UNPACKERS:
        raise _fail(source, where, f"'unpack' must be one of {', '.join(UNPACKERS)}, got {unpack!r}")
    into = entry.get("into", "")
    check = entry.get("check", [])
    counts = entry.get("counts", {})
    for path in [into, *check, *counts] if isinstance(check, list) and isinstance(counts, dict) else []:
        if not isinstance(path, str) or Path(path).is_absolute() or ".." in Path(path).parts:
            raise _fail(source, where, f"paths must be relative and stay below the root, got {path!r}")
    if not isinstance(check, list) or not check:
        raise _fail(source, where, "'check' must list the paths that exist once the file is unpacked")
    if not isinstance(counts, dict) or not all(isinstance(v, int) and v >= 0 for v in counts.values()):
        raise _fail(source, where, f"'counts' must map folders to numbers of files, got {counts!r}")
    licence = entry.get("licence")
    if not isinstance(licence, str) or not licence:
        raise _fail(source, where, "'licence' must say the file's licence")
    return ManifestFile(name=name, urls=tuple(urls), size=size, checksums=checksums, unpack=unpack, into=into,
                        check=tuple(check), counts=dict(counts), licence=licence, checksum_note=note)


def _counts(value: Any, source: str, where: str) -> dict[str, int]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, int) and v >= 0 for v in value.values()):
        raise _fail(source, where, f"must map split names to numbers of images, got {value!r}")
    return dict(value)


def _parse_manifest(data: Any, source: str) -> dict[str, DatasetManifest]:
    if not isinstance(data, dict) or not isinstance(data.get("datasets"), dict):
        raise _fail(source, "top level", "must be an object with a 'datasets' object")
    version = data.get("manifest_version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION:
        raise _fail(source, "manifest_version", f"this multiguard reads version {MANIFEST_VERSION}, got {version!r}")
    out: dict[str, DatasetManifest] = {}
    for name, entry in data["datasets"].items():
        where = f"datasets.{name}"
        if not isinstance(entry, dict) or not isinstance(entry.get("files"), list) or not entry["files"]:
            raise _fail(source, where, "must be an object with a non-empty 'files' list")
        files = tuple(_parse_file(f, source, f"{where}.files[{i}]") for i, f in enumerate(entry["files"]))
        manual = entry.get("manual", [])
        concepts = entry.get("concepts", [])
        if not isinstance(manual, list) or not all(isinstance(line, str) for line in manual):
            raise _fail(source, f"{where}.manual", "must be a list of lines")
        if not isinstance(concepts, list) or not all(isinstance(c, str) and c for c in concepts):
            raise _fail(source, f"{where}.concepts", "must be a list of class names")
        out[name] = DatasetManifest(
            name=name, title=str(entry.get("title", name)), licence=str(entry.get("licence", "")), files=files,
            splits=_counts(entry.get("splits"), source, f"{where}.splits") or None,
            annotated=_counts(entry.get("annotated"), source, f"{where}.annotated"),
            approximate_splits=_counts(entry.get("approximate_splits"), source, f"{where}.approximate_splits"),
            concepts=tuple(concepts), manual=tuple(manual), source=source,
        )
    return out


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what}: cannot read {path} as JSON: {exc}") from None


def shipped_manifest() -> dict[str, DatasetManifest]:
    """The manifest shipped with the package (``multiguard/data/manifest.json``)."""
    text = resources.files(__package__).joinpath("manifest.json").read_text(encoding="utf-8")
    return _parse_manifest(json.loads(text), "multiguard/data/manifest.json")


def manifest_entries(manifest: str | os.PathLike[str] | None = None) -> dict[str, DatasetManifest]:
    """Every dataset's manifest entry: the shipped ones, replaced by those of the user's file ``manifest``."""
    entries = shipped_manifest()
    if manifest is not None:
        entries.update(_parse_manifest(_read_json(Path(manifest), "manifest"), str(manifest)))
    return entries


def load_manifest(name: str, manifest: str | os.PathLike[str] | None = None) -> DatasetManifest:
    """The manifest entry of dataset ``name``: from the user's file ``manifest`` if it names it, else shipped.

    Raises ValueError naming ``manifest`` for an unreadable or malformed file, and naming ``name`` for a
    dataset neither file knows.
    """
    entries = manifest_entries(manifest)
    if name not in entries:
        raise ValueError(f"name: no download is known for dataset {name!r}; downloadable datasets are "
                         f"{', '.join(sorted(entries))}")
    return entries[name]


def downloadable_names() -> list[str]:
    """The datasets the shipped manifest knows."""
    return sorted(shipped_manifest())
