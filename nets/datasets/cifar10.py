"""CIFAR-10 from the python distribution (tarball or extracted ``cifar-10-batches-py/``), verified by content.

Verification hashes the *decoded* batch, ``SHA-256(data.astype(uint8).tobytes() + labels.astype(uint8)
.tobytes())`` with ``data`` [10000, 3072] and labels in file order, so any re-pickled copy with identical
pixels, labels and order passes, while a single changed pixel fails. Batches are unpickled with a restricted
unpickler that only admits numpy array reconstruction (a pickle cannot run arbitrary code here).
"""

from __future__ import annotations

import codecs
import hashlib
import os
import pickle
import tarfile
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import torch

from nets.datasets.dataset import CIFAR10_INFO, ImageDataset
from nets.datasets.errors import (
    DatasetChecksumError,
    DatasetFormatError,
    DatasetNotFoundError,
)
from nets.datasets.files import download_file, resolve_data_dir

CIFAR10_BATCHES: dict[str, tuple[str, ...]] = {
    "train": ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"),
    "test": ("test_batch",),
}

CIFAR10_CONTENT_SHA256: dict[str, str] = {
    "data_batch_1": "ba52cb2d72c412975d7556bb26bd094956f1c002d1937053f6f1252f2ac17114",
    "data_batch_2": "350ff9000489d02f2568c0dcf4912ffdbae9e50932147905fb1b8159ad54f0ac",
    "data_batch_3": "a2b8653fc457df407af6c38b7e0d1a12530f3b5f81fce9f81516efd065daf722",
    "data_batch_4": "133e6292c377755074c305db8a684d48d5397372cb0aba34f52b4335eab35d97",
    "data_batch_5": "eb08cdc11fd1267ef871cf4790f193684b3f556d13317be68f4eb374a078ea87",
    "test_batch": "9a4c74f5c8b6f2c4e13d3a1dfb43a5a8cda8a9da515e99fd620d2013a1a6287a",
}
"""Content SHA-256 per batch (read at call time, so tests may monkeypatch it or pass ``checksums``)."""

CIFAR10_DIRNAME = "cifar-10-batches-py"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_ARCHIVE_MD5 = "c58f30108f718f92721af3b95e74349a"
"""Official MD5 of the distribution tarball (checked on download)."""
CIFAR10_URLS: tuple[str, ...] = ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",)

_PIXELS = 3 * 32 * 32


def cifar10_content_sha256(data: np.ndarray, labels: Iterable[int] | np.ndarray) -> str:
    """SHA-256 of ``data.astype(uint8).tobytes() + labels.astype(uint8).tobytes()`` (the content checksum).

    Hashed incrementally from the arrays' buffers, without building the concatenated bytes.
    """
    hasher = hashlib.sha256()
    hasher.update(np.ascontiguousarray(np.asarray(data).astype(np.uint8, copy=False)))
    hasher.update(np.ascontiguousarray(np.asarray(labels).astype(np.uint8)))
    return hasher.hexdigest()


def load_cifar10(
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = False,
    checksums: Mapping[str, str] | None = None,
    progress: bool = True,
) -> ImageDataset:
    """Load a CIFAR-10 split as uint8 images [N, 3, 32, 32] (RGB planes) and int64 labels.

    Looks for ``DATA_DIR/cifar-10-batches-py/<batch>`` first, then reads the batches straight out of
    ``DATA_DIR/cifar-10-python.tar.gz`` (nothing is extracted, so a read-only directory works).
    ``verify`` checks each batch's content SHA-256 against ``checksums`` (default
    :data:`CIFAR10_CONTENT_SHA256`). ``download`` fetches the official tarball (MD5-checked, atomic) when
    neither form is present.
    """
    if split not in CIFAR10_BATCHES:
        raise ValueError(f"CIFAR-10 split must be one of {sorted(CIFAR10_BATCHES)}, got {split!r}")
    table = CIFAR10_CONTENT_SHA256 if checksums is None else checksums
    root = resolve_data_dir(data_dir, must_exist=not download)
    names = CIFAR10_BATCHES[split]
    batch_dir = root / CIFAR10_DIRNAME
    archive = root / CIFAR10_ARCHIVE
    if all((batch_dir / name).is_file() for name in names):
        raw_batches = {name: (str(batch_dir / name), (batch_dir / name).read_bytes()) for name in names}
    else:
        if not archive.is_file() and download:
            download_file(CIFAR10_URLS, archive, md5=CIFAR10_ARCHIVE_MD5, progress=progress)
        if not archive.is_file():
            missing = [name for name in names if not (batch_dir / name).is_file()]
            raise DatasetNotFoundError(
                f"CIFAR-10 {split} split not found: expected the python batches {', '.join(names)} in "
                f"{str(batch_dir)!r} (missing: {', '.join(missing)}) or the archive {str(archive)!r}. "
                "Put them there, or use download=True (--download)."
            )
        raw_batches = _read_from_archive(archive, names)
    images, labels = [], []
    for name in names:
        source, raw = raw_batches[name]
        data, batch_labels = _decode_batch(raw, source)
        if verify:
            _verify_batch(name, source, data, batch_labels, table)
        images.append(data)
        labels.append(batch_labels)
    data = np.concatenate(images).reshape(-1, 3, 32, 32)
    return ImageDataset(
        images=torch.from_numpy(data),
        labels=torch.from_numpy(np.concatenate(labels).astype(np.int64)),
        name=CIFAR10_INFO.name,
        split=split,
        classes=CIFAR10_INFO.classes,
    )


def _read_from_archive(archive: Path, names: tuple[str, ...]) -> dict[str, tuple[str, bytes]]:
    wanted = {f"{CIFAR10_DIRNAME}/{name}": name for name in names}
    found: dict[str, tuple[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:  # one sequential pass over the gzip stream
                key = member.name.lstrip("./")
                if key in wanted and member.isfile():
                    handle = tar.extractfile(member)
                    assert handle is not None
                    found[wanted[key]] = (f"{archive}:{key}", handle.read())
                    if len(found) == len(wanted):
                        break
    except (tarfile.TarError, OSError, EOFError, zlib.error) as error:
        raise DatasetFormatError(
            f"{str(archive)!r} is not a readable .tar.gz archive (corrupt?): {error}"
        ) from error
    missing = [name for name in names if name not in found]
    if missing:
        raise DatasetNotFoundError(
            f"{str(archive)!r} does not contain {', '.join(f'{CIFAR10_DIRNAME}/{m}' for m in missing)}"
        )
    return found


def _numpy_global(name: str):
    core = getattr(np, "_core", None) or np.core  # numpy >= 2 moved numpy.core to numpy._core
    return getattr(core.multiarray, name)


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): codecs.encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "_reconstruct"): _numpy_global("_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_global("_reconstruct"),
    ("numpy.core.multiarray", "scalar"): _numpy_global("scalar"),
    ("numpy._core.multiarray", "scalar"): _numpy_global("scalar"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name}: a CIFAR-10 batch only holds numpy arrays, lists and bytes"
            ) from None


def _decode_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    import io

    try:
        batch = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as error:  # any unpickling failure means a corrupt / foreign file
        raise DatasetFormatError(
            f"{source!r} is not a readable CIFAR-10 batch (corrupt?): {error}"
        ) from error
    if not isinstance(batch, dict):
        raise DatasetFormatError(f"{source!r}: expected a pickled dict, got {type(batch).__name__}")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DatasetFormatError(f"{source!r}: batch dict lacks b'data' or b'labels' (keys: {list(batch)})")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DatasetFormatError(
            f"{source!r}: data must be uint8 [n, {_PIXELS}], got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetFormatError(
            f"{source!r}: {labels.shape} {labels.dtype} labels for {data.shape[0]} images"
        )
    if labels.size and (labels.min() < 0 or labels.max() >= CIFAR10_INFO.num_classes):
        raise DatasetFormatError(f"{source!r}: labels outside 0..{CIFAR10_INFO.num_classes - 1}")
    return data, labels


def _verify_batch(
    name: str, source: str, data: np.ndarray, labels: np.ndarray, table: Mapping[str, str]
) -> None:
    expected = table.get(name)
    if expected is None:
        raise DatasetChecksumError(f"no reference content SHA-256 for {name}; cannot verify {source!r}")
    actual = cifar10_content_sha256(data, labels)
    if actual != expected:
        raise DatasetChecksumError(
            f"{source!r} does not hold the official CIFAR-10 {name}: content SHA-256 {actual}, expected "
            f"{expected}. The file is corrupt or a different copy; fetch the standard one again."
        )
