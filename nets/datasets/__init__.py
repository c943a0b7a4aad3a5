"""Datasets held in memory as uint8 tensors: verified readers (MNIST, CIFAR-10), batching, augmentation.

Images come out as floats in [0, 1]; normalisation belongs to the models. The data directory comes from
``data_dir`` / ``--data-dir`` or the ``NR_DATA_DIR`` environment variable, never from a hard-coded path.
"""

from __future__ import annotations

import os

from nets.datasets.augment import Augmentation, RandomCropFlip
from nets.datasets.batches import BatchIterator
from nets.datasets.cifar10 import CIFAR10_CONTENT_SHA256, cifar10_content_sha256, load_cifar10
from nets.datasets.dataset import CIFAR10_INFO, DATASET_INFO, MNIST_INFO, DatasetInfo, ImageDataset
from nets.datasets.errors import (
    DatasetChecksumError,
    DatasetDownloadError,
    DatasetError,
    DatasetFormatError,
    DatasetNotFoundError,
)
from nets.datasets.files import DATA_DIR_ENV, resolve_data_dir
from nets.datasets.mnist import MNIST_MD5, load_mnist, read_idx

_LOADERS = {"mnist": load_mnist, "cifar10": load_cifar10}


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    download: bool = False,
    progress: bool = True,
) -> ImageDataset:
    """Load split ``"train"`` or ``"test"`` of dataset ``name`` (``"mnist"`` or ``"cifar10"``)."""
    try:
        loader = _LOADERS[name.lower().replace("-", "")]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; available: {sorted(_LOADERS)}") from None
    return loader(split, data_dir, verify=verify, download=download, progress=progress)


def default_augmentation(name: str) -> Augmentation | None:
    """The standard training augmentation: crop (padding 4) + flip for CIFAR-10, none for MNIST."""
    return RandomCropFlip(padding=4, flip=True) if name.lower().replace("-", "") == "cifar10" else None


__all__ = [
    "CIFAR10_CONTENT_SHA256",
    "CIFAR10_INFO",
    "DATASET_INFO",
    "DATA_DIR_ENV",
    "MNIST_INFO",
    "MNIST_MD5",
    "Augmentation",
    "BatchIterator",
    "DatasetChecksumError",
    "DatasetDownloadError",
    "DatasetError",
    "DatasetFormatError",
    "DatasetInfo",
    "DatasetNotFoundError",
    "ImageDataset",
    "RandomCropFlip",
    "cifar10_content_sha256",
    "default_augmentation",
    "load_cifar10",
    "load_dataset",
    "load_mnist",
    "read_idx",
    "resolve_data_dir",
]
