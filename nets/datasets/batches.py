"""Fast seeded mini-batch iteration over an in-memory :class:`ImageDataset` (no per-sample Python loops).

Epoch protocol (identical for 1 and W processes, so data-parallel runs see the same global batches):

1. ``order = randperm(N, generator)`` if ``shuffle`` else ``arange(N)``; then, if an augmentation is set,
   its parameters for all N positions are drawn from the same generator. The generator is persistent across
   epochs; its state (``state_dict()``) is what a checkpoint stores to resume the data stream exactly.
2. DistributedSampler semantics: with W > 1 processes the order is padded by wrapping around to a multiple
   of W and process ``rank`` takes positions ``rank, rank + W, rank + 2W, ...``.
3. Each process cuts its positions into consecutive batches of ``batch_size`` (the last one may be smaller
   unless ``drop_last``). Per-process batch k of all ranks together is the global batch
   ``order[k*B:(k+1)*B]`` with ``B = batch_size * W``, so with mean-reduced losses and gradient averaging a
   W-process run equals a 1-process run with batch B whenever ``N`` is a multiple of B.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from nets.datasets.augment import Augmentation
from nets.datasets.dataset import ImageDataset


class BatchIterator:
    """Yield ``(x, y)``: float images in [0, 1] of shape [B, C, H, W] on ``device`` and int64 labels [B]."""

    def __init__(
        self,
        dataset: ImageDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        augment: Augmentation | None = None,
        drop_last: bool = False,
        seed: int = 0,
        generator: torch.Generator | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if len(dataset) == 0:
            raise ValueError("cannot iterate over an empty dataset")
        if not dtype.is_floating_point:
            raise ValueError(f"dtype must be floating point, got {dtype}")
        self.dataset = dataset.to(device) if device is not None else dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.augment = augment
        self.drop_last = bool(drop_last)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.dtype = dtype
        if generator is None:
            generator = torch.Generator()
            generator.manual_seed(int(seed))
        self.generator = generator

    @property
    def num_samples(self) -> int:
        """Samples this process sees per epoch (after DistributedSampler padding)."""
        return math.ceil(len(self.dataset) / self.world_size)

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Generator state (a uint8 tensor), enough to replay the following epochs exactly."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.generator.set_state(state["generator"])

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self.dataset)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        params = self.augment.sample(n, self.generator) if self.augment is not None else None
        total = self.num_samples * self.world_size
        if total > n:  # wrap around, as DistributedSampler does
            wrap = torch.arange(total) % n
            order = order[wrap]
            params = {key: value[wrap] for key, value in params.items()} if params is not None else None
        positions = torch.arange(self.rank, total, self.world_size)
        device = self.dataset.device
        sample_index = order[positions].to(device)
        if params is not None:
            params = {key: value[positions] for key, value in params.items()}
        for start in range(0, positions.numel(), self.batch_size):
            stop = min(start + self.batch_size, positions.numel())
            if self.drop_last and stop - start < self.batch_size:
                break
            index = sample_index[start:stop]
            images = self.dataset.images[index]
            if params is not None:
                images = self.augment.apply(images, {key: value[start:stop] for key, value in params.items()})
            yield images.to(self.dtype).div_(255), self.dataset.labels[index]
