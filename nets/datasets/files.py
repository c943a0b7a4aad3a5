"""Locating the data directory, hashing, and atomic checksum-verified downloads."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from nets.datasets.errors import DatasetDownloadError, DatasetNotFoundError

DATA_DIR_ENV = "NR_DATA_DIR"
"""Environment variable holding the data directory when no ``data_dir`` / ``--data-dir`` is given."""


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None, *, must_exist: bool = True) -> Path:
    """Return the data directory: ``data_dir`` if given, else ``$NR_DATA_DIR``; never a hard-coded path."""
    if data_dir is None:
        env_value = os.environ.get(DATA_DIR_ENV, "").strip()
        if not env_value:
            raise DatasetNotFoundError(
                f"no data directory given: pass data_dir (CLI: --data-dir DIR) or set the {DATA_DIR_ENV} "
                "environment variable"
            )
        data_dir = env_value
    path = Path(data_dir).expanduser()
    if must_exist and not path.is_dir():
        raise DatasetNotFoundError(f"data directory {str(path)!r} does not exist or is not a directory")
    return path


def md5_hex(data: bytes) -> str:
    """MD5 hex digest of ``data`` (integrity check against published file checksums, not security)."""
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_hex(data: bytes) -> str:
    """SHA-256 hex digest of ``data``."""
    return hashlib.sha256(data).hexdigest()


def download_file(
    urls: Sequence[str], destination: Path, *, md5: str | None, timeout_s: float = 60.0, progress: bool = True
) -> Path:
    """Download the first URL that works to ``destination``, verified and written atomically.

    Each candidate is streamed through the project's atomic writer (:func:`attacks.table.atomic_write`);
    only when its MD5 equals ``md5`` (if given) is it moved into place, so an interrupted or corrupt download
    never leaves a half-written file under the final name. Raises :class:`DatasetDownloadError` listing every
    attempt.
    """
    from storage.atomic import atomic_write

    try:
        destination.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise DatasetDownloadError(
            f"cannot create download directory {str(destination.parent)!r}: {error}"
        ) from error
    attempts: list[str] = []
    for url in urls:

        def fetch(out, url=url) -> None:
            hasher = hashlib.md5(usedforsecurity=False)
            with urllib.request.urlopen(url, timeout=timeout_s) as response:
                total = response.headers.get("Content-Length") if hasattr(response, "headers") else None
                bar = _progress_bar(destination.name, int(total) if total else None, progress)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    hasher.update(chunk)
                    bar.update(len(chunk))
                bar.close()
            if md5 is not None and hasher.hexdigest() != md5:
                raise _ChecksumMismatch(f"MD5 {hasher.hexdigest()} != expected {md5}")

        try:
            atomic_write(destination, fetch)
            return destination
        except _ChecksumMismatch as mismatch:
            attempts.append(f"{url}: {mismatch}")
        except (urllib.error.URLError, OSError, ValueError) as error:
            attempts.append(f"{url}: {error}")
    raise DatasetDownloadError(
        f"could not download {destination.name} to {str(destination.parent)!r} (offline?). Attempts:\n  "
        + "\n  ".join(attempts)
        + "\nPlace the file there by hand and retry without download."
    )


class _ChecksumMismatch(Exception):
    """A downloaded file's checksum differs from the reference (the attempt is discarded)."""


def _progress_bar(name: str, total: int | None, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(
        total=total, unit="B", unit_scale=True, desc=f"download {name}", disable=not enabled, leave=False
    )
