"""Failure as a value (throw=False): the partial solution, a status code and the time reached per sample;
the default still raises with the same message."""

import pytest
import torch

from stability import MaxStepsExceededError, ODEInputError, SolverError, Status, solve
from stability.status import status_of

F64 = torch.float64
TIMES = [0.0, 0.5, 1.5, 3.0]


def van_der_pol(t, y):
    """y = [x, v, μ]: each sample carries its own stiffness μ (constant), so rows stay independent."""
    x, v, mu = y.unbind(-1)
    return torch.stack([v, mu * (1 - x**2) * v - x, torch.zeros_like(mu)], -1)


def oscillators(mu) -> torch.Tensor:
    mu = torch.as_tensor(mu, dtype=F64)
    return torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], -1)


def _error_alone(func, y0, **options) -> SolverError:
    with pytest.raises(SolverError) as caught:
        solve(func, y0, TIMES, per_sample=True, **options)
    return caught.value


def test_one_sample_at_max_steps_leaves_the_others_correct():
    """Sample 2 (μ = 1000) runs out of steps; every other sample's solution, statistics and status are those
    of solving it alone, and sample 2 reports where it stopped, why (the error it would raise) and its
    outputs up to there."""
    y0, options = oscillators([1.0, 2.0, 1000.0, 0.5, 3.0]), dict(rtol=1e-6, atol=1e-6, max_steps=300)
    sol = solve(van_der_pol, y0, TIMES, per_sample=True, throw=False, **options)
    assert not sol.succeeded
    for b in (0, 1, 3, 4):
        alone = solve(van_der_pol, y0[b : b + 1], TIMES, per_sample=True, **options)
        torch.testing.assert_close(sol.ys[:, b], alone.ys[:, 0], rtol=1e-11, atol=1e-12)
        assert sol.stats[b].nfe == alone.stats[0].nfe and sol.status[b] == Status.SUCCESS
        assert sol.t_reached[b] == 3.0 and sol.messages[b] is None
    error = _error_alone(van_der_pol, y0[2:3], **options)
    assert isinstance(error, MaxStepsExceededError)
    assert sol.status[2] == status_of(error) == Status.STIFF  # the max-steps message says it looks stiff
    assert sol.t_reached[2] == error.t and 0.0 < error.t < 0.5
    assert sol.messages[2] == str(error).replace("sample 0:", "sample 2:")
    assert torch.isnan(sol.ys[1:, 2]).all() and torch.equal(sol.ys[0, 2], y0[2])
    assert sol.stats[2].n_steps == 300


def test_max_steps_without_stiffness_is_max_steps():
    y0 = oscillators([1.0, 1.0])
    sol = solve(van_der_pol, y0, TIMES, per_sample=True, throw=False, max_steps=5)
    assert sol.status.tolist() == [Status.MAX_STEPS] * 2
    assert (sol.t_reached < 3.0).all() and torch.isnan(sol.ys[-1]).all()


def test_step_underflow_and_non_finite_status():
    """y' = y² blows up at t = 1/y0 (step underflow); a func NaN beyond t = 0.5 (non-finite); a sample
    that reaches the end meanwhile is a success. Each status is the code of the error solving it alone
    raises, and t_reached its t."""
    blow_up = lambda t, y: y**2  # noqa: E731
    y0 = torch.tensor([[0.5], [2.0], [0.1]], dtype=F64)
    sol = solve(blow_up, y0, TIMES, per_sample=True, throw=False)
    assert sol.status.tolist() == [Status.STEP_UNDERFLOW, Status.STEP_UNDERFLOW, Status.SUCCESS]
    for b in (0, 1):
        error = _error_alone(blow_up, y0[b : b + 1])
        assert sol.status[b] == status_of(error) and sol.t_reached[b] == error.t
    torch.testing.assert_close(sol.t_reached[:2], 1 / y0[:2, 0], rtol=1e-6, atol=0)
    assert torch.isnan(sol.ys[-1, :2]).all() and torch.isfinite(sol.ys[:3, 0]).all()  # 1.5 < 2 = 1/y0
    assert torch.isfinite(sol.ys[:, 2]).all()

    def undefined_late(t, y):
        return torch.where(t[:, None] > 1.0, torch.sqrt(-y), -y)

    sol = solve(undefined_late, torch.tensor([[0.5], [2.0]], dtype=F64), TIMES, per_sample=True, throw=False)
    assert sol.status.tolist() == [Status.NON_FINITE] * 2
    torch.testing.assert_close(sol.t_reached, torch.ones(2, dtype=F64), rtol=0, atol=1e-12)
    assert torch.isfinite(sol.ys[:2]).all() and torch.isnan(sol.ys[2:]).all()


def test_shared_control_fails_as_one_system():
    """Shared control: the batch is one step sequence, so a failure is the whole batch's; the outputs before
    it equal those of a run with enough steps (the same steps up to there), those after are NaN."""
    y0 = oscillators([1.0, 1000.0])
    sol = solve(van_der_pol, y0, TIMES, throw=False, rtol=1e-6, atol=1e-6, max_steps=300)
    assert sol.status.shape == () and sol.status == Status.STIFF and 0.0 < sol.t_reached < 0.5
    with pytest.raises(MaxStepsExceededError) as caught:
        solve(van_der_pol, y0, TIMES, rtol=1e-6, atol=1e-6, max_steps=300)
    assert sol.messages == [str(caught.value)] and sol.t_reached == caught.value.t
    assert torch.equal(sol.ys[0], y0) and torch.isnan(sol.ys[1:]).all()
    fine = solve(van_der_pol, y0[:1], TIMES, throw=False, rtol=1e-6, atol=1e-6, max_steps=300)
    assert fine.succeeded and fine.status == Status.SUCCESS and fine.t_reached == 3.0


def test_fixed_steps_fail_as_a_value():
    blow_up = lambda t, y: y**2  # noqa: E731
    sol = solve(blow_up, torch.tensor([[2.0]], dtype=F64), TIMES, step_size=0.25, method="rk4", throw=False)
    assert sol.status == Status.NON_FINITE
    assert torch.isfinite(sol.ys[:2]).all() and torch.isnan(sol.ys[2:]).all()


def test_checkpointed_gradients_of_the_survivors():
    """throw=False under checkpointing: the gradient of the samples that finished equals backprop's."""
    y0 = oscillators([1.0, 1000.0, 2.0]).requires_grad_(True)
    grads = []
    for gradient in ("backprop", "checkpoint"):
        sol = solve(van_der_pol, y0, TIMES, per_sample=True, throw=False, max_steps=60, rtol=1e-4,
                    atol=1e-4, gradient=gradient)
        (grad,) = torch.autograd.grad(sol.ys[-1, [0, 2]].sum(), y0)
        grads.append(grad)
    assert torch.equal(grads[0], grads[1]) and torch.isfinite(grads[0]).all() and (grads[0][1] == 0).all()


def test_the_default_still_raises_and_bad_values_are_refused():
    with pytest.raises(MaxStepsExceededError, match=r"sample 0: max_steps=5 exceeded"):
        solve(van_der_pol, oscillators([1.0, 1.0]), TIMES, per_sample=True, max_steps=5)
    with pytest.raises(ODEInputError, match="throw must be True or False"):
        solve(van_der_pol, oscillators([1.0]), TIMES, throw=0)
    with pytest.raises(ODEInputError, match="throw=False does not combine with gradient='adjoint'"):
        solve(van_der_pol, oscillators([1.0]), TIMES, throw=False, gradient="adjoint")
