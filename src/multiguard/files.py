"""Writing files so that a reader never sees half of one: the one atomic writer every output goes through.

A file is written to a temporary name in its own folder (``.<name>.<random>.tmp``), flushed to disk
(``fsync``) and renamed over the target (``os.replace``, atomic on POSIX). Readers see the old file or the
whole new one, also after ``kill -9`` or a full disk. New files get the mode ``0666 & ~umask`` (0644 under
the usual umask 022), like any file a program creates; ``tempfile.mkstemp`` alone would make them 0600.
No torch: checkpoints are serialised by the caller and handed over as bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "TMP_SUFFIX",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_npz",
    "check_output_file",
    "create_exclusive_json",
    "file_mode",
    "file_sha256",
    "temporary_path",
]

TMP_SUFFIX = ".tmp"


def file_mode() -> int:
    """Permissions of a new file under the process's current umask (read without changing it for long)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def temporary_path(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """An open descriptor and name of a new temporary file beside ``path``, with the normal file mode."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    return fd, Path(tmp)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); nothing partial is left."""
    path = Path(path)
    fd, tmp = temporary_path(path)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_write_npz(path: str | os.PathLike[str], **arrays: Any) -> None:
    """Write NumPy arrays as an uncompressed ``.npz`` to ``path`` atomically."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(path, buffer.getvalue())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def create_exclusive_json(path: str | os.PathLike[str], obj: Any) -> bool:
    """Create ``path`` holding ``obj`` as JSON unless it exists; True if this call created it.

    Atomic across processes: the whole file is written under a temporary name, then hard-linked to ``path``
    (which fails if ``path`` exists, so the first writer wins); file systems without hard links fall back to
    an existence check and a rename.
    """
    path = Path(path)
    fd, tmp = temporary_path(path)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # file systems without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
            return True
    finally:
        tmp.unlink(missing_ok=True)


def check_output_file(out: str | os.PathLike[str] | None, *, resume: bool, overwrite: bool,
                      example: str) -> Path | None:
    """The file a training writes, checked before any work: never a folder, and never an existing file
    unless the caller continues it (``resume``) or replaces it on purpose (``overwrite``). ``example`` is the
    file name the message suggests inside a folder. Returns ``out`` as a path (``None`` stays ``None``)."""
    path = Path(out) if out is not None else None
    if resume and path is None:
        raise ValueError("resume: needs out, the checkpoint to continue")
    if path is not None and path.is_dir():
        raise ValueError(f"out: {path} is a folder; give the file to write, e.g. {path / example}")
    if path is not None and path.exists() and not resume and not overwrite:  # never lose a trained model
        raise ValueError(f"out: {path} already exists; continue training it with --resume, or replace it with "
                         "--overwrite")
    return path
