"""Tiny seeded models shared by the attack tests (no datasets; this module holds no tests)."""

from __future__ import annotations

import torch
from torch import nn


def small_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    """Conv net on 1x8x8 inputs with global pooling (accepts any input size >= 2x2)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 8, 3, padding=1), nn.Tanh(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes),
    )


def linear_binary(weight: torch.Tensor, bias: float = 0.0) -> nn.Module:
    """Logits ``[0, w.x + b]``: class 1 iff ``w.x + b > 0``."""
    dim = weight.numel()
    model = nn.Sequential(nn.Flatten(), nn.Linear(dim, 2))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].weight[1] = weight.flatten()
        model[1].bias.copy_(torch.tensor([0.0, bias]))
    return model


def random_images(n: int, seed: int = 0, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, size, size, generator=generator)
    y = torch.randint(0, 10, (n,), generator=generator)
    return x, y
