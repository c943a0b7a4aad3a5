"""Seeded random residual functions with a prescribed certified Lipschitz constant, for checks and demos."""

from __future__ import annotations

import torch
from torch import nn

from proofs_check.lipschitz import lipschitz_upper

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "softplus": nn.Softplus}


def random_conv_residual(
    channels: int = 4,
    size: int = 8,
    *,
    hidden: int | None = None,
    activation: str = "relu",
    lipschitz: float | None = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> tuple[nn.Sequential, tuple[int, int, int]]:
    """(F, input shape): F = conv3×3 → activation → conv3×3 on (channels, size, size), random weights.

    With ``lipschitz`` set, the last convolution is rescaled so that F's certified K equals it exactly
    (the certificate is a product of layer norms, linear in that layer's weight).
    """
    hidden = hidden or channels
    generator = torch.Generator().manual_seed(seed)
    residual = nn.Sequential(
        nn.Conv2d(channels, hidden, 3, padding=1),
        ACTIVATIONS[activation](),
        nn.Conv2d(hidden, channels, 3, padding=1),
    ).to(dtype)
    _randomise(residual, generator)
    shape = (channels, size, size)
    if lipschitz is not None:
        _rescale_last(residual, shape, lipschitz)
    return residual.eval(), shape


def random_mlp_residual(
    dim: int,
    hidden: int,
    *,
    depth: int = 2,
    activation: str = "tanh",
    lipschitz: float | None = 1.0,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
) -> nn.Sequential:
    """F = Linear → activation → … → Linear (``depth`` linear layers) on R^dim, optionally rescaled to K."""
    if depth < 1:
        raise ValueError(f"depth must be ≥ 1, got {depth}")
    widths = [dim] + [hidden] * (depth - 1) + [dim]
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(zip(widths, widths[1:])):
        if index:
            layers.append(ACTIVATIONS[activation]())
        layers.append(nn.Linear(fan_in, fan_out))
    residual = nn.Sequential(*layers).to(dtype)
    _randomise(residual, torch.Generator().manual_seed(seed))
    if lipschitz is not None:
        _rescale_last(residual, (dim,), lipschitz)
    return residual.eval()


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            fan_in = parameter[0].numel() if parameter.dim() > 1 else 1
            parameter.copy_(torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
            parameter.mul_(fan_in**-0.5)


def _rescale_last(residual: nn.Sequential, shape: tuple[int, ...], lipschitz: float) -> None:
    if not lipschitz > 0:
        raise ValueError(f"lipschitz must be > 0, got {lipschitz}")
    certified = lipschitz_upper(residual, shape, iterations=1).upper
    with torch.no_grad():
        residual[-1].weight.mul_(lipschitz / certified)


__all__ = ["ACTIVATIONS", "random_conv_residual", "random_mlp_residual"]
