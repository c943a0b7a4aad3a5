"""Checkpointed backprop: the gradient of plain backprop (same discretisation), with O(√steps) memory."""

import math

import pytest
import torch

from stability import (
    MaxStepsExceededError,
    ODEInputError,
    odeint,
    odeint_checkpointed,
    peak_memory,
    solve,
    solve_checkpointed,
)


class TanhField(torch.nn.Module):
    def __init__(self, dim: int = 4, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = torch.nn.Parameter(torch.randn(dim, dim, generator=g, dtype=torch.float64) * 0.5)

    def forward(self, t, y):
        return torch.tanh(y @ self.weight.T) + 0.1 * t


T_OUT = torch.tensor([0.0, 0.37, 1.0, 2.0], dtype=torch.float64)  # 0.37 is off every grid: dense output


@pytest.mark.parametrize(
    "options",
    [
        dict(method="rk4", step_size=0.05),
        dict(method="dopri5", rtol=1e-6, atol=1e-6),
        dict(method="heun", rtol=1e-4, atol=1e-4),  # Hermite dense output, non-FSAL
        dict(method="backward_euler", step_size=0.1),
        dict(method="dopri5", rtol=1e-6, atol=1e-6, checkpoint_every=3),
    ],
    ids=["rk4", "dopri5", "heun", "backward_euler", "dopri5-every3"],
)
def test_gradients_equal_plain_backprop(options):
    field = TanhField()
    g = torch.Generator().manual_seed(1)
    y0 = torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_()
    cotangent = torch.randn(len(T_OUT), 3, 4, dtype=torch.float64, generator=g)
    plain_options = {k: v for k, v in options.items() if k != "checkpoint_every"}
    plain = solve(field, y0, T_OUT, **plain_options)
    checkpointed = solve_checkpointed(field, y0, T_OUT, **options)
    torch.testing.assert_close(checkpointed.ys, plain.ys, rtol=1e-14, atol=1e-14)
    assert checkpointed.stats.nfe == plain.stats.nfe
    assert checkpointed.stats.step_sizes == plain.stats.step_sizes
    expected = torch.autograd.grad((plain.ys * cotangent).sum(), [y0, field.weight])
    got = torch.autograd.grad((checkpointed.ys * cotangent).sum(), [y0, field.weight])
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_captured_tensors_receive_gradients_and_front_door():
    """Not only nn.Module parameters: any tensor the closure uses gets its gradient."""
    weight = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.5
    weight.requires_grad_()
    y0 = torch.ones(2, 4, dtype=torch.float64)

    def field(t, y):
        return torch.tanh(y @ weight.T)

    (expected,) = torch.autograd.grad(
        odeint(field, y0, [0.0, 1.0], method="euler", step_size=0.01).sum(), weight
    )
    ys = odeint(field, y0, [0.0, 1.0], method="euler", step_size=0.01, gradient="checkpoint")
    (got,) = torch.autograd.grad(ys.sum(), weight)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def _peak(solve_fn, n_steps: int) -> int:
    field = TanhField(dim=16)
    y0 = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_()

    def run():
        ys = solve_fn(field, y0, [0.0, 1.0], method="euler", step_size=1.0 / n_steps).ys
        return torch.autograd.grad(ys[-1].sum(), [y0, field.weight])

    return peak_memory(run)[1]


def test_lower_peak_memory_growing_like_sqrt_steps():
    plain_1000, checkpointed_1000 = _peak(solve, 1000), _peak(solve_checkpointed, 1000)
    assert checkpointed_1000 < plain_1000 / 5
    checkpointed_100 = _peak(solve_checkpointed, 100)
    growth = checkpointed_1000 / checkpointed_100
    assert growth < 2 * math.sqrt(10)  # plain backprop grows 10× here


def test_options_and_limits():
    field = TanhField()
    y0 = torch.ones(4, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ODEInputError, match="checkpoint_every must be a positive integer"):
        odeint_checkpointed(field, y0, [0.0, 1.0], checkpoint_every=0)
    with pytest.raises(MaxStepsExceededError, match="max_steps=5 exceeded"):
        odeint_checkpointed(
            lambda t, y: torch.cos(10 * t) * y, y0, [0.0, 100.0], rtol=1e-8, atol=1e-8, max_steps=5
        )
    with torch.no_grad():
        ys = odeint_checkpointed(field, y0, T_OUT, rtol=1e-6, atol=1e-6)
        plain = odeint(field, y0, T_OUT, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ys, plain, rtol=0, atol=0)


@pytest.mark.parametrize("options", [dict(rtol=1e-6, atol=1e-6), dict(method="rk4", step_size=0.1)])
def test_nondeterministic_field_is_detected(options):
    changed = {"now": False}

    def field(t, y):  # differs when re-run: the replay must notice instead of mis-differentiating
        return -torch.tanh(y) * (1.5 if changed["now"] else 1.0)

    y0 = torch.ones(2, dtype=torch.float64, requires_grad=True)
    ys = odeint_checkpointed(field, y0, [0.0, 1.0], **options)
    changed["now"] = True
    with pytest.raises(
        RuntimeError, match="recomputation took different steps|more tensors during recomputation"
    ):
        ys[-1].sum().backward()


def test_peak_memory_counts_live_tensor_bytes():
    def work():
        a = torch.ones(1000, 1000, dtype=torch.float64)  # 8 MB
        b = torch.ones(500, 1000, dtype=torch.float64)  # 4 MB, both alive: 12 MB
        del a
        c = torch.ones(250, 1000, dtype=torch.float64)  # 2 MB after 8 MB were freed
        return float(b.sum() + c.sum())

    result, peak = peak_memory(work)
    assert result == 750_000.0
    assert 12_000_000 <= peak < 12_100_000
