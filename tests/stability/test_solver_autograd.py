"""Gradients through the solvers: gradcheck in float64 for every method, fixed-step and adaptive."""

import pytest
import torch
from torch.func import functional_call

from stability import odeint, solve


class TanhField(torch.nn.Module):
    """f(t, y) = tanh(W y + b) + 0.1·t — a small non-autonomous field with parameters."""

    def __init__(self, dim: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.5)
        self.bias = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T + self.bias) + 0.1 * t


FIXED = [("euler", 0.1), ("heun", 0.1), ("rk4", 0.2), ("dopri5", 0.25)]


@pytest.mark.parametrize("method,step_size", FIXED)
def test_gradcheck_fixed_step(method, step_size):
    field = TanhField()
    y0 = torch.randn(
        2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1), requires_grad=True
    )
    t = torch.tensor([0.0, 0.45, 1.0], dtype=torch.float64)  # 0.45 is off-grid: exercises dense output

    def run(y0, weight, bias):
        params = {"weight": weight, "bias": bias}
        return odeint(
            lambda s, y: functional_call(field, params, (s, y)), y0, t, method=method, step_size=step_size
        )

    weight = field.weight.detach().clone().requires_grad_()
    bias = field.bias.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (y0, weight, bias))


@pytest.mark.parametrize("method", ["dopri5", "heun"])
def test_gradcheck_adaptive(method):
    """Step sizes are chosen on detached values: the gradient is that of the discrete map actually taken.

    At tight tolerance the solution depends on the step sequence only at the tolerance level, so finite
    differences (which may see other step sizes) agree to gradcheck's precision.
    """
    field = TanhField()
    y0 = torch.randn(
        2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True
    )
    weight = field.weight.detach().clone().requires_grad_()
    tol = 1e-10 if method == "dopri5" else 1e-6

    def run(y0, weight):
        return odeint(
            lambda s, y: functional_call(field, {"weight": weight}, (s, y)),
            y0,
            [0.0, 0.7, 1.5],
            method=method,
            rtol=tol,
            atol=tol,
        )

    assert torch.autograd.gradcheck(run, (y0, weight), atol=1e-6, rtol=1e-4)


def test_step_size_decisions_add_no_gradient_path():
    """The gradient equals that of a fixed grid made of the adaptive run's own accepted steps."""
    field = TanhField()
    y0 = torch.randn(
        4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(3), requires_grad=True
    )
    adaptive = solve(field, y0, [0.0, 2.0], rtol=1e-4, atol=1e-4)
    grid = adaptive.stats.step_times + [2.0]
    fixed = odeint(field, y0, [0.0, 2.0], method="dopri5", grid=grid)
    torch.testing.assert_close(adaptive.ys, fixed, rtol=0, atol=0)
    (g_adaptive,) = torch.autograd.grad(adaptive.ys[-1].sum(), y0)
    (g_fixed,) = torch.autograd.grad(fixed[-1].sum(), y0)
    torch.testing.assert_close(g_adaptive, g_fixed, rtol=0, atol=0)


def test_parameters_of_module_receive_gradients():
    field = TanhField()
    y0 = torch.ones(3, dtype=torch.float64)
    odeint(field, y0, [0.0, 1.0], rtol=1e-6, atol=1e-6)[-1].sum().backward()
    assert field.weight.grad is not None and torch.isfinite(field.weight.grad).all()
    assert field.weight.grad.abs().sum() > 0
