"""Step-control options: the PID controller, min_step/force_min_step, per-sample tolerances, named norms."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.integrate import solve_ivp

from stability import (
    ODEInputError,
    PIController,
    PIDController,
    SolverOptions,
    StepSizeUnderflowError,
    solve,
    solve_per_sample,
)
from stability.pid_controller import PRESETS
from tests.problems import van_der_pol

T_OUT = torch.tensor([0.0, 0.7, 3.0], dtype=torch.float64)


def _initial_states(n: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 2, dtype=torch.float64, generator=g) * torch.linspace(0.2, 2.5, n,
                                                                                dtype=torch.float64)[:, None]


def _reference(y0: torch.Tensor, t1: float) -> torch.Tensor:
    def f(t, y):
        return van_der_pol(torch.tensor(t), torch.from_numpy(y).view(y0.shape)).reshape(-1).numpy()
    ref = solve_ivp(f, (0.0, t1), y0.reshape(-1).numpy(), method="DOP853", rtol=1e-13, atol=1e-13)
    return torch.from_numpy(ref.y[:, -1]).view(y0.shape)


def test_pid_default_is_the_integral_controller_step_for_step():
    """PIDController() (p = d = 0, i = 1) is scipy's I controller: the very steps of PIController(beta=0)."""
    y0 = _initial_states()
    pid = solve(van_der_pol, y0, T_OUT, rtol=1e-7, atol=1e-9, controller=PIDController())
    pi = solve(van_der_pol, y0, T_OUT, rtol=1e-7, atol=1e-9, controller=PIController())
    assert pid.stats.step_sizes == pi.stats.step_sizes and pid.stats.n_rejected == pi.stats.n_rejected
    assert torch.equal(pid.ys, pi.ys)


@pytest.mark.parametrize("name", [name for name in PRESETS if name != "I"])
def test_pid_presets_take_their_own_steps_and_meet_the_tolerance(name):
    y0 = _initial_states()
    pid = solve(van_der_pol, y0, T_OUT, rtol=1e-7, atol=1e-9, controller=PIDController.preset(name))
    pi = solve(van_der_pol, y0, T_OUT, rtol=1e-7, atol=1e-9)
    assert pid.stats.step_sizes != pi.stats.step_sizes  # the P (and I) terms changed the sequence
    error = float((pid.ys[-1] - _reference(y0, 3.0)).abs().max())
    assert error < 1e-5  # global error a few hundred times the local tolerance at most


@given(ratio=st.floats(1e-3, 50.0), r1=st.floats(1e-4, 5.0), r2=st.floats(1e-4, 5.0),
       p=st.floats(0.0, 0.5), i=st.floats(0.1, 1.0), d=st.floats(0.0, 0.3))
def test_pid_factor_is_diffrax_formula(ratio, r1, r2, p, i, d):
    """h_{n+1}/h_n = safety·r_n^{−(i+p+d)/k}·r_{n−1}^{(p+2d)/k}·r_{n−2}^{−d/k}, clipped; k = q + 1 = 5."""
    controller = PIDController(pcoeff=p, icoeff=i, dcoeff=d)
    raw = 0.9 * ratio ** (-(i + p + d) / 5) * r1 ** ((p + 2 * d) / 5) * r2 ** (-d / 5)
    if ratio <= 1:
        factor = controller.accept_factor(ratio, (r1, r2), 4, after_reject=False)
        assert factor == pytest.approx(min(10.0, max(0.2, raw)), rel=1e-12)
        assert controller.accept_factor(ratio, (r1, r2), 4, after_reject=True) == pytest.approx(
            min(1.0, min(10.0, max(0.2, raw))), rel=1e-12)
    else:
        expected = min(1.0, max(0.2, raw))
        assert controller.reject_factor(ratio, 4, (r1, r2)) == pytest.approx(expected, rel=1e-12)
    as_tensor = lambda x: torch.tensor([x], dtype=torch.float64)  # noqa: E731
    batch = controller.factors(as_tensor(ratio), (as_tensor(r1), as_tensor(r2)), 4, torch.tensor([False]))
    scalar = (controller.accept_factor(ratio, (r1, r2), 4, False) if ratio <= 1
              else controller.reject_factor(ratio, 4, (r1, r2)))
    assert float(batch[0]) == pytest.approx(scalar, rel=1e-12)


def test_pid_per_sample_equals_each_sample_alone():
    y0 = _initial_states(3)
    controller = PIDController.preset("PI-0.4-0.3")
    batch = solve_per_sample(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6, controller=controller)
    for b in range(y0.shape[0]):
        alone = solve(van_der_pol, y0[b : b + 1], T_OUT, rtol=1e-6, atol=1e-6, controller=controller)
        torch.testing.assert_close(batch.ys[:, b], alone.ys[:, 0], rtol=1e-11, atol=1e-12)
        assert (batch.stats[b].n_accepted, batch.stats[b].n_rejected) == (alone.stats.n_accepted,
                                                                           alone.stats.n_rejected)


def test_pid_settings_are_validated():
    for bad in (dict(pcoeff=math.nan), dict(icoeff=0.0), dict(safety=1.5), dict(pcoeff=True)):
        with pytest.raises(ValueError):
            PIDController(**bad)
    with pytest.raises(ValueError, match="unknown PID preset"):
        PIDController.preset("PID-fast")
    with pytest.raises(ODEInputError, match="controller must be a PIController or a PIDController"):
        SolverOptions(controller="pid")


def blow_up(t, y):  # y' = y², y(0) = 1: y = 1/(1 − t), singular at t = 1
    return y * y


def test_min_step_refuses_to_go_below_it():
    y0 = torch.ones(1, dtype=torch.float64)
    with pytest.raises(StepSizeUnderflowError, match="below min_step=0.001"):
        solve(blow_up, y0, [0.0, 0.999], rtol=1e-8, atol=1e-8, min_step=1e-3)
    solve(blow_up, y0, [0.0, 0.999], rtol=1e-8, atol=1e-8, min_step=1e-6)  # never needed: unchanged


def test_min_step_with_throw_false_is_a_step_underflow_status():
    from stability.status import Status

    y0 = torch.ones(2, 1, dtype=torch.float64)
    for per_sample in (False, True):
        sol = solve(blow_up, y0, [0.0, 0.5, 0.999], rtol=1e-8, atol=1e-8, min_step=1e-3, throw=False,
                    per_sample=per_sample)
        assert bool((sol.status == Status.STEP_UNDERFLOW).all()) and bool(sol.ys[-1].isnan().all())
        torch.testing.assert_close(sol.ys[1], torch.full_like(y0, 2.0), rtol=1e-6, atol=0)  # y(0.5) = 2


def test_force_min_step_steps_on_at_min_step():
    y0 = torch.ones(1, dtype=torch.float64)
    free = solve(blow_up, y0, [0.0, 0.99], rtol=1e-8, atol=1e-8)
    forced = solve(blow_up, y0, [0.0, 0.99], rtol=1e-8, atol=1e-8, min_step=1e-3, force_min_step=True)
    assert min(free.stats.step_sizes) < 1e-3
    sizes = forced.stats.step_sizes[:-1]  # the last step may be clipped to the end of the interval
    assert min(sizes) == pytest.approx(1e-3, rel=1e-12) and forced.stats.n_accepted < free.stats.n_accepted
    assert abs(float(forced.ys[-1, 0]) - 100.0) < 1.0  # still near y(0.99) = 100, without error control
    per_sample = solve_per_sample(blow_up, torch.ones(2, 1, dtype=torch.float64), [0.0, 0.99], rtol=1e-8,
                                  atol=1e-8, min_step=1e-3, force_min_step=True)
    assert per_sample.stats[0].step_sizes == pytest.approx(forced.stats.step_sizes, rel=1e-12)
    with pytest.raises(StepSizeUnderflowError, match="sample 0: .*below min_step"):
        solve_per_sample(blow_up, torch.ones(2, 1, dtype=torch.float64), [0.0, 0.999], rtol=1e-8, atol=1e-8,
                         min_step=1e-3)


def test_min_step_options_are_validated():
    for bad, match in [(dict(force_min_step=True), "needs a min_step > 0"),
                       (dict(min_step=-1.0), "min_step must be"),
                       (dict(min_step=2.0, max_step=1.0), "min_step must be"),
                       (dict(min_step=0.1, step_size=0.2), "control adaptive steps"),
                       (dict(force_min_step=1), "force_min_step must be True or False")]:
        with pytest.raises(ODEInputError, match=match):
            SolverOptions(**bad)


def test_per_sample_tolerances_equal_each_sample_alone_at_its_own():
    y0 = _initial_states()
    rtol = torch.logspace(-3, -8, y0.shape[0], dtype=torch.float64)
    atol = rtol / 10
    batch = solve_per_sample(van_der_pol, y0, T_OUT, rtol=rtol, atol=atol)
    for b in range(y0.shape[0]):
        alone = solve(van_der_pol, y0[b : b + 1], T_OUT, rtol=float(rtol[b]), atol=float(atol[b]))
        torch.testing.assert_close(batch.ys[:, b], alone.ys[:, 0], rtol=1e-11, atol=1e-12)
        assert batch.stats[b].nfe == alone.stats.nfe
    assert batch.stats[0].nfe < batch.stats[-1].nfe  # the tight sample worked harder


def test_per_sample_tolerances_need_per_sample_mode_and_one_value_per_sample():
    y0 = _initial_states()
    with pytest.raises(ODEInputError, match="per_sample=True"):
        solve(van_der_pol, y0, T_OUT, rtol=torch.full((6,), 1e-6, dtype=torch.float64))
    with pytest.raises(ODEInputError, match="has 3 values, but y0 holds 6 samples"):
        solve_per_sample(van_der_pol, y0, T_OUT, rtol=torch.full((3,), 1e-6, dtype=torch.float64))
    with pytest.raises(ODEInputError, match="finite non-negative values"):
        SolverOptions(per_sample=True, rtol=torch.tensor([1e-3, -1.0]))


def _max_norm(error, y_old, y_new, rtol, atol):
    return float((error / (atol + rtol * torch.maximum(y_old.abs(), y_new.abs()))).abs().max())


def test_named_norms():
    y0 = _initial_states()
    named = solve(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6, norm="max")
    own = solve(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6, norm=_max_norm)
    rms = solve(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6, norm="rms")
    default = solve(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6)
    assert named.stats.step_sizes == own.stats.step_sizes  # the max norm, as written by hand
    assert rms.stats.step_sizes == default.stats.step_sizes
    assert named.stats.nfe > default.stats.nfe  # max ≥ RMS: stricter
    per_sample = solve_per_sample(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6, norm="max")
    alone = solve(van_der_pol, y0[2:3], T_OUT, rtol=1e-6, atol=1e-6, norm="max")
    assert per_sample.stats[2].nfe == alone.stats.nfe


@pytest.mark.slow
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
def test_pid_and_per_sample_tolerances_under_every_gradient(per_sample):
    """Checkpointed gradients equal backprop's bit for bit (the re-run retraces the PID memory); the adjoint's
    agree to its tolerance (its shared backward solve runs at the strictest per-sample tolerance)."""
    y0 = _initial_states(3).requires_grad_()
    tol = torch.tensor([1e-8, 1e-10, 1e-9], dtype=torch.float64) if per_sample else 1e-9
    options = SolverOptions(rtol=tol, atol=tol, per_sample=per_sample,
                            controller=PIDController.preset("PI-smooth"))
    grads = {}
    for gradient in ("backprop", "checkpoint", "adjoint"):
        ys = solve(van_der_pol, y0, [0.0, 0.5, 1.0], options.replace(gradient=gradient)).ys
        grads[gradient] = torch.autograd.grad((ys * ys).sum(), y0)[0]
    assert torch.equal(grads["checkpoint"], grads["backprop"])
    torch.testing.assert_close(grads["adjoint"], grads["backprop"], rtol=1e-5, atol=1e-6)
