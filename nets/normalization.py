"""Input normalization inside the model, so every model reads images in [0, 1]: x ↦ (x − mean) / std."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


class Normalize(nn.Module):
    """Per-channel affine map (x − mean_c) / std_c; the identity when ``mean`` and ``std`` are None.

    The statistics are buffers, so they travel with ``state_dict`` and ``.to(device)``. Being affine, this
    layer is part of what attacks differentiate through: perturbations are measured in [0, 1] pixel units.
    """

    def __init__(
        self, in_channels: int, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
    ) -> None:
        super().__init__()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive integer, got {in_channels!r}")
        self.in_channels = in_channels
        if mean is None and std is None:
            self.register_buffer("mean", None)
            self.register_buffer("std", None)
            return
        mean = [0.0] * in_channels if mean is None else [float(m) for m in mean]
        std = [1.0] * in_channels if std is None else [float(s) for s in std]
        for name, values in (("mean", mean), ("std", std)):
            if len(values) not in (1, in_channels):
                raise ValueError(
                    f"{name} needs 1 or {in_channels} values (one per channel), got {len(values)}"
                )
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"{name} must be finite, got {values}")
        if not all(s > 0 for s in std):
            raise ValueError(f"std must be positive, got {std}")
        self.register_buffer(
            "mean", torch.tensor(mean).view(1, -1, 1, 1).expand(1, in_channels, 1, 1).clone()
        )
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1).expand(1, in_channels, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        if self.mean is None:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        if self.mean is None:
            return "identity"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"
