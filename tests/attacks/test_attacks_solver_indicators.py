"""The solver-specific indicators: NFE spread under eps-noise and backprop/adjoint/finite-difference
agreement, quiet on a fixed-step ODE-net, firing on planted models."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from attacks.solver_indicators import gradient_agreement, nfe_spread, ode_blocks
from nets.odenet import ODEBlock
from nets.registry import build_model
from tests.attacks.support import small_cnn


def fixed_step_odenet() -> nn.Module:
    torch.manual_seed(0)
    model = build_model("odenet_mnist_small", channels=2).eval()
    for block in ode_blocks(model):
        block.use_solver(method="rk4", step_size=0.25)
    return model


def images(n: int = 4) -> tuple[Tensor, Tensor]:
    return torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1)), torch.arange(n) % 10


class Oscillator(nn.Module):
    """dy/dt = |y|^2 (y_1, -y_0): a rotation whose frequency is the conserved |y|^2."""

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        frequency = (y**2).sum(dim=1, keepdim=True)
        return frequency * torch.stack([y[:, 1], -y[:, 0]], dim=1)


class AmplitudeDependentFrequency(nn.Module):
    """The oscillator from y(0) = (2 + 10 x_0, 0), x_0 the first pixel: the adaptive solver's work grows with
    the square of the pixel's amplitude."""

    def __init__(self) -> None:
        super().__init__()
        self.block = ODEBlock(Oscillator(), method="dopri5", rtol=1e-5, atol=1e-5)
        self.readout = nn.Linear(2, 10)

    def forward(self, z: Tensor) -> Tensor:
        first = z.flatten(1)[:, :1]
        return self.readout(self.block(torch.cat([2 + 10 * first, torch.zeros_like(first)], dim=1)))


class Quantized(nn.Module):
    """Forward: inputs rounded to 4 levels; backward: identity (a straight-through estimator)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, z: Tensor) -> Tensor:
        return self.model(z + (torch.round(z * 4) / 4 - z).detach())


@pytest.mark.slow
def test_both_are_quiet_on_a_fixed_step_odenet() -> None:
    model, (x, y) = fixed_step_odenet(), images()
    spread = nfe_spread(model, x, 0.1)
    assert not spread.fired and spread.numbers["max_spread"] == 0.0
    agreement = gradient_agreement(model, x, y)
    assert not agreement.fired, agreement.verdict


def test_a_straight_through_preprocessing_fires_gradient_agreement() -> None:
    model, (x, y) = fixed_step_odenet(), images()
    flag = gradient_agreement(Quantized(model), x, y)
    assert flag.fired and flag.numbers["median_relative_disagreement"]["backprop vs finite-difference"] > 0.5


def test_an_input_dependent_frequency_fires_nfe_spread() -> None:
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    flag = nfe_spread(AmplitudeDependentFrequency().eval(), x, 0.3)
    assert flag.fired and flag.numbers["max_spread"] > 0.5


def test_models_without_ode_blocks_are_not_tested() -> None:
    model, (x, y) = small_cnn(0), images(2)
    assert nfe_spread(model, x, 0.1).verdict.startswith("not tested")
    assert gradient_agreement(model, x, y).verdict.startswith("not tested")
