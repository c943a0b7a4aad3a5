"""In-memory image datasets: uint8 images [N, C, H, W] and int64 labels [N], plus per-dataset metadata."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DatasetInfo:
    """Static description of a standard dataset (what a model needs to be built for it).

    ``mean``/``std`` are the per-channel statistics of pixel/255 over the training split (MNIST: the usual
    0.1307/0.3081; CIFAR-10: as recomputed in the shared data README). Models that normalise inputs
    internally may use them; the data pipeline itself never normalises.
    """

    name: str
    channels: int
    height: int
    width: int
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


MNIST_INFO = DatasetInfo(
    name="mnist",
    channels=1,
    height=28,
    width=28,
    num_classes=10,
    classes=tuple(str(digit) for digit in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
)

CIFAR10_INFO = DatasetInfo(
    name="cifar10",
    channels=3,
    height=32,
    width=32,
    num_classes=10,
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    mean=(0.49139968, 0.48215841, 0.44653091),
    std=(0.24703223, 0.24348513, 0.26158784),
)

DATASET_INFO: dict[str, DatasetInfo] = {info.name: info for info in (MNIST_INFO, CIFAR10_INFO)}


@dataclass(frozen=True, eq=False)
class ImageDataset:
    """A whole dataset in memory: ``images`` uint8 [N, C, H, W], ``labels`` int64 [N] in [0, num_classes)."""

    images: torch.Tensor
    labels: torch.Tensor
    name: str = "custom"
    split: str = "train"
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if (
            not isinstance(self.images, torch.Tensor)
            or self.images.dtype != torch.uint8
            or self.images.ndim != 4
        ):
            raise ValueError(
                f"images must be a uint8 tensor [N, C, H, W], got "
                f"{getattr(self.images, 'dtype', type(self.images))} "
                f"of shape {tuple(getattr(self.images, 'shape', ()))}"
            )
        if (
            not isinstance(self.labels, torch.Tensor)
            or self.labels.dtype != torch.int64
            or self.labels.ndim != 1
        ):
            raise ValueError(
                f"labels must be an int64 tensor [N], got {getattr(self.labels, 'dtype', self.labels)}"
            )
        if self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if self.labels.numel() and int(self.labels.min()) < 0:
            raise ValueError("labels must be non-negative")
        if self.classes and self.labels.numel() and int(self.labels.max()) >= len(self.classes):
            raise ValueError(f"label {int(self.labels.max())} out of range for {len(self.classes)} classes")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    @property
    def device(self) -> torch.device:
        return self.images.device

    def subset(self, index: int | slice | torch.Tensor) -> ImageDataset:
        """A view/copy restricted to ``index``: an int n means the first n samples (file order)."""
        if isinstance(index, int):
            if index < 0:
                raise ValueError(f"subset size must be >= 0, got {index}")
            index = slice(0, index)
        return ImageDataset(self.images[index], self.labels[index], self.name, self.split, self.classes)

    def tensors(self, start: int = 0, count: int | None = None, device: torch.device | str | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Samples ``start`` … ``start + count - 1`` (``count`` None: to the end; clipped at the end) as
        ``(x, y)``: ``x = images / 255`` float32 in [0, 1] and ``y`` the int64 labels, on ``device``."""
        if start < 0 or (count is not None and count < 0):
            raise ValueError(f"start and count must be >= 0, got start={start}, count={count}")
        stop = None if count is None else start + count
        x, y = self.images[start:stop].float().div(255), self.labels[start:stop]
        return (x, y) if device is None else (x.to(device), y.to(device))

    def to(self, device: torch.device | str) -> ImageDataset:
        """The same dataset with both tensors on ``device`` (no copy if already there)."""
        device = torch.device(device)
        if self.images.device == device:
            return self
        return ImageDataset(
            self.images.to(device), self.labels.to(device), self.name, self.split, self.classes
        )
