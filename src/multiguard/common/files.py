"""Writing files so that a reader never sees half of one: the one atomic writer every output goes through.

A file is written to a temporary name in its own folder (``.<name>.<random>.tmp``), flushed to disk
(``fsync``) and renamed over the target (``os.replace``, atomic on POSIX). Readers see the old file or the
whole new one, also after ``kill -9`` or a full disk. New files get the mode ``0666 & ~umask`` (0644 under
the usual umask 022), like any file a program creates; ``tempfile.mkstemp`` alone would make them 0600.
No torch: checkpoints are serialised by the caller and handed over as bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
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
    "exclusive_lock",
    "remove_abandoned_staging",
    "staging_folder",
    "staging_folder_name",
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


# --------------------------------------------------------------------------- locks and staging folders


@contextlib.contextmanager
def exclusive_lock(path: str | os.PathLike[str], what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if missing) for the duration of the block.

    The lock is advisory (``fcntl.flock``): the operating system releases it when its holder exits, also after
    ``kill -9``, so a lock is never left behind (the file is removed when the block ends; one a killed holder
    left is simply locked again). The holder's process id and host are written into the file.
    If another process holds it, raises a one-line ValueError: ``"<what>: another process (pid N on HOST) is
    writing it; ..."``. Where ``fcntl`` does not exist (Windows) the block runs without a lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    for _ in range(10):  # the file may be removed by its last holder between our open and our lock: open again
        fd = os.open(path, os.O_RDWR | os.O_CREAT, file_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ValueError(f"{what}: another process ({holder}) is writing it; wait for it to finish or stop "
                             "it (two processes writing one folder would both do the same work)") from None
        try:
            current = os.stat(path).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    else:  # pragma: no cover - ten holders in a row removed it under us
        raise ValueError(f"{what}: its lock file {path} keeps changing; is another process starting?")
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # still held: a process that opened it now finds it gone and opens a new one
        os.close(fd)  # releases the lock


STALE_STAGING_SECONDS = 24 * 3600.0  # a staging folder of another host (whose process cannot be asked) this old


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"


def staging_folder_name(place: str | os.PathLike[str], pid: int | None = None) -> str:
    """The name prefix of a staging folder for ``place`` made by process ``pid`` (this one by default) here.

    ``.<name>.<host>-<pid>.`` followed by a random part and ``.tmp``: the host and process id let a later
    process remove the folders of processes that are gone (:func:`remove_abandoned_staging`).
    """
    return f".{Path(place).name}.{_host_tag()}-{os.getpid() if pid is None else pid}.x{TMP_SUFFIX}"


def staging_folder(place: str | os.PathLike[str]) -> Path:
    """A new, empty hidden folder beside ``place`` to build its contents in before a rename (mode as mkdir's)."""
    place = Path(place)
    prefix = staging_folder_name(place).removesuffix(f"x{TMP_SUFFIX}")
    staging = Path(tempfile.mkdtemp(prefix=prefix, suffix=TMP_SUFFIX, dir=place.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)  # a folder as mkdir makes it, not mkdtemp's 0700
    return staging


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OSError):  # another user's live process, or no way to ask
        return False
    return False


def remove_abandoned_staging(place: str | os.PathLike[str]) -> list[Path]:
    """Remove the staging folders of ``place`` whose process is gone (a killed report); returns them.

    A folder made on this host is removed as soon as its process no longer exists; one from another host
    (a shared file system) or in the older name format without a process id only after
    :data:`STALE_STAGING_SECONDS`. A folder of a live process is never touched.
    """
    place = Path(place)
    pattern = re.compile(rf"^\.{re.escape(place.name)}\.(?:(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.)?.*"
                         rf"{re.escape(TMP_SUFFIX)}$")
    removed = []
    for candidate in place.parent.glob(f".{place.name}.*{TMP_SUFFIX}"):
        match = pattern.match(candidate.name)
        if match is None or not candidate.is_dir():
            continue
        with contextlib.suppress(OSError):
            if match["pid"] is not None and match["host"] == _host_tag():
                gone = _process_is_gone(int(match["pid"]))
            else:
                gone = time.time() - candidate.stat().st_mtime > STALE_STAGING_SECONDS
            if gone:
                shutil.rmtree(candidate, ignore_errors=True)
                removed.append(candidate)
    return removed
