"""Atomic file writes: the one way this project writes a result, checkpoint or dataset file."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["DiskFullError", "atomic_write", "atomic_write_text", "free_bytes", "require_free_space"]

# errno values that mean "no room": no space left on device, disk quota exceeded
_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class DiskFullError(OSError):
    """A write that failed because the disk (or quota) is full; names the file and the room left."""


def free_bytes(folder: str | os.PathLike[str]) -> int | None:
    """Bytes free to this user on the disk holding ``folder`` (or its nearest existing parent), or None."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def _size(count: int | None) -> str:
    return "unknown" if count is None else f"{count / 2**20:.1f} MiB"


def require_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raise :class:`DiskFullError` before a long computation whose result (``needed`` bytes) cannot be
    written to ``folder``."""
    free = free_bytes(folder)
    if free is not None and free < needed:
        raise DiskFullError(errno.ENOSPC, f"not enough free disk space for {what} in {str(folder)!r}: needs "
                            f"about {_size(needed)}, {_size(free)} free; free some space or write elsewhere")


def _disk_full(error: BaseException, path: Path) -> DiskFullError | None:
    """The error a failed write becomes when the disk is full: ``OSError`` ENOSPC/EDQUOT, or torch's
    serializer's ``RuntimeError`` (``[enforce fail at inline_container.cc] ... file write failed``), which
    carries no errno, when the disk holding ``path`` has (almost) no room left."""
    full = isinstance(error, OSError) and error.errno in _FULL
    if isinstance(error, RuntimeError) and "write failed" in str(error):
        free = free_bytes(path.parent)
        full = free is not None and free < 2**20
    if not full:
        return None
    return DiskFullError(errno.ENOSPC, f"no space left on the disk to write {str(path)!r} "
                         f"({_size(free_bytes(path.parent))} free); free some space or write elsewhere")


def _file_mode() -> int:
    """Mode of a newly created regular file under the current umask (0o644 under the usual 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], object]) -> Path:
    """The project's one atomic writer: ``write(handle)`` fills a temporary binary file in the same folder,
    which is flushed, fsynced, given the mode a plain ``open`` would give (0644 under umask 022, not
    ``mkstemp``'s 0600) and moved onto ``path`` with ``os.replace``. An interrupted write (an exception,
    Ctrl-C) leaves the previous ``path`` untouched and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, _file_mode())
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        full = _disk_full(error, path)
        if full is not None:
            raise full from error
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically with :func:`atomic_write`."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda file: file.write(data))
