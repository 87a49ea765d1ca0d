"""Fetch a dataset into the layout its loader reads: ``multiguard datasets download NAME --root DIR``.

What is fetched, from where, and how it is checked comes from a manifest: ``manifest.json`` beside this
module (shipped with the package), or a user's own file (``--manifest FILE``, same format; the datasets it
names replace the shipped ones, e.g. to point at an institutional mirror). docs/datasets.md describes the
format and why this module talks HTTP itself (urllib) rather than through pooch or torchvision.

Guarantees of :func:`download_dataset`, file by file:

- every URL of the file is tried in order (official host first, then mirrors); a failure (refused, dead,
  HTTP error, dropped connection that does not resume, wrong size, wrong checksum) is one line of the error
  and the next URL is tried;
- bytes arrive in ``ROOT/.multiguard-downloads/NAME.part``; an interrupted transfer (a dropped connection, a
  killed process) continues from the bytes already there with an HTTP ``Range`` request, in the same run
  (up to ``retries`` times per URL while the transfer makes progress) or in the next one;
- the archive gets its final name only after its size and every published checksum (md5, sha256) match,
  so no half-written or unchecked archive ever sits under its final name;
- it is unpacked into a temporary folder in ROOT and its files then moved into place (the files named in
  the manifest's ``check`` list last), then a marker ``.multiguard-downloads/NAME.done`` is written and the
  archive removed (``keep_archives`` keeps it);
- a file whose marker exists, or whose ``check`` paths and ``counts`` are already in ROOT (unpacked by
  hand), is left alone: a complete dataset downloads nothing.

No network or no reachable host: :class:`DownloadError` listing one line per URL tried and what to do; nothing
is left under a final name (an empty ``.part`` is removed). This module does not import torch.
"""

from __future__ import annotations

import csv
import hashlib
import http.client
import json
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from multiguard.common.files import atomic_write_bytes
from multiguard.data.manifest import (
    DatasetManifest,
    ManifestFile,
    downloadable_names,
    load_manifest,
    manifest_entries,
    shipped_manifest,
)

__all__ = [
    "DOWNLOAD_DIR",
    "DatasetManifest",
    "DownloadError",
    "DownloadResult",
    "ManifestFile",
    "download_dataset",
    "downloadable_names",
    "fetch_file",
    "file_is_unpacked",
    "load_manifest",
    "manifest_entries",
    "shipped_manifest",
]

DOWNLOAD_DIR = ".multiguard-downloads"  # under ROOT: archives in flight (.part), checked archives, .done markers
CHUNK_BYTES = 1 << 20
USER_AGENT = "multiguard-datasets-download (+https://github.com)"
TIMEOUT_S = 60.0
# The NUS-WIDE file names multiguard.data.nuswide reads (repeated here: importing that loader imports torch).
NUSWIDE_CSV, NUSWIDE_CONCEPTS = "nus_wid_data.csv", "Concepts81.txt"


class DownloadError(RuntimeError):
    """A dataset could not be fetched: ``lines`` holds one line per URL tried (and what to do), for printing."""

    def __init__(self, lines: Sequence[str]):
        self.lines = list(lines)
        super().__init__("\n".join(self.lines))


# ---------------------------------------------------------------------------------------- one file


def _short(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    if isinstance(exc, urllib.error.URLError):
        reason = exc.reason
        return str(reason.strerror if isinstance(reason, OSError) and reason.strerror else reason)
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _digests(path: Path, algorithms: Sequence[str]) -> dict[str, str]:
    hashers = {name: hashlib.new(name) for name in algorithms}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK_BYTES), b""):
            for hasher in hashers.values():
                hasher.update(block)
    return {name: hasher.hexdigest() for name, hasher in hashers.items()}


def _check_bytes(path: Path, entry: ManifestFile) -> str | None:
    """Why ``path`` is not the file the manifest describes (size, then each published checksum), or None."""
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"{size} bytes where the manifest says {entry.size}"
    if entry.checksums:
        found = _digests(path, list(entry.checksums))
        for algorithm, expected in entry.checksums.items():
            if found[algorithm] != expected:
                return f"{algorithm} {found[algorithm]} where the manifest says {expected} (corrupt or another file)"
    return None


class _Dropped(ConnectionError):
    """The server closed the connection before the whole file arrived (the part so far is kept)."""


def _transfer(url: str, part: Path, entry: ManifestFile, progress: bool | None, timeout: float) -> None:
    """Append ``url``'s bytes to ``part``, from its current length on (an HTTP Range request when > 0)."""
    start = part.stat().st_size if part.exists() else 0
    if entry.size is not None and start >= entry.size:
        return  # all bytes are here already: the caller checks them
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)  # noqa: S310 (the manifest's http(s) URLs)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and start:  # nothing left to send from there: the part is complete (or too long)
            return
        raise
    with response:
        if start and response.status != 206:  # the server ignored the Range header: start over
            start = 0
        elif start:
            first = response.headers.get("Content-Range", "").removeprefix("bytes ").split("-")[0]
            if first.strip() != str(start):
                got = response.headers.get("Content-Range")
                raise ConnectionError(f"asked for bytes from {start}, got the range {got!r}")
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length and length.isdigit() else entry.size
        from tqdm.auto import tqdm

        with open(part, "ab" if start else "wb") as handle, tqdm(
            total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024, desc=entry.name,
            disable=None if progress is None else not progress, leave=False, file=sys.stderr,
        ) as bar:
            received = start
            read = getattr(response, "read1", response.read)  # what has arrived, not a full block: a kill loses little
            while True:
                try:
                    block = read(CHUNK_BYTES)
                except (TimeoutError, http.client.IncompleteRead, OSError) as exc:
                    where = f"{received} of {expected or '?'} bytes"
                    raise _Dropped(f"connection lost after {where} ({_short(exc)})") from None
                if not block:
                    break
                handle.write(block)
                handle.flush()
                received += len(block)
                bar.update(len(block))
            handle.flush()
            os.fsync(handle.fileno())
        if expected is not None and received < expected:
            raise _Dropped(f"connection closed after {received} of {expected} bytes")


def _fetch_from(url: str, part: Path, entry: ManifestFile, problem_of: Callable[[Path], str | None],
                progress: bool | None, retries: int, timeout: float, log: Callable[[str], None]) -> str | None:
    """Fetch ``entry`` from ``url`` into ``part`` until it checks (None) or this URL fails (the error line).

    A dropped connection resumes while bytes keep arriving (``retries`` times); a checked-and-wrong file that
    was resumed from earlier bytes is fetched once more from zero (the kept bytes may be the bad ones)."""
    resumed_from = part.stat().st_size if part.exists() else 0
    tries = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            _transfer(url, part, entry, progress, timeout)
        except _Dropped as exc:
            after = part.stat().st_size if part.exists() else 0
            tries += 1
            if after > before and tries <= retries:
                log(f"{entry.name}: {exc}; resuming from byte {after}")
                continue
            return f"  {url}: {exc} (kept {after} bytes in {part.name}: the next run resumes them)"
        except (urllib.error.URLError, ConnectionError, OSError, ValueError, http.client.HTTPException) as exc:
            return f"  {url}: {_short(exc)}"
        problem = problem_of(part)
        if problem is None:
            return None
        part.unlink()
        if not resumed_from:
            return f"  {url}: refused: {problem}"
        log(f"{entry.name}: the resumed file is not right ({problem}); fetching it again from {url}")
        resumed_from = 0


def _set_aside(final: Path, part: Path, entry: ManifestFile, problem: str, log: Callable[[str], None]) -> None:
    """Move a wrong ``final`` out of the way: a shorter one (a truncated copy put there by hand) becomes the
    ``.part`` that the transfer resumes with a Range request; any other is deleted, said before it is."""
    size = final.stat().st_size
    kept = part.stat().st_size if part.is_file() else 0
    if entry.size is not None and 0 < size < entry.size and size > kept:
        log(f"{final}: {problem}; keeping its {size} bytes as {part.name} and resuming from there "
            "(it is fetched again from zero if the result does not match)")
        os.replace(final, part)
        return
    log(f"{final}: {problem}; deleting it and fetching it again")
    final.unlink()


def fetch_file(
    entry: ManifestFile,
    folder: str | os.PathLike[str],
    *,
    progress: bool | None = None,
    retries: int = 3,
    timeout: float = TIMEOUT_S,
    log: Callable[[str], None] = print,
    validate: Callable[[Path], str | None] | None = None,
) -> Path:
    """Download ``entry`` into ``folder`` and return the checked file ``folder/entry.name``.

    ``progress``: a tqdm bar on stderr (``None``: only on a terminal). URLs are tried in order; within one
    URL a dropped connection is resumed with a Range request up to ``retries`` times as long as bytes keep
    arriving. The bytes live in ``NAME.part`` until the size and every checksum match (and
    ``validate(path)``, where given, returns None rather than a reason), then are renamed to ``NAME``. A
    ``NAME`` already there that matches is used as it is (an archive fetched by hand can be put there); a
    shorter one (a truncated copy) is kept as ``NAME.part`` and resumed; any other is deleted (said first)
    and fetched again.

    Raises:
        DownloadError: every URL failed; one line per URL and what to do. A non-empty ``NAME.part`` is kept
            so that the next run resumes it.
    """
    folder = Path(folder)
    final, part = folder / entry.name, folder / f"{entry.name}.part"

    def problem_of(path: Path) -> str | None:
        problem = _check_bytes(path, entry)
        return problem if problem is not None or validate is None else validate(path)

    if final.is_file():
        problem = problem_of(final)
        if problem is None:
            return final
        _set_aside(final, part, entry, problem, log)
    folder.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []

    def note(line: str, number: int) -> None:  # a failed URL, said as it happens where another one follows
        if number < len(entry.urls):
            log(f"{line.strip()}; trying the next URL")

    try:
        for number, url in enumerate(entry.urls, start=1):
            failure = _fetch_from(url, part, entry, problem_of, progress, retries, timeout, log)
            if failure is None:
                os.replace(part, final)
                return final
            lines.append(failure)
            note(failure, number)
    finally:
        if part.exists() and part.stat().st_size == 0:
            part.unlink()
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    raise DownloadError([f"{entry.name}: could not be fetched from any of its {len(entry.urls)} URLs:", *lines])


# -------------------------------------------------------------------------------------------- unpack


def _count_files(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for item in entries if item.is_file())
    except (FileNotFoundError, NotADirectoryError):
        return 0


def file_is_unpacked(entry: ManifestFile, root: str | os.PathLike[str]) -> bool:
    """Whether ``entry``'s content is in ``root``: its ``.done`` marker, or its ``check`` paths and ``counts``."""
    root = Path(root)
    if (root / DOWNLOAD_DIR / f"{entry.name}.done").is_file():
        return True
    return all((root / path).exists() for path in entry.check) and all(
        _count_files(root / folder) >= count for folder, count in entry.counts.items())


def _safe_members(names: Sequence[str], archive: Path) -> None:
    for name in names:
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts:
            raise ValueError(f"{archive}: refusing to unpack {name!r}, which points outside the folder")


def _extract(archive: Path, kind: str, staging: Path) -> None:
    if kind == "tar":
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            _safe_members([m.name for m in members], archive)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(staging, filter="data")
            else:  # Python before 3.11.4: the names were checked above; skip links and devices
                tar.extractall(staging, members=[m for m in members if m.isfile() or m.isdir()])
    elif kind == "zip":
        with zipfile.ZipFile(archive) as zipped:
            _safe_members(zipped.namelist(), archive)
            zipped.extractall(staging)
    else:
        shutil.copyfile(archive, staging / archive.name)


def _unpack(archive: Path, entry: ManifestFile, root: Path, log: Callable[[str], None]) -> None:
    """Unpack ``archive`` into a temporary folder in ``root``, then move its files into ``root/entry.into`` with
    the ``check`` paths last, so that those exist only once everything else is in place."""
    staging = root / f".{entry.name}.unpack.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        log(f"{entry.name}: unpacking into {root / entry.into if entry.into else root}")
        _extract(archive, entry.unpack, staging)
        target = root / entry.into
        last = {os.path.normpath(os.path.relpath(root / p, target)) for p in entry.check}
        files = sorted(p for p in staging.rglob("*") if p.is_file())
        moves = sorted(files, key=lambda p: os.path.normpath(str(p.relative_to(staging))) in last)
        for path in moves:
            dest = target / path.relative_to(staging)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        for folder in sorted((p for p in staging.rglob("*") if p.is_dir()), reverse=True):
            (target / folder.relative_to(staging)).mkdir(parents=True, exist_ok=True)  # empty folders too
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# ------------------------------------------------------------------------------------------- dataset


@dataclass
class DownloadResult:
    """What :func:`download_dataset` did."""

    name: str
    root: Path
    fetched: list[str]  # files downloaded (or found checked in the download folder) and unpacked now
    present: list[str]  # files found already unpacked, left alone
    manual: list[str] = field(default_factory=list)  # steps a person still has to do ({root} filled in)

    @property
    def complete(self) -> bool:
        """Whether every file is in place and nothing is left to do by hand."""
        return not self.manual


def _csv_header_problem(path: Path) -> str | None:
    """Why ``path`` is not a label csv with path, label and split columns (e.g. an HTML error page), or None."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            header = [name.strip().lower() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        return f"not a csv file ({_short(exc)})"
    for keys in (("path", "file", "image"), ("label",), ("split",)):
        if not any(key in name for name in header for key in keys):
            return f"not the label csv: no column whose name contains {keys[0]!r} in its header {header[:6]}"
    return None


def _missing_images(name: str, root: Path) -> str | None:
    """For a dataset with steps done by hand: what is still missing (one line), or None when nothing is."""
    if name != "nuswide":
        return "the files fetched by hand are not checked for this dataset"
    with open(root / NUSWIDE_CSV, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [name.strip().lower() for name in next(reader, [])]
        column = next(i for key in ("path", "file", "image") for i, name in enumerate(header) if key in name)
        paths = [row[column].strip() for row in reader if row]
    missing = sum(1 for p in paths if not (root / p).is_file())
    return f"{missing} of the {len(paths)} images listed in {root / NUSWIDE_CSV} are not in {root}" if missing else None


def download_dataset(
    name: str,
    root: str | os.PathLike[str],
    *,
    manifest: str | os.PathLike[str] | None = None,
    progress: bool | None = None,
    retries: int = 3,
    timeout: float = TIMEOUT_S,
    keep_archives: bool = False,
    log: Callable[[str], None] = print,
) -> DownloadResult:
    """Fetch and unpack every file of dataset ``name`` into ``root``, in the layout its loader reads.

    Files already unpacked (see :func:`file_is_unpacked`) are left alone. See the module docstring for the
    guarantees. For nuswide the image archive cannot be fetched by a script: the result's ``manual`` lists
    exactly what to fetch by hand and where to put it (empty once the images listed by the csv are there).

    Raises:
        ValueError: an unknown dataset or a bad manifest (naming it), before anything is written.
        DownloadError: a file could not be fetched (one line per URL tried); what was unpacked before stays.
    """
    entry = load_manifest(name, manifest)
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise ValueError(f"root: {root} exists and is not a folder")
    fetched, present = [], []
    for item in entry.files:
        if file_is_unpacked(item, root):
            present.append(item.name)
            continue
        root.mkdir(parents=True, exist_ok=True)
        validate = _csv_header_problem if item.unpack == "none" and item.name.endswith(".csv") else None
        try:
            archive = fetch_file(item, root / DOWNLOAD_DIR, progress=progress, retries=retries, timeout=timeout,
                                 log=log, validate=validate)
        except DownloadError as exc:
            raise DownloadError([*exc.lines, f"what to do: {_advice(name, exc.lines)}"]) from None
        _unpack(archive, item, root, log)
        digests = {"size": archive.stat().st_size, **item.checksums}
        if not keep_archives:
            archive.unlink()
        marker = (json.dumps(digests, sort_keys=True) + "\n").encode()
        atomic_write_bytes(root / DOWNLOAD_DIR / f"{item.name}.done", marker)
        fetched.append(item.name)
    manual: list[str] = []
    if entry.concepts:
        if not (root / NUSWIDE_CONCEPTS).exists():
            atomic_write_bytes(root / NUSWIDE_CONCEPTS, ("\n".join(entry.concepts) + "\n").encode())
            log(f"{NUSWIDE_CONCEPTS}: wrote the {len(entry.concepts)} class names (the manifest's concept list)")
    if entry.manual:
        missing = _missing_images(name, root)
        if missing:
            log(f"{name}: {missing}")
            manual = [line.replace("{root}", str(root)) for line in entry.manual]
    return DownloadResult(name=name, root=root, fetched=fetched, present=present, manual=manual)


def _advice(name: str, lines: Sequence[str]) -> str:
    """What to do after every URL failed: the network advice, unless every URL answered with wrong bytes."""
    urls = [line for line in lines[1:] if line.startswith("  ")]
    if urls and all(": refused: " in line for line in urls):
        return (f"every URL answered, with bytes that are not the file the manifest describes (a corrupt or "
                f"changed mirror, not the network): fetch it by hand from another source into ROOT/{DOWNLOAD_DIR}/ "
                f"(it is checked there) and run `multiguard datasets download {name} --root ROOT` again, or name a "
                "mirror of your own: --manifest FILE (docs/datasets.md)")
    return offline_advice(name)


def offline_advice(name: str) -> str:
    """What to do when no URL of a file could be reached (the last line of the error)."""
    return (f"check the network (or a proxy: https_proxy), or fetch the files by hand into "
            f"ROOT/{DOWNLOAD_DIR}/ and run `multiguard datasets download {name} --root ROOT` again; a mirror "
            "of your own: --manifest FILE (docs/datasets.md)")
