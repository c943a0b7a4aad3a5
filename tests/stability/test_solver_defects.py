"""Defects found by independent checks (issue 11), each with the test that failed before its fix."""

import math

import pytest
import torch

from stability import (
    ImplicitOptions,
    MaxStepsExceededError,
    NonFiniteValueError,
    ODEInputError,
    Status,
    odeint,
    odeint_adjoint,
    solve,
)

Y0 = torch.ones(4, 3, dtype=torch.float64)


def _late(value_after):
    """-y until t > 0.3, then ``value_after(y)``: a fault that the first evaluation cannot see."""

    def field(t, y):
        return value_after(y) if float(t.max()) > 0.3 else -y

    return field


WRONG_SHAPE = _late(lambda y: -y[:1])  # broadcasts against y: silently wrong without a check
WRONG_DTYPE = _late(lambda y: (-y).float())


@pytest.mark.parametrize(
    "options",
    [dict(), dict(method="rk4", step_size=0.1), dict(per_sample=True), dict(gradient="checkpoint"),
     dict(method="backward_euler", step_size=0.1)],
    ids=["dopri5", "rk4", "per_sample", "checkpoint", "backward_euler"],
)
@pytest.mark.parametrize(
    "field,match", [(WRONG_SHAPE, r"shape \(1, 3\)"), (WRONG_DTYPE, "dtype torch.float32")]
)
def test_output_shape_and_dtype_are_checked_at_every_evaluation(options, field, match):
    with pytest.raises(ODEInputError, match=match):
        odeint(field, Y0, [0.0, 1.0], **options)


def test_adjoint_checks_the_output_in_the_backward_pass_too():
    calls = {"n": 0}

    def field(t, y):  # right in the forward pass, wrong in the backward pass
        calls["n"] += 1
        return -y if calls["n"] <= 41 else -y[:1]  # 41 = f0 + 10 RK4 steps

    y0 = Y0.clone().requires_grad_()
    ys = odeint_adjoint(field, y0, [0.0, 1.0], method="rk4", step_size=0.1)
    with pytest.raises(ODEInputError, match=r"shape \(1, 3\)"):
        ys[-1].sum().backward()


def test_adjoint_runs_or_raises_never_silent_backprop():
    weight = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)

    def field(t, y):
        return -weight * y

    with pytest.raises(ODEInputError, match="adjoint_params"):
        odeint_adjoint(field, Y0, [0.0, 1.0], adjoint_params=[])
    ys = odeint_adjoint(lambda t, y: -y, Y0, [0.0, 1.0])  # nothing requires grad: a plain solve, no graph
    assert not ys.requires_grad
    ys = odeint_adjoint(field, Y0, [0.0, 1.0], adjoint_params=[weight])  # listed: the adjoint runs
    (grad,) = torch.autograd.grad(ys[-1].sum(), [weight])
    assert grad.item() == pytest.approx(-12 * math.exp(-0.5), rel=1e-6)


def test_float16_and_bfloat16_are_refused_below_their_resolution_and_work_above():
    for dtype in (torch.float16, torch.bfloat16):
        with pytest.raises(ODEInputError, match=f"{dtype}.*float32"):
            odeint(lambda t, y: -y, torch.ones(3, dtype=dtype), [0.0, 1.0])  # default rtol = 1e-7
        with pytest.raises(ODEInputError, match=str(dtype)):
            odeint(lambda t, y: -y, torch.ones(3, dtype=dtype), [0.0, 1.0], per_sample=True)
    sol = solve(lambda t, y: -y, torch.ones(3, dtype=torch.float16), [0.0, 1.0], rtol=1e-2, atol=1e-3)
    assert sol.ys.dtype == torch.float16 and sol.stats.nfe < 60
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 1e-2
    sol = solve(lambda t, y: -y, torch.ones(3, dtype=torch.bfloat16), [0.0, 1.0], rtol=0.1, atol=1e-3)
    assert abs(float(sol.ys[-1, 0]) - math.exp(-1)) < 0.05


NAN_AFTER_HALF = _late(lambda y: torch.full_like(y, math.nan))


def _nan_after(t0):
    def field(t, y):
        return torch.where(t > t0, torch.full_like(y, math.nan), -y)

    return field


@pytest.mark.parametrize("method", ["euler", "rk4", "dopri5"])
def test_fixed_step_non_finite_is_reported_at_its_step_not_at_the_next_output(method):
    with pytest.raises(NonFiniteValueError) as info:
        odeint(_nan_after(0.5), Y0, [0.0, 1.0], method=method, step_size=0.1)
    first = 0.6 if method == "euler" else 0.5  # Euler evaluates f only at step starts
    assert info.value.t == pytest.approx(first) and info.value.h == pytest.approx(0.1)
    assert "func returned non-finite values at t=" in str(info.value)


def test_backward_euler_reports_non_finite_func_not_non_convergence():
    with pytest.raises(NonFiniteValueError, match="backward Euler step from t=0.5") as info:
        odeint(_nan_after(0.55), Y0, [0.0, 1.0], method="backward_euler", step_size=0.1)
    assert info.value.t == pytest.approx(0.5)


class _NaNGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, y):
        return y.clone()

    @staticmethod
    def backward(ctx, grad):
        return torch.full_like(grad, math.nan)


def test_non_finite_in_the_adjoint_backward_pass_is_named_as_such():
    y0 = Y0.clone().requires_grad_()
    ys = odeint_adjoint(lambda t, y: -_NaNGradient.apply(y), y0, [0.0, 0.5, 1.0], rtol=1e-6, atol=1e-6)
    assert bool(torch.isfinite(ys).all())
    with pytest.raises(NonFiniteValueError, match=r"adjoint backward pass .* from t=1 back to t=0.5") as info:
        ys.sum().backward()
    assert "initial state" not in str(info.value) and info.value.t == pytest.approx(1.0)


def test_solve_accepts_implicit_options():
    stiff = lambda t, y: -5.0 * torch.sinh(y - torch.cos(t))  # noqa: E731
    tight = solve(stiff, Y0, [0.0, 1.0], method="backward_euler", step_size=0.1,
                  implicit=ImplicitOptions(tol=1e-13))
    loose = solve(stiff, Y0, [0.0, 1.0], method="backward_euler", step_size=0.1,
                  implicit=ImplicitOptions(tol=1e-4, max_newton=1))
    assert tight.stats.newton_iterations > loose.stats.newton_iterations
    with pytest.raises(ODEInputError, match=r"implicit options apply to the implicit methods \("):
        solve(stiff, Y0, [0.0, 1.0], implicit=ImplicitOptions())


def test_no_sliver_step_at_the_end_of_the_interval():
    """Lorenz at 1e-3: scipy's RK45 ends with a step of 3% of the one before; we stretch that step to the
    end (its error is still controlled) and take one step fewer, with the same error."""
    from bench.nfe_suite import run

    row = run("lorenz", 1e-3)
    assert row.nfe == row.nfe_rk45 - 6 and row.error <= 1.01 * row.error_rk45
    lorenz = solve(__import__("bench.nfe_suite").nfe_suite.lorenz, torch.ones(3, dtype=torch.float64),
                   [0.0, 2.0], rtol=1e-3, atol=1e-3)
    last, before = lorenz.stats.step_sizes[-2:]
    assert before > 0.5 * last


@pytest.mark.parametrize("per_sample", [False, True])
def test_max_steps_on_a_stiff_problem_suggests_the_stiff_methods(per_sample):
    column = (lambda t: t[:, None]) if per_sample else (lambda t: t)
    stiff = lambda t, y: -1e5 * (y - torch.cos(column(t)))  # noqa: E731
    with pytest.raises(MaxStepsExceededError, match="looks stiff .*method='rodas4' .* or 'kvaerno5'"):
        odeint(stiff, Y0, [0.0, 10.0], rtol=1e-6, atol=1e-6, max_steps=500, per_sample=per_sample)
    failed = solve(stiff, Y0, [0.0, 10.0], rtol=1e-6, atol=1e-6, max_steps=500, per_sample=per_sample,
                   throw=False)  # as a value: the STIFF status, the message with the hint
    assert (failed.status == Status.STIFF).all() and "method='rodas4'" in failed.messages[0]
    for method in ("rodas4", "kvaerno5"):  # and the hint is right: the stiff methods need few steps
        solved = solve(stiff, Y0, [0.0, 10.0], method=method, rtol=1e-6, atol=1e-6, max_steps=500,
                       per_sample=per_sample)
        assert (solved.status == Status.SUCCESS).all()
        steps = max(s.n_steps for s in solved.stats) if per_sample else solved.stats.n_steps
        assert steps < 100
        assert torch.allclose(solved.ys[-1], torch.cos(torch.tensor(10.0, dtype=Y0.dtype)).expand_as(Y0),
                              atol=1e-4)
    with pytest.raises(MaxStepsExceededError) as info:  # not stiff, just long: no such hint
        odeint(lambda t, y: torch.cos(10 * column(t)) * y, Y0, [0.0, 100.0], rtol=1e-8, atol=1e-8,
               max_steps=5, per_sample=per_sample)
    assert "stiff" not in str(info.value)


@pytest.mark.parametrize("per_sample", [False, True])
def test_the_end_of_interval_stretch_respects_max_step(per_sample):
    t1 = 0.095 * 11.05  # after ten steps of max_step, 1.05 max_step remain: no stretch beyond max_step
    sol = solve(lambda t, y: -y, Y0, [0.0, t1], rtol=1e-3, atol=1e-3, max_step=0.095, per_sample=per_sample)
    steps = sol.stats[0].step_sizes if per_sample else sol.stats.step_sizes
    assert max(steps) <= 0.095 * (1 + 1e-12) and abs(sum(steps) - t1) < 1e-12 and len(steps) == 12
