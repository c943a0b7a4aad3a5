"""Adaptive Dormand–Prince against scipy: accuracy at the requested tolerance and the same amount of work."""

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from stability import Dopri5, odeint, solve
from tests.problems import (
    LINEAR_MATRIX,
    forced_duffing,
    linear_exact,
    linear_field,
    scipy_reference,
    van_der_pol,
)

PROBLEMS = {
    "van_der_pol": (van_der_pol, [2.0, 0.0], 10.0),
    "forced_duffing": (forced_duffing, [1.0, 0.0], 10.0),
    "linear": (linear_field(LINEAR_MATRIX), [1.0, -0.5, 0.25], 5.0),
}


def _numpy_field(name):
    if name == "linear":
        return lambda t, y: LINEAR_MATRIX @ y
    return {"van_der_pol": van_der_pol, "forced_duffing": forced_duffing}[name]


@pytest.mark.parametrize("name", PROBLEMS)
def test_dopri5_meets_tolerance_and_matches_scipy_work(name):
    func, y0, t_end = PROBLEMS[name]
    t_eval = np.linspace(0.0, t_end, 11)
    reference = scipy_reference(_numpy_field(name), y0, t_eval)
    tol = 1e-6
    sol = solve(func, torch.tensor(y0, dtype=torch.float64), torch.tensor(t_eval), rtol=tol, atol=tol)
    error = np.abs(sol.ys.numpy() - reference).max()
    assert error <= 10 * tol * max(1.0, np.abs(reference).max())
    scipy_rk45 = solve_ivp(_numpy_field(name), (0.0, t_end), y0, method="RK45", rtol=tol, atol=tol)
    assert abs(sol.stats.nfe - scipy_rk45.nfev) <= 0.15 * scipy_rk45.nfev
    assert sol.stats.nfe == 2 + 6 * sol.stats.n_steps  # f0, the initial-step probe, 6 per step (FSAL)


def test_i_controller_reproduces_scipy_step_sequence_exactly():
    """With β = 0 our controller is scipy's RK45 controller, so the work must be identical."""
    from stability import PIController

    sol = solve(
        van_der_pol,
        torch.tensor([2.0, 0.0], dtype=torch.float64),
        [0.0, 10.0],
        rtol=1e-6,
        atol=1e-6,
        controller=PIController(beta=0.0),
    )
    ref = solve_ivp(van_der_pol, (0.0, 10.0), [2.0, 0.0], method="RK45", rtol=1e-6, atol=1e-6)
    assert sol.stats.nfe == ref.nfev
    np.testing.assert_allclose(sol.ys[-1].numpy(), ref.y[:, -1], rtol=1e-10)


def test_output_times_do_not_shorten_steps():
    func, y0, t_end = PROBLEMS["van_der_pol"]
    y0 = torch.tensor(y0, dtype=torch.float64)
    coarse = solve(func, y0, [0.0, t_end], rtol=1e-6, atol=1e-6)
    dense = solve(func, y0, torch.linspace(0, t_end, 200, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert dense.stats.step_sizes == coarse.stats.step_sizes
    assert dense.stats.nfe == coarse.stats.nfe


def test_decreasing_time_integrates_backwards():
    y0 = np.array([1.0, -0.5, 0.25])
    t = torch.tensor([3.0, 1.5, 0.0], dtype=torch.float64)
    ys = odeint(linear_field(LINEAR_MATRIX), torch.tensor(y0), t, rtol=1e-9, atol=1e-9)
    for i, ti in enumerate(t.tolist()):
        np.testing.assert_allclose(ys[i].numpy(), linear_exact(LINEAR_MATRIX, y0, ti - 3.0), atol=1e-7)


def test_batched_float32_state_keeps_shape_and_accuracy():
    y0 = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    matrix = torch.as_tensor(LINEAR_MATRIX, dtype=torch.float32)
    ys = odeint(lambda t, y: y @ matrix.T, y0, [0.0, 1.0], rtol=1e-5, atol=1e-6)
    assert ys.shape == (2, 5, 3) and ys.dtype == torch.float32
    exact = np.stack([linear_exact(LINEAR_MATRIX, y.double().numpy(), 1.0) for y in y0])
    np.testing.assert_allclose(ys[-1].numpy(), exact, atol=1e-4)


def test_solver_object_steps_like_scipy():
    solver = Dopri5(
        van_der_pol, 0.0, torch.tensor([2.0, 0.0], dtype=torch.float64), 2.0, rtol=1e-8, atol=1e-8
    )
    times = [solver.t]
    while solver.status == "running":
        solver.step()
        times.append(solver.t)
        assert solver.t_old < solver.t and solver.dense_output()(solver.t_old).allclose(solver.y_old)
    assert times[-1] == 2.0 and solver.status == "finished"
    assert len(times) - 1 == solver.stats.n_accepted == len(solver.stats.step_sizes)
    reference = scipy_reference(van_der_pol, [2.0, 0.0], [0.0, 2.0])[-1]
    np.testing.assert_allclose(solver.y.numpy(), reference, atol=1e-6)
    with pytest.raises(RuntimeError, match="finished"):
        solver.step()


def test_adaptive_heun_converges_with_tolerance():
    func, y0, t_end = PROBLEMS["linear"]
    exact = linear_exact(LINEAR_MATRIX, np.array(y0), t_end)
    errors = [
        np.abs(
            odeint(
                func, torch.tensor(y0, dtype=torch.float64), [0.0, t_end], method="heun", rtol=tol, atol=tol
            )[-1].numpy()
            - exact
        ).max()
        for tol in (1e-3, 1e-5)
    ]
    assert errors[1] < errors[0] / 10
