"""Exceptions raised by the dataset readers: every failure names the files involved and where we looked."""

from __future__ import annotations


class DatasetError(RuntimeError):
    """Base class of every dataset reading, verification or download failure."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """Expected dataset files (or the data directory itself) are missing."""


class DatasetChecksumError(DatasetError):
    """A file or its decoded content does not match the reference checksum (corrupt or different copy)."""


class DatasetFormatError(DatasetError):
    """A file cannot be decoded as the expected format (bad header, truncated, wrong shapes or labels)."""


class DatasetDownloadError(DatasetError):
    """A download failed (offline, HTTP error, checksum mismatch or unwritable destination)."""
