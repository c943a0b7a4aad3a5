"""Backward Euler: exactness on y' = λy, order 1, A-stability, IFT gradients (gradcheck), clear failures."""

import re

import numpy as np
import pytest
import torch
from torch.func import functional_call

from stability import (
    BackwardEuler,
    ImplicitOptions,
    NonConvergenceError,
    NonFiniteValueError,
    ODEInputError,
    backward_euler_step,
    odeint,
    solve,
    step,
)
from tests.problems import observed_order, scipy_reference


def test_exact_on_scalar_linear_problems():
    """y_n = y_0 / (1 − hλ)^n, for decaying, growing (hλ < 1) and stiff λ: to round-off with a tight Newton
    tolerance, and to the default tolerance (1e-10, scaled) through ``odeint``."""
    lam = torch.tensor([-0.5, 2.0, -40.0, -1e4], dtype=torch.float64)
    y0 = torch.tensor([1.0, -0.3, 2.0, 0.7], dtype=torch.float64)
    h, n = 0.05, 20
    powers = torch.arange(n + 1, dtype=torch.float64)[:, None]
    expected = y0 / (1 - h * lam) ** powers
    tight = ImplicitOptions(tol=1e-14)
    solver = BackwardEuler(lambda t, y: lam * y, 0.0, y0, n * h, step_size=h, implicit=tight)
    ys = [y0]
    while solver.status == "running":
        solver.step()
        ys.append(solver.y)
    torch.testing.assert_close(torch.stack(ys), expected, rtol=1e-13, atol=1e-14)
    t_out = torch.linspace(0, n * h, n + 1, dtype=torch.float64)
    ys = odeint(lambda t, y: lam * y, y0, t_out, method="backward_euler", step_size=h)
    torch.testing.assert_close(ys, expected, rtol=0, atol=1e-9)


def _stiff_matrix(seed: int = 0) -> torch.Tensor:
    """Symmetric negative definite, eigenvalues log-spaced in [−1e4, −0.1]."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    return torch.as_tensor(q @ np.diag(-np.logspace(-1, 4, 6)) @ q.T)


def test_a_stability_on_stiff_linear_system_where_euler_explodes():
    a = _stiff_matrix()
    y0 = torch.ones(6, dtype=torch.float64)
    field = lambda t, y: a @ y  # noqa: E731
    implicit = odeint(field, y0, [0.0, 2.0], method="backward_euler", step_size=0.1)
    norms = torch.linalg.vector_norm(implicit, dim=-1)
    assert norms[-1] <= norms[0]  # contractive, as the exact flow
    explicit = odeint(field, y0, [0.0, 2.0], method="euler", step_size=0.1)
    assert torch.linalg.vector_norm(explicit[-1]) > 1e30  # |1 + hλ| = 999 per step
    with pytest.raises(NonFiniteValueError, match="blew up"):
        odeint(field, y0, [0.0, 20.0], method="euler", step_size=0.1)
    # and it matches the exact backward Euler map (I − hA)^{-20} y0
    step_matrix = torch.linalg.inv(torch.eye(6, dtype=torch.float64) - 0.1 * a)
    expected = torch.linalg.matrix_power(step_matrix, 20) @ y0
    torch.testing.assert_close(implicit[-1], expected, rtol=1e-8, atol=1e-12)


def test_order_one_on_nonlinear_problem():
    def duffing(t, y):  # x'' = −x − x³/2 + cos 2t, written with products (fast forward-mode AD)
        x, v = y[..., 0], y[..., 1]
        return torch.stack([v, -x - 0.5 * x * x * x + torch.cos(2 * t)], dim=-1)

    def duffing_np(t, y):
        return np.array([y[1], -y[0] - 0.5 * y[0] ** 3 + np.cos(2 * t)])

    reference = scipy_reference(duffing_np, [1.0, 0.0], [0.0, 2.0])[-1]
    hs, errors = [], []
    for n in (25, 50, 100, 200):
        solver = BackwardEuler(
            duffing,
            0.0,
            torch.tensor([1.0, 0.0], dtype=torch.float64),
            2.0,
            step_size=2.0 / n,
            implicit=ImplicitOptions(jvp="reverse"),
        )
        while solver.status == "running":
            solver.step()
        y = solver.y
        hs.append(2.0 / n)
        errors.append(np.abs(y.numpy() - reference).max())
    assert observed_order(hs, errors) == pytest.approx(1.0, abs=0.2)


class TanhField(torch.nn.Module):
    def __init__(self, dim: int = 3, scale: float = 1.5) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * scale)
        self.bias = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T + self.bias) + 0.1 * t


def test_gradcheck_through_implicit_steps():
    """h‖W‖₂ > 1: the fixed-point map need not contract, Newton–Krylov is doing real work."""
    field = TanhField()
    assert 0.4 * torch.linalg.matrix_norm(field.weight.detach(), 2) > 1
    y0 = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y0.requires_grad_()
    weight = field.weight.detach().clone().requires_grad_()
    bias = field.bias.detach().clone().requires_grad_()
    tight = ImplicitOptions(tol=1e-13)

    def run(y0, weight, bias):
        def f(s, y):
            return functional_call(field, {"weight": weight, "bias": bias}, (s, y))

        y1 = backward_euler_step(f, 0.0, y0, 0.4, options=tight)
        return backward_euler_step(f, 0.4, y1, 0.4, options=tight)

    assert torch.autograd.gradcheck(run, (y0, weight, bias))


def test_gradient_is_the_implicit_function_theorem_gradient():
    """For f = Ay: dz/dy0 = (I − hA)^{-1}, whatever the iterations did."""
    a = _stiff_matrix(1)
    y0 = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2), requires_grad=True)
    g = torch.randn(6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    z = step(lambda t, y: a @ y, 0.0, y0, 0.1, method="backward_euler")
    (grad,) = torch.autograd.grad(z, y0, g)
    expected = torch.linalg.solve((torch.eye(6, dtype=torch.float64) - 0.1 * a).T, g)
    torch.testing.assert_close(grad, expected, rtol=1e-8, atol=1e-10)


def test_parameter_gradients_of_a_module_and_float32():
    field = TanhField().float()
    y0 = torch.randn(4, 3, generator=torch.Generator().manual_seed(4))
    z = step(field, 0.0, y0, 0.5, method="backward_euler")
    assert z.dtype == torch.float32
    residual = z - y0 - 0.5 * field(torch.tensor(0.5), z)
    assert residual.abs().max() < 1e-4
    z.sum().backward()
    assert field.weight.grad is not None and torch.isfinite(field.weight.grad).all()


def test_field_without_forward_mode_ad_falls_back_to_double_backward():
    class Cube(torch.autograd.Function):  # no jvp: forward-mode AD is not available through it
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * grad

    y0 = torch.tensor([0.5, -0.2], dtype=torch.float64)
    z = step(lambda t, y: -Cube.apply(y), 0.0, y0, 0.5, method="backward_euler")
    torch.testing.assert_close(z + 0.5 * z**3, y0, rtol=0, atol=1e-12)


def test_non_convergence_raises_naming_t_h_and_residual():
    # z = y + h e^z has no real root for y = 0, h = 1 (e^z > z): neither Newton nor fixed point can succeed.
    message = r"t=0\.3 with h=1 did not converge: scaled residual"
    with pytest.raises(NonConvergenceError, match=message) as info:
        backward_euler_step(lambda t, y: torch.exp(y), 0.3, torch.zeros(3, dtype=torch.float64), 1.0)
    assert info.value.t == 0.3 and info.value.h == 1.0


def test_solver_object_stats_dense_output_and_bad_options():
    y0 = torch.ones(2, dtype=torch.float64)
    sol = solve(lambda t, y: -y, y0, [0.0, 0.25, 1.0], method="backward_euler", step_size=0.1)
    assert sol.stats.n_accepted == 10 and sol.stats.newton_iterations >= 10
    # 0.25 lies mid-step: linear interpolation between y(0.2) and y(0.3)
    y_02, y_03 = 1 / 1.1**2, 1 / 1.1**3
    torch.testing.assert_close(sol.ys[1], torch.full((2,), (y_02 + y_03) / 2, dtype=torch.float64))
    with pytest.raises(ODEInputError, match="fixed-step: give step_size"):
        odeint(lambda t, y: -y, y0, [0.0, 1.0], method="backward_euler")
    with pytest.raises(ODEInputError, match="tol must be positive"):
        ImplicitOptions(tol=0.0)
    solver = BackwardEuler(lambda t, y: -y, 0.0, y0, 1.0, step_size=0.5, implicit=ImplicitOptions(tol=1e-12))
    solver.step()
    solver.step()
    assert solver.status == "finished" and solver.t == 1.0


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-9), (torch.float64, 1e-18)])
def test_tolerance_below_rounding_level_is_named_and_the_advice_works(dtype, tol):
    # A tol under the rounding of z − y − h f(z) cannot be met by any iterate: the error says so and names a
    # tolerance that is met (before: "a smaller h or a larger tol may help", after 100 wasted iterations).
    y0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64).to(dtype)
    field = lambda t, y: -y + torch.sin(y)  # noqa: E731
    below = f"below the rounding level of the residual in {dtype}"
    with pytest.raises(NonConvergenceError, match=below) as info:
        solve(field, y0, [0.0, 1.0], method="backward_euler", step_size=0.1,
              implicit=ImplicitOptions(tol=tol))
    advised = float(re.search(r"ImplicitOptions\(tol=([0-9.e+-]+)\)", str(info.value)).group(1))
    sol = solve(field, y0, [0.0, 1.0], method="backward_euler", step_size=0.1,
                implicit=ImplicitOptions(tol=advised))
    assert sol.stats.n_accepted == 10
