"""MNIST from the four standard gzipped IDX files, verified by file MD5.

Files are looked up in ``DATA_DIR`` and then in ``DATA_DIR/MNIST/raw`` (the torchvision layout).
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from nets.datasets.dataset import MNIST_INFO, ImageDataset
from nets.datasets.errors import DatasetChecksumError, DatasetFormatError, DatasetNotFoundError
from nets.datasets.files import download_file, md5_hex, resolve_data_dir

MNIST_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
"""split -> (images file, labels file)."""

MNIST_MD5: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
"""Official MD5 of each distribution file (read at call time, so tests may monkeypatch it)."""

MNIST_SUBDIRS: tuple[str, ...] = (".", os.path.join("MNIST", "raw"))
"""Where, relative to the data directory, the files are searched (first hit wins)."""

MNIST_DOWNLOAD_SUBDIR = os.path.join("MNIST", "raw")

MNIST_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
"""Base URLs tried in order by ``download=True``."""

_IDX_UBYTE = 0x08


def read_idx(raw: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode a raw IDX file of unsigned bytes: magic 0x0000 08 ndim, big-endian int32 dims, data."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DatasetFormatError(f"{source}: not an IDX file (bad magic number)")
    if raw[2] != _IDX_UBYTE:
        raise DatasetFormatError(f"{source}: IDX element type 0x{raw[2]:02x}, expected unsigned byte (0x08)")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DatasetFormatError(f"{source}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header_size != expected:
        raise DatasetFormatError(
            f"{source}: IDX header announces shape {shape} ({expected} bytes) but {len(raw) - header_size} "
            "bytes of data follow (truncated or corrupt)"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(shape)


def find_mnist_files(data_dir: Path, split: str) -> dict[str, Path | None]:
    """Map each expected file of ``split`` to its path (first of :data:`MNIST_SUBDIRS`), or None if absent."""
    found: dict[str, Path | None] = {}
    for filename in _split_files(split):
        found[filename] = next(
            (data_dir / sub / filename for sub in MNIST_SUBDIRS if (data_dir / sub / filename).is_file()),
            None,
        )
    return found


def load_mnist(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = False,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load an MNIST split as uint8 images [N, 1, 28, 28] and int64 labels.

    ``verify`` checks each file's MD5 against ``checksums`` (default :data:`MNIST_MD5`) before decoding; it
    costs one hash of ~11 MB, well under a second. ``download`` fetches *missing* files from
    :data:`MNIST_MIRRORS` into ``DATA_DIR/MNIST/raw`` (MD5-checked, atomic); existing files are never
    replaced.
    """
    table = MNIST_MD5 if checksums is None else checksums
    root = resolve_data_dir(data_dir, must_exist=not download)
    found = find_mnist_files(root, split)
    missing = [name for name, path in found.items() if path is None]
    if missing and download:
        for name in missing:
            found[name] = download_file(
                [base + name for base in MNIST_MIRRORS],
                root / MNIST_DOWNLOAD_SUBDIR / name,
                md5=table.get(name),
                progress=progress,
            )
        missing = []
    if missing:
        searched = ", ".join(repr(str(root / sub)) for sub in MNIST_SUBDIRS)
        raise DatasetNotFoundError(
            f"MNIST {split} split: missing {', '.join(missing)} (expected files {', '.join(found)}; "
            f"searched {searched}). Put the standard gzipped IDX files there, or use download=True "
            "(--download)."
        )
    images_file, labels_file = _split_files(split)
    images = _read_verified(found[images_file], table, verify)  # type: ignore[arg-type]
    labels = _read_verified(found[labels_file], table, verify)  # type: ignore[arg-type]
    if images.ndim != 3:
        raise DatasetFormatError(
            f"{found[images_file]}: expected a 3-d IDX array [N, H, W], got {images.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DatasetFormatError(
            f"{found[labels_file]}: {labels.shape} labels do not match {images.shape[0]} images"
        )
    if labels.size and int(labels.max()) >= MNIST_INFO.num_classes:
        raise DatasetFormatError(f"{found[labels_file]}: label {int(labels.max())} outside 0..9")
    return ImageDataset(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=MNIST_INFO.name,
        split=split,
        classes=MNIST_INFO.classes,
    )


def _split_files(split: str) -> tuple[str, str]:
    if split not in MNIST_FILES:
        raise ValueError(f"MNIST split must be one of {sorted(MNIST_FILES)}, got {split!r}")
    return MNIST_FILES[split]


def _read_verified(path: Path, table: Mapping[str, str], verify: bool) -> np.ndarray:
    compressed = path.read_bytes()
    if verify:
        expected = table.get(path.name)
        if expected is None:
            raise DatasetChecksumError(f"no reference MD5 for {path.name}; cannot verify {str(path)!r}")
        actual = md5_hex(compressed)
        if actual != expected:
            raise DatasetChecksumError(
                f"{str(path)!r} is corrupt or not the official file: MD5 {actual}, expected {expected}. "
                "Delete it and fetch the standard file again."
            )
    try:
        raw = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(f"{str(path)!r} is not a valid gzip file: {error}") from error
    return read_idx(raw, source=str(path))
