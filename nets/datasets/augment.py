"""Vectorised, seeded data augmentation on uint8 image batches [B, C, H, W].

An augmentation is split into ``sample(n, generator) -> params`` (all randomness, one draw per sample) and
``apply(images, params) -> images`` (deterministic). The batch iterator draws the parameters for a whole
epoch at once, so the augmentation a sample receives depends only on the seed and its position in the epoch,
not on the batch size or the number of data-parallel processes.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F


class Augmentation(Protocol):
    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Draw per-sample random parameters for ``n`` samples (CPU tensors with leading dim n)."""
        ...

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Transform ``images`` [B, C, H, W] with the parameters of those B samples."""
        ...


class RandomCropFlip:
    """Random crop of the zero-padded image plus random horizontal flip, independently per sample.

    Sample i is padded by ``padding`` zeros on each side, cropped back to H x W at offsets
    (dy_i, dx_i) uniform in {0, ..., 2 * padding}, then mirrored left-right with probability 1/2 (the
    standard CIFAR-10 recipe of He et al. 2016 with ``padding=4``). Implemented as one gather.
    """

    def __init__(self, padding: int = 4, flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)
        self.flip = bool(flip)

    def __repr__(self) -> str:
        return f"RandomCropFlip(padding={self.padding}, flip={self.flip})"

    def sample(self, n: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        offsets = torch.randint(0, 2 * self.padding + 1, (n, 2), generator=generator)
        flips = torch.randint(0, 2, (n,), generator=generator, dtype=torch.bool)
        if not self.flip:
            flips.zero_()
        return {"offsets": offsets, "flips": flips}

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must be [B, C, H, W], got shape {tuple(images.shape)}")
        batch, channels, height, width = images.shape
        offsets = params["offsets"].to(images.device)
        flips = params["flips"].to(images.device)
        if offsets.shape != (batch, 2) or flips.shape != (batch,):
            raise ValueError(f"parameters for {offsets.shape[0]} samples given for a batch of {batch}")
        p = self.padding
        padded = F.pad(images, (p, p, p, p)) if p else images
        rows = offsets[:, :1] + torch.arange(height, device=images.device)  # [B, H]
        cols_forward = torch.arange(width, device=images.device)
        cols = torch.where(flips[:, None], cols_forward.flip(0), cols_forward) + offsets[:, 1:]  # [B, W]
        out = padded.gather(2, rows[:, None, :, None].expand(batch, channels, height, padded.shape[3]))
        return out.gather(3, cols[:, None, None, :].expand(batch, channels, height, width))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.apply(images, self.sample(images.shape[0], generator))
