"""Per-sample step control: sample b's solution and work are those of solving it alone, in any batch."""

import pytest
import torch

from stability import (
    MaxStepsExceededError,
    ODEInputError,
    PerSampleSolution,
    odeint,
    odeint_per_sample,
    solve,
    solve_per_sample,
)
from tests.problems import forced_duffing, van_der_pol

T_OUT = torch.tensor([0.0, 0.3, 1.7, 4.0], dtype=torch.float64)


def _initial_states(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.1, 3.0, n, dtype=torch.float64)[:, None]  # different difficulty per sample
    return torch.randn(n, 2, dtype=torch.float64, generator=g) * scales


@pytest.mark.parametrize(
    "field,method",
    [(van_der_pol, "dopri5"), (forced_duffing, "dopri5"), (van_der_pol, "heun")],
    ids=["vdp-dopri5", "duffing-dopri5", "vdp-heun"],
)
def test_each_sample_equals_solving_it_alone(field, method):
    """forced_duffing is non-autonomous: t arrives per sample, shape [B], and broadcasts against y[..., 0]."""
    y0 = _initial_states()
    tol = dict(rtol=1e-6, atol=1e-6) if method == "dopri5" else dict(rtol=1e-3, atol=1e-3)
    batch = solve_per_sample(field, y0, T_OUT, method=method, **tol)
    assert isinstance(batch, PerSampleSolution) and batch.ys.shape == (len(T_OUT), 16, 2)
    for b in range(16):
        alone = solve(field, y0[b : b + 1], T_OUT, method=method, **tol)
        torch.testing.assert_close(batch.ys[:, b], alone.ys[:, 0], rtol=1e-11, atol=1e-12)
        assert batch.stats[b].nfe == alone.stats.nfe
        assert batch.stats[b].n_accepted == alone.stats.n_accepted
        assert batch.stats[b].n_rejected == alone.stats.n_rejected
        # error estimates are differences of nearly equal stages: round-off shows at ~1e-9 in h
        assert batch.stats[b].step_sizes == pytest.approx(alone.stats.step_sizes, rel=1e-6)
    assert len(set(batch.nfe)) > 3  # the samples really did take different steps


def test_shared_mode_couples_the_batch():
    """The default (shared) mode: one step sequence for the batch, so every sample's result depends on its
    companions — at the tolerance level, with the same work for all."""
    y0 = _initial_states()
    shared = solve(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6)
    per_sample = solve_per_sample(van_der_pol, y0, T_OUT, rtol=1e-6, atol=1e-6)
    difference = (shared.ys - per_sample.ys).abs().amax(dim=(0, 2))
    assert difference.max() > 1e-8  # far above round-off: the batch changed the answer…
    assert difference.max() < 1e-3  # …within what the tolerance allows
    # one step sequence for all: the easy samples pay for the hard ones
    assert shared.stats.nfe > min(per_sample.nfe) and sum(per_sample.nfe) < len(y0) * shared.stats.nfe
    # sample 0 with other companions: shared mode changes it, per-sample mode does not
    other = torch.cat([y0[:1], _initial_states(7, seed=1)])
    assert not torch.equal(solve(van_der_pol, other, T_OUT, rtol=1e-6, atol=1e-6).ys[:, 0], shared.ys[:, 0])
    again = odeint(van_der_pol, other, T_OUT, rtol=1e-6, atol=1e-6, per_sample=True)
    torch.testing.assert_close(again[:, 0], per_sample.ys[:, 0], rtol=1e-12, atol=1e-13)


def test_func_sees_only_active_samples_with_their_own_times():
    sizes, distinct_times = [], []

    def decay(t, y):  # y = [value, rate], rate constant: each row carries its own problem
        assert t.shape == (y.shape[0],)
        sizes.append(y.shape[0])
        distinct_times.append(len(set(t.tolist())))
        return torch.stack([-y[:, 1] * y[:, 0], torch.zeros_like(t)], dim=1)

    rates = torch.tensor([0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0], dtype=torch.float64)
    y0 = torch.stack([torch.ones_like(rates), rates], dim=1)
    sol = solve_per_sample(decay, y0, [0.0, 1.0], rtol=1e-8, atol=1e-8)
    assert sizes[0] == 8 and min(sizes) < 8  # finished samples drop out of the evaluations
    assert max(distinct_times) > 1
    assert sol.nfe[0] < sol.nfe[-1] and sum(sol.nfe) < 8 * max(sol.nfe)
    torch.testing.assert_close(sol.ys[-1, :, 0], torch.exp(-rates), rtol=1e-6, atol=1e-7)


def test_gradients_match_the_samples_solved_alone():
    weight = torch.tensor([[0.2, -1.0], [1.0, -0.3]], dtype=torch.float64, requires_grad=True)

    def field(t, y):  # t is [B] per sample, 0-d when solved alone: reshape broadcasts both
        return torch.tanh(y @ weight.T) + 0.1 * t.reshape(-1, 1)

    y0 = _initial_states(6).requires_grad_()
    ys = odeint_per_sample(field, y0, T_OUT, rtol=1e-8, atol=1e-8)
    grad_y0, grad_w = torch.autograd.grad(ys.sum(), [y0, weight])
    total_w = torch.zeros_like(weight)
    for b in range(6):
        alone = odeint(field, y0[b : b + 1], T_OUT, rtol=1e-8, atol=1e-8)
        g_y0, g_w = torch.autograd.grad(alone.sum(), [y0, weight])
        torch.testing.assert_close(grad_y0[b], g_y0[b], rtol=1e-9, atol=1e-11)
        total_w += g_w
    torch.testing.assert_close(grad_w, total_w, rtol=1e-9, atol=1e-11)


def test_float32_fixed_step_and_errors():
    y0 = _initial_states(4).float()
    sol = solve_per_sample(van_der_pol, y0, [0.0, 1.0], rtol=1e-4, atol=1e-5)
    assert sol.ys.dtype == torch.float32
    alone = solve(van_der_pol, y0[2:3], [0.0, 1.0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(sol.ys[:, 2], alone.ys[:, 0], rtol=1e-5, atol=1e-6)
    assert sol.stats[2].nfe == alone.stats.nfe
    fixed = solve_per_sample(forced_duffing, y0.double(), [0.0, 1.0], method="rk4", step_size=0.1)
    torch.testing.assert_close(
        fixed.ys, odeint(forced_duffing, y0.double(), [0.0, 1.0], method="rk4", step_size=0.1)
    )
    assert len(fixed.stats) == 4 and fixed.stats[0].n_accepted == 10
    with pytest.raises(MaxStepsExceededError, match=r"sample \d+: max_steps=3 exceeded"):
        solve_per_sample(van_der_pol, y0.double(), [0.0, 10.0], max_steps=3)
    with pytest.raises(ODEInputError, match="leading batch dimension"):
        solve_per_sample(lambda t, y: -y, torch.tensor(1.0, dtype=torch.float64), [0.0, 1.0])
    # per-sample control works with every gradient strategy (tests/stability/test_per_sample_gradients.py)
    assert odeint(van_der_pol, y0, [0.0, 1.0], per_sample=True, gradient="adjoint").shape == (2, 4, 2)


def _conv_field(norm: str) -> torch.nn.Module:
    torch.manual_seed(0)
    layer = torch.nn.GroupNorm(2, 4) if norm == "group" else torch.nn.BatchNorm2d(4)
    return torch.nn.Sequential(layer, torch.nn.Tanh(), torch.nn.Conv2d(4, 4, 3, padding=1)).double()


def test_group_norm_fields_keep_independence_batch_norm_does_not():
    """GroupNorm normalises within a sample; train-mode BatchNorm mixes the batch, so no step control can
    make samples independent — as documented in ``stability.per_sample``."""
    y0 = torch.randn(5, 4, 5, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for norm, independent in (("group", True), ("batch", False)):
        net = _conv_field(norm)
        field = lambda t, y, net=net: net(y)  # noqa: E731
        batch = solve_per_sample(field, y0, [0.0, 0.5], rtol=1e-6, atol=1e-6)
        alone = solve(field, y0[:1], [0.0, 0.5], rtol=1e-6, atol=1e-6)
        close = torch.allclose(batch.ys[-1, 0], alone.ys[-1, 0], rtol=1e-9, atol=1e-11)
        assert close == independent
