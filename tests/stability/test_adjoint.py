"""Adjoint gradients: agree with backprop at tight tolerance, converge at the method's order for fixed steps,
memory flat in the number of steps, and no silently missing parameter gradients."""

import numpy as np
import pytest
import torch

from stability import ODEInputError, odeint, odeint_adjoint, peak_memory, solve, solve_adjoint
from tests.problems import observed_order


class TanhField(torch.nn.Module):
    """f(t, y) = tanh(W y + b) + 0.1·t."""

    def __init__(self, dim: int = 3, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.6)
        self.bias = torch.nn.Parameter(torch.randn(dim, generator=g, dtype=torch.float64) * 0.1)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T + self.bias) + 0.1 * t


T_OUT = torch.tensor([0.0, 0.4, 1.3, 2.0], dtype=torch.float64)


def _gradients(solve_fn, field, y0, cotangent, **options):
    ys = solve_fn(field, y0, T_OUT, **options).ys
    return torch.autograd.grad((ys * cotangent).sum(), [y0, field.weight, field.bias])


def _relative(a, b) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _problem(seed: int = 1):
    field = TanhField()
    g = torch.Generator().manual_seed(seed)
    y0 = torch.randn(4, 3, dtype=torch.float64, generator=g).requires_grad_()
    cotangent = torch.randn(len(T_OUT), 4, 3, dtype=torch.float64, generator=g)
    return field, y0, cotangent


def test_dopri5_adjoint_matches_backprop_at_tight_tolerance():
    field, y0, cotangent = _problem()
    tol = dict(rtol=1e-10, atol=1e-10)
    backprop = _gradients(solve, field, y0, cotangent, **tol)
    adjoint = _gradients(solve_adjoint, field, y0, cotangent, **tol)
    for a, b in zip(adjoint, backprop):
        assert _relative(a, b) < 1e-5
    # the front door gives the same
    ys = odeint(field, y0, T_OUT, gradient="adjoint", **tol)
    (via_odeint,) = torch.autograd.grad((ys * cotangent).sum(), [y0])
    torch.testing.assert_close(via_odeint, adjoint[0], rtol=0, atol=0)


def test_adjoint_error_follows_the_tolerance_and_the_seminorm_is_cheaper():
    field, y0, cotangent = _problem(2)
    exact = _gradients(solve, field, y0, cotangent, rtol=1e-12, atol=1e-12)
    errors = []
    for tol in (1e-4, 1e-7):
        grads = _gradients(solve_adjoint, field, y0, cotangent, rtol=tol, atol=tol)
        errors.append(max(_relative(a, b) for a, b in zip(grads, exact)))
    assert errors[1] < errors[0] / 30
    mixed = solve_adjoint(field, y0, T_OUT, rtol=1e-6, atol=1e-6)
    semi = solve_adjoint(field, y0, T_OUT, rtol=1e-6, atol=1e-6, adjoint_norm="seminorm")
    (mixed.ys * cotangent).sum().backward()
    (semi.ys * cotangent).sum().backward()
    assert 0 < semi.adjoint_stats.nfe <= mixed.adjoint_stats.nfe


@pytest.mark.parametrize(
    "method,order,steps", [("euler", 1, (20, 40, 80)), ("heun", 2, (10, 20, 40)), ("rk4", 4, (4, 8, 16))]
)
def test_fixed_step_discrepancy_shrinks_at_the_method_order(method, order, steps):
    """Backprop differentiates the discrete map, the adjoint discretises the exact gradient: both are O(h^p)
    from the exact gradient, so their difference is O(h^p) (or smaller) — and not zero."""
    field, y0, cotangent = _problem(3)
    hs, gaps = [], []
    for n in steps:
        h = 2.0 / n
        backprop = _gradients(solve, field, y0, cotangent, method=method, step_size=h)
        adjoint = _gradients(solve_adjoint, field, y0, cotangent, method=method, step_size=h)
        hs.append(h)
        gaps.append(max(_relative(a, b) for a, b in zip(adjoint, backprop)))
    assert min(gaps) > 1e-12
    assert observed_order(hs, gaps) >= order - 0.2


def _memory(solve_fn, n_steps: int) -> int:
    field = TanhField(dim=16)
    y0 = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(4)).requires_grad_()

    def run():
        ys = solve_fn(field, y0, [0.0, 1.0], method="euler", step_size=1.0 / n_steps).ys
        return torch.autograd.grad(ys[-1].sum(), [y0, field.weight])

    return peak_memory(run)[1]


def test_adjoint_peak_memory_is_flat_in_the_number_of_steps():
    adjoint_10, adjoint_1000 = _memory(solve_adjoint, 10), _memory(solve_adjoint, 1000)
    backprop_10, backprop_1000 = _memory(solve, 10), _memory(solve, 1000)
    assert adjoint_1000 <= 1.05 * adjoint_10
    assert backprop_1000 > 20 * backprop_10  # the measurement does see step-proportional memory
    assert adjoint_1000 < backprop_1000 / 20


def test_unlisted_captured_tensor_is_an_error_not_a_zero_gradient():
    weight = torch.randn(
        3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    ).requires_grad_()
    y0 = torch.ones(3, dtype=torch.float64, requires_grad=True)

    def field(t, y):
        return torch.tanh(weight @ y)

    ys = odeint_adjoint(field, y0, [0.0, 1.0], rtol=1e-8, atol=1e-8)
    with pytest.raises(ODEInputError, match=r"not in adjoint_params \(shapes \(3, 3\)\)"):
        ys[-1].sum().backward()
    ys = odeint_adjoint(field, y0, [0.0, 1.0], rtol=1e-9, atol=1e-9, adjoint_params=[weight])
    grads = torch.autograd.grad(ys[-1].sum(), [y0, weight])
    reference = torch.autograd.grad(
        odeint(field, y0, [0.0, 1.0], rtol=1e-9, atol=1e-9)[-1].sum(), [y0, weight]
    )
    for a, b in zip(grads, reference):
        assert _relative(a, b) < 1e-6


def test_backwards_in_time_and_float32():
    field = TanhField().float()
    y0 = torch.randn(2, 3, generator=torch.Generator().manual_seed(6)).requires_grad_()
    t = [1.0, 0.2, -0.5]
    backprop = torch.autograd.grad(odeint(field, y0, t, rtol=1e-6, atol=1e-6).sum(), [y0, field.weight])
    adjoint = torch.autograd.grad(
        odeint_adjoint(field, y0, t, rtol=1e-6, atol=1e-6).sum(), [y0, field.weight]
    )
    for a, b in zip(adjoint, backprop):
        assert a.dtype == torch.float32 and _relative(a, b) < 1e-4


def test_bad_options():
    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    decay = lambda t, y: -y  # noqa: E731
    with pytest.raises(ODEInputError, match="explicit Runge–Kutta"):
        odeint_adjoint(decay, y0, [0.0, 1.0], method="backward_euler", step_size=0.1)
    with pytest.raises(ODEInputError, match="no error estimate"):
        odeint_adjoint(decay, y0, [0.0, 1.0], adjoint_method="rk4")
    with pytest.raises(ODEInputError, match="adjoint_norm"):
        odeint_adjoint(decay, y0, [0.0, 1.0], adjoint_norm="max")
    with pytest.raises(ODEInputError, match="gradient must be"):
        odeint(decay, y0, [0.0, 1.0], gradient="adjont")
    with pytest.raises(ODEInputError, match="unknown options for gradient='backprop'"):
        odeint(decay, y0, [0.0, 1.0], adjoint_rtol=1e-3)


def test_without_grad_it_is_a_plain_solve():
    field, y0, _ = _problem()
    with torch.no_grad():
        ys = odeint_adjoint(field, y0, T_OUT, rtol=1e-6, atol=1e-6)
        plain = odeint(field, y0, T_OUT, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(ys.numpy(), plain.numpy())
