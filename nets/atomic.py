"""Atomic file writes: the one way this project writes a result, checkpoint or dataset file."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_write", "atomic_write_text"]


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
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically with :func:`atomic_write`."""
    data = text.encode("utf-8")
    return atomic_write(path, lambda file: file.write(data))
