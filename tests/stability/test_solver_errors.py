"""Every kind of bad input raises a clear exception — never a hang or a silent NaN."""

import math

import pytest
import torch

from stability import (
    MaxStepsExceededError,
    NonFiniteValueError,
    ODEInputError,
    StepSizeUnderflowError,
    odeint,
)


def decay(t, y):
    return -y


Y0 = torch.ones(3, dtype=torch.float64)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_initial_state(bad):
    y0 = Y0.clone()
    y0[1] = bad
    with pytest.raises(ODEInputError, match="y0 contains NaN or infinite"):
        odeint(decay, y0, [0.0, 1.0])


@pytest.mark.parametrize(
    "t,match",
    [
        ([0.0], "at least 2 points"),
        ([0.0, 1.0, 1.0], "strictly increasing or strictly decreasing"),
        ([0.0, 2.0, 1.0], "strictly increasing or strictly decreasing"),
        ([0.0, float("nan")], "NaN or infinite"),
        (torch.zeros(2, 2), "one-dimensional"),
    ],
)
def test_bad_time_grid(t, match):
    with pytest.raises(ODEInputError, match=match):
        odeint(decay, Y0, t)


@pytest.mark.parametrize("gradient", ["backprop", "checkpoint", "adjoint"])
def test_times_requiring_grad_are_refused_not_silently_ignored(gradient):
    # The solution is not differentiated w.r.t. t: t.grad would silently stay None.
    t = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    with pytest.raises(ODEInputError, match=r"t requires grad.*t\.detach\(\)"):
        odeint(decay, Y0.clone().requires_grad_(), t, gradient=gradient)
    with torch.no_grad():  # no graph, nothing to lose
        assert odeint(decay, Y0, t).shape == (2, 3)
    assert odeint(decay, Y0, t.detach()).shape == (2, 3)


def test_non_tensor_or_integer_state():
    with pytest.raises(ODEInputError, match="torch.Tensor"):
        odeint(decay, [1.0, 2.0], [0.0, 1.0])
    with pytest.raises(ODEInputError, match="floating dtype"):
        odeint(decay, torch.ones(3, dtype=torch.int64), [0.0, 1.0])


def test_func_returning_wrong_shape_dtype_or_type():
    with pytest.raises(ODEInputError, match=r"shape \(2,\).*expected \(3,\)"):
        odeint(lambda t, y: y[:2], Y0, [0.0, 1.0])
    with pytest.raises(ODEInputError, match="dtype torch.float32"):
        odeint(lambda t, y: y.float(), Y0, [0.0, 1.0])
    with pytest.raises(ODEInputError, match="must return a torch.Tensor"):
        odeint(lambda t, y: 1.0, Y0, [0.0, 1.0])


def test_func_returning_non_finite_at_start():
    with pytest.raises(NonFiniteValueError, match="non-finite"):
        odeint(lambda t, y: y * float("nan"), Y0, [0.0, 1.0])


@pytest.mark.parametrize("method", ["dopri5", "heun"])
def test_func_turning_non_finite_later_in_adaptive_mode(method):
    def field(t, y):
        return torch.where(t > 0.5, torch.full_like(y, float("nan")), -y)

    with pytest.raises(NonFiniteValueError, match=r"non-finite values at t=0\.5"):
        odeint(field, Y0, [0.0, 1.0], method=method)


def test_fixed_step_blow_up_is_reported_not_returned():
    with pytest.raises(NonFiniteValueError, match="blew up"):
        odeint(lambda t, y: y * y, Y0, [0.0, 10.0], method="euler", step_size=0.5)


def test_step_size_underflow_names_t_and_h():
    # y' = y², y(0) = 1 blows up at t = 1: the adaptive step must shrink to nothing there.
    with pytest.raises((StepSizeUnderflowError, NonFiniteValueError)) as info:
        odeint(lambda t, y: y * y, Y0, [0.0, 2.0], rtol=1e-8, atol=1e-8)
    assert info.value.t == pytest.approx(1.0, abs=1e-3)
    if isinstance(info.value, StepSizeUnderflowError):
        assert "h=" in str(info.value) and "at t=" in str(info.value)


def test_max_steps_names_how_far_it_got():
    with pytest.raises(MaxStepsExceededError, match=r"max_steps=5 exceeded at t=.*% of \[0, 100\]") as info:
        odeint(lambda t, y: torch.cos(10 * t) * y, Y0, [0.0, 100.0], rtol=1e-8, atol=1e-8, max_steps=5)
    assert 0 < info.value.t < 100
    with pytest.raises(MaxStepsExceededError, match="needs 1000 steps"):
        odeint(decay, Y0, [0.0, 1.0], method="euler", step_size=1e-3, max_steps=999)


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ODEInputError, match="unknown method 'rk45'; available: .*dopri5"):
        odeint(decay, Y0, [0.0, 1.0], method="rk45")


@pytest.mark.parametrize(
    "options,match",
    [
        ({"rtol": -1e-3}, "rtol must be a finite non-negative"),
        ({"atol": -1.0}, "atol must be a finite non-negative"),
        ({"rtol": math.nan}, "rtol must be"),
        ({"rtol": 0.0, "atol": 0.0}, "both be zero"),
        ({"step_size": 0.0}, "step_size must be positive"),
        ({"step_size": -0.1}, "step_size must be positive"),
        ({"max_steps": 0}, "max_steps must be a positive integer"),
        ({"method": "rk4"}, "no embedded error estimate: give step_size"),
    ],
)
def test_bad_options(options, match):
    with pytest.raises(ODEInputError, match=match):
        odeint(decay, Y0, [0.0, 1.0], **options)


@pytest.mark.parametrize("keywords", [{}, {"method": "rk4", "step_size": 0.1}, {"per_sample": True},
                                      {"method": "backward_euler", "step_size": 0.1}])
def test_func_modifying_its_input_in_place_is_an_error_not_a_silently_wrong_solution(keywords):
    # Before: y' = -max(y, 0) written with clamp_ returned 0 instead of the constant -0.5 for the second
    # component (the state itself was clamped) and changed the caller's y0.
    y0 = torch.tensor([[1.0, -0.5]], dtype=torch.float64)
    with pytest.raises(ODEInputError, match="modified its input y in place"):
        odeint(lambda t, y: -y.clamp_(min=0), y0.clone(), [0.0, 1.0], **keywords)
    expected = odeint(lambda t, y: -y.clamp(min=0), y0, [0.0, 1.0], **keywords)[-1, 0, 1]
    assert float(expected) == -0.5


@pytest.mark.parametrize("keywords", [{}, {"method": "rk4", "step_size": 0.1}, {"per_sample": True}])
def test_func_returning_a_reused_output_buffer_is_an_error_but_a_constant_field_is_fine(keywords):
    # Before: f(t, y) = -y written as torch.neg(y, out=buf); return buf overwrote every stage the solver holds
    # and returned 0.525 for e^{-1} = 0.368 without a word.
    y0 = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    buffer = torch.empty_like(y0)

    def into_buffer(t, y):
        torch.neg(y, out=buffer)
        return buffer

    with pytest.raises(ODEInputError, match="reused output buffer"):
        odeint(into_buffer, y0, [0.0, 1.0], **keywords)
    constant = torch.ones_like(y0)  # the same tensor every time, never written: dy/dt = 1 is fine
    solution = odeint(lambda t, y: constant, y0, [0.0, 1.0], **keywords)[-1]
    torch.testing.assert_close(solution, y0 + 1, rtol=0, atol=1e-14)
