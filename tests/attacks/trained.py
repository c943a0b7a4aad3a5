"""A small CNN trained a few seeded steps on separable synthetic 1x8x8 images (this module holds no tests)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tests.attacks.support import small_cnn

CLASSES = 4


def quadrant_images(n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Class ``k`` has its ``k``-th 4x4 quadrant 0.5 brighter than the uniform [0, 0.35] background."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=generator)
    x = 0.35 * torch.rand(n, 1, 8, 8, generator=generator)
    for k in range(CLASSES):
        row, col = divmod(k, 2)
        x[y == k, :, 4 * row : 4 * row + 4, 4 * col : 4 * col + 4] += 0.5
    return x.clamp(0, 1), y


def trained_cnn(seed: int = 0, steps: int = 60) -> nn.Module:
    """``small_cnn`` after ``steps`` seeded Adam steps (lr 0.01, batch 64) on 512 quadrant images."""
    model = small_cnn(seed, classes=CLASSES)
    x, y = quadrant_images(512, seed + 100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        index = torch.randint(0, x.shape[0], (64,), generator=order)
        loss = F.cross_entropy(model(x[index]), y[index])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()
