"""Vector fields used by the solver benchmarks (shared with bench_gradients)."""

from __future__ import annotations

import torch
from torch import nn


class ConvField(nn.Module):
    """Neural-ODE conv field f(t, y) = conv(relu(gn(conv(relu(gn(y)))))): 3×3 convs, GroupNorm, ReLU.

    Counts its evaluations in ``nfe`` unless ``counting=False`` (a Python side effect: ``compile=True`` would
    recompile at every call). GroupNorm normalises each sample separately (no batch coupling).
    """

    def __init__(self, channels: int = 64, groups: int = 32, seed: int = 0, counting: bool = True) -> None:
        super().__init__()
        with torch.random.fork_rng():  # seeded weights without touching the caller's RNG
            torch.manual_seed(seed)
            self.norm1 = nn.GroupNorm(groups, channels)
            self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
            self.norm2 = nn.GroupNorm(groups, channels)
            self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.nfe, self.counting = 0, counting

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.counting:
            self.nfe += 1
        y = self.conv1(torch.relu(self.norm1(y)))
        return self.conv2(torch.relu(self.norm2(y)))


class TinyMLPField(nn.Module):
    """f(t, y) = W2 tanh(W1 y + b1) + b2 on a 2-dimensional state: per-step overhead dominates. ``nfe`` and
    ``counting`` as in ``ConvField``."""

    def __init__(self, dim: int = 2, hidden: int = 16, seed: int = 0, counting: bool = True) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        self.nfe, self.counting = 0, counting

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.counting:
            self.nfe += 1
        return self.net(y)


def evaluation_floor(field: nn.Module, t: torch.Tensor, y0: torch.Tensor, n: int, backward: bool) -> None:
    """The floor a solve is measured against: ``n`` evaluations of ``field`` on one input (their sum
    backpropagated when ``backward``) — what ``n`` NFE cost with no solver around them."""
    y = y0.clone().requires_grad_(backward)
    with torch.set_grad_enabled(backward):
        total = sum(field(t, y).sum() for _ in range(n))
        if backward:
            total.backward()
