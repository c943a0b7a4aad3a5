"""Theorems 3.1/3.2 checked on the actual schemes: the bounds hold, are attained where they should be, and a
wrong K is caught."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from proofs_check import (
    BoundViolationError,
    lipschitz_lower,
    lipschitz_upper,
    verify_adaptive,
    verify_revnet,
    verify_scheme,
)
from proofs_check.random_networks import ACTIVATIONS, random_conv_residual, random_mlp_residual
from proofs_check.verify import find_step_switch, perturbation, solver_steps, verify_steps
from stability import solve

EXPLICIT = ["euler", "heun", "rk4", "dopri5"]
ALL_METHODS = [*EXPLICIT, "backward_euler"]


def linear_field(matrix: torch.Tensor):
    return lambda t, y: y @ matrix.T


def random_matrix_with_norm(dim: int, norm: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(dim, dim, dtype=torch.float64, generator=generator)
    return matrix * (norm / torch.linalg.svdvals(matrix)[0])


def state_and_perturbation(samples: int, dim: int, log_size: float, seed: int):
    generator = torch.Generator().manual_seed(seed)
    y0 = torch.randn(samples, dim, dtype=torch.float64, generator=generator)
    direction = torch.randn(samples, dim, dtype=torch.float64, generator=generator)
    return y0, direction * (10.0**log_size / direction.norm(dim=1, keepdim=True))


@given(
    dim=st.integers(1, 5),
    k=st.floats(0.01, 5.0),
    h=st.floats(1e-3, 1.0),
    n=st.integers(1, 30),
    log_size=st.floats(-8, 0),
    method=st.sampled_from(ALL_METHODS),
    seed=st.integers(0, 2**31 - 1),
)
def test_every_bound_holds_for_random_linear_fields(dim, k, h, n, log_size, method, seed):
    if method == "backward_euler" and h * k >= 0.9:
        h = 0.5 / k
    matrix = random_matrix_with_norm(dim, k, seed)
    y0, epsilon = state_and_perturbation(3, dim, log_size, seed + 1)
    result = verify_scheme(
        linear_field(matrix),
        y0,
        epsilon,
        method=method,
        lipschitz=k,
        step_size=h,
        n_steps=n,
        on_violation="raise",
    )
    assert not result.violated
    assert result.growth.shape == result.bound.shape == (n + 1, 3)
    assert np.all(result.growth[0] == pytest.approx(1.0, rel=1e-12))


@given(
    k=st.floats(0.05, 5.0),
    h=st.floats(1e-3, 1.0),
    n=st.integers(1, 30),
    log_size=st.floats(-6, 0),
    method=st.sampled_from(["euler", "heun", "rk4", "backward_euler"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_bound_is_attained_exactly_for_a_multiple_of_the_identity(k, h, n, log_size, method, seed):
    """f(y) = K·y: Euler's (1 + hK)^n — and Heun's, RK4's, backward Euler's factors — are the exact growth."""
    if method == "backward_euler" and h * k >= 0.9:
        h = 0.5 / k
    matrix = k * torch.eye(4, dtype=torch.float64)
    y0, epsilon = state_and_perturbation(2, 4, log_size, seed)
    result = verify_scheme(
        linear_field(matrix),
        y0,
        epsilon,
        method=method,
        lipschitz=k,
        step_size=h,
        n_steps=n,
        on_violation="raise",
    )
    np.testing.assert_allclose(result.tightness, 1.0, rtol=1e-7)
    if method == "euler":
        np.testing.assert_allclose(result.bound[:, 0], (1 + h * k) ** np.arange(n + 1), rtol=1e-12)


@given(
    k=st.floats(0.1, 5.0),
    h=st.floats(1e-2, 1.0),
    n=st.integers(1, 20),
    method=st.sampled_from(["euler", "heun", "rk4"]),
    fraction=st.floats(0.0, 0.99),
)
def test_a_too_small_constant_is_detected_on_linear_fields(k, h, n, method, fraction):
    """These bounds are exact for K·I, so any K' < K fails at every step. (Dormand–Prince's bound is so loose
    that only a far smaller K' shows: see the next test.)"""
    matrix = k * torch.eye(3, dtype=torch.float64)
    y0, epsilon = state_and_perturbation(2, 3, -3, 0)
    result = verify_scheme(
        linear_field(matrix),
        y0,
        epsilon,
        method=method,
        lipschitz=fraction * k,
        step_size=h,
        n_steps=n,
        on_violation="ignore",
    )
    assert result.violated
    assert result.violation_mask[1:].all()
    with pytest.raises(BoundViolationError, match="BOUND VIOLATED"):
        result.check()


@given(k=st.floats(0.1, 5.0), h=st.floats(1e-2, 1.0), n=st.integers(1, 20))
def test_dopri5_with_zero_constant_is_detected(k, h, n):
    y0, epsilon = state_and_perturbation(2, 3, -3, 0)
    field = linear_field(k * torch.eye(3, dtype=torch.float64))
    result = verify_scheme(
        field, y0, epsilon, method="dopri5", lipschitz=0.0, step_size=h, n_steps=n, on_violation="ignore"
    )
    assert result.violation_mask[1:].all()


@given(
    seed=st.integers(0, 2**31 - 1),
    conv=st.booleans(),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    k=st.floats(0.1, 3.0),
    h=st.sampled_from([1.0, 0.3, 0.1, 0.01]),
    n=st.integers(1, 12),
    method=st.sampled_from(ALL_METHODS),
    direction=st.sampled_from(["random", "jacobian"]),
)
def test_no_violation_on_random_nonlinear_residual_networks(
    seed, conv, activation, k, h, n, method, direction
):
    """The certified K of a random network (its own certificate, not the rescaling target) bounds growth."""
    if conv:
        residual, shape = random_conv_residual(2, 4, activation=activation, lipschitz=k, seed=seed)
    else:
        residual, shape = random_mlp_residual(5, 8, activation=activation, lipschitz=k, seed=seed), (5,)
    certified = lipschitz_upper(residual, shape, iterations=5).upper
    if method == "backward_euler":  # implicit steps: keep hK < 1, and spare the slow finite-difference JVPs
        h = min(h, 0.5 / certified)
        direction = "random"

    def field(t, y):
        return residual(y)

    y0 = torch.randn(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    steps = solver_steps(field, method, [i * h for i in range(n + 1)], certified)
    epsilon = perturbation(y0, 1e-3, direction=direction, steps=steps, iterations=5, seed=seed)
    result = verify_steps(steps, y0, epsilon, lipschitz=certified, on_violation="raise")
    assert np.all(result.tightness <= 1 + 1e-9)


class BatchOfNetworks(nn.Module):
    """Sample b goes through its own network F_b(y) = W2_b tanh(W1_b y + c1_b) + c2_b."""

    def __init__(self, networks):
        super().__init__()
        self.w1 = torch.stack([net[0].weight for net in networks]).detach()
        self.c1 = torch.stack([net[0].bias for net in networks]).detach()
        self.w2 = torch.stack([net[2].weight for net in networks]).detach()
        self.c2 = torch.stack([net[2].bias for net in networks]).detach()

    def forward(self, y):
        hidden = torch.tanh(torch.einsum("bij,bj->bi", self.w1, y) + self.c1)
        return torch.einsum("bij,bj->bi", self.w2, hidden) + self.c2


@given(
    seed=st.integers(0, 2**31 - 1),
    k=st.floats(0.2, 3.0),
    h=st.sampled_from([1.0, 0.1, 0.01]),
    method=st.sampled_from(ALL_METHODS),
)
def test_hundreds_of_random_networks_per_example_never_violate(seed, k, h, method):
    """64 independent random networks per example (one per batch sample), each certified to exactly K."""
    networks = [random_mlp_residual(4, 6, lipschitz=k, seed=seed + i) for i in range(64)]
    certified = [lipschitz_upper(net, (4,), iterations=1).upper for net in networks]
    assert max(certified) == pytest.approx(k, rel=1e-9)
    batch = BatchOfNetworks(networks)
    if method == "backward_euler" and h * k >= 0.9:
        h = 0.5 / k
    y0, epsilon = state_and_perturbation(64, 4, -3, seed)
    result = verify_scheme(
        lambda t, y: batch(y),
        y0,
        epsilon,
        method=method,
        lipschitz=max(certified),
        step_size=h,
        n_steps=6,
        on_violation="raise",
    )
    assert result.growth.shape == (7, 64)


@given(seed=st.integers(0, 2**31 - 1), activation=st.sampled_from(["relu", "tanh", "elu"]))
def test_a_too_small_constant_is_detected_on_nonlinear_networks(seed, activation):
    """At the witness (y, δ) of the lower bound r, one Euler step with h = 10/r grows |δ| by ≥ hr − 1 = 9,
    which no bound 1 + h·(r/2) = 6 allows: a K below the true constant must be flagged."""
    residual = random_mlp_residual(4, 8, activation=activation, lipschitz=1.0, seed=seed)
    y = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    lower = lipschitz_lower(residual, y, ascent_steps=10, iterations=10, seed=seed)
    best = int(torch.argmax(lower.per_sample))
    r = float(lower.per_sample[best])
    y0, epsilon = lower.points[best : best + 1], lower.perturbations[best : best + 1]

    def field(t, state):
        return residual(state)

    options = {"method": "euler", "step_size": 10 / r, "n_steps": 1}
    wrong = verify_scheme(field, y0, epsilon, lipschitz=r / 2, on_violation="ignore", **options)
    assert wrong.violated and wrong.growth[1, 0] >= 9 * (1 - 1e-6)
    certified = lipschitz_upper(residual, (4,)).upper
    assert not verify_scheme(
        field, y0, epsilon, lipschitz=certified, on_violation="raise", **options
    ).violated


def test_adaptive_run_on_its_own_grid_obeys_the_bound():
    residual = random_mlp_residual(4, 8, lipschitz=1.5, seed=0)

    def field(t, y):
        return residual(y)

    y0, epsilon = state_and_perturbation(3, 4, -3, 1)
    result = verify_adaptive(field, y0, epsilon, lipschitz=1.5, t_span=(0.0, 3.0), rtol=1e-6, atol=1e-9)
    reference = solve(field, y0, [0.0, 3.0], rtol=1e-6, atol=1e-9)
    assert result.unperturbed_steps == reference.stats.n_accepted == result.shared_grid.n_steps
    np.testing.assert_allclose(result.shared_grid.step_sizes, reference.stats.step_sizes, rtol=1e-12)
    assert result.shared_grid.covered and not result.shared_grid.violated
    assert not result.independent.covered


def test_adaptive_step_selection_is_not_lipschitz():
    """Around an accept/reject switch, inputs 1e-12..1e-8·|y0| apart come out a tolerance-sized jump apart:
    the independently adaptive runs grow |ε| by factors no modest Lipschitz constant allows, while the same
    inputs on the shared grid obey the bound."""
    residual = random_mlp_residual(4, 8, activation="relu", lipschitz=2.0, seed=0)  # kinks: rejections

    def field(t, y):
        return residual(y)

    y0, _ = state_and_perturbation(2, 4, 0, 2)
    unit = perturbation(y0, 1.0, seed=0)
    options = {"t_span": (0.0, 5.0), "rtol": 1e-5, "atol": 1e-8}
    switch = find_step_switch(field, y0, unit, max_scale=1.0, **options)
    assert switch is not None and switch.count_lower != switch.count_upper
    assert switch.upper - switch.lower <= 1e-14
    middle = 0.5 * (switch.lower + switch.upper)
    own, shared = [], []
    for size in (1e-12, 1e-10, 1e-8):
        run = verify_adaptive(
            field,
            y0 + (middle - size / 2) * unit,
            size * unit,
            lipschitz=2.0,
            on_violation="ignore",
            **options,
        )
        assert not run.shared_grid.violated
        own.append(run.independent.growth[-1].max())
        shared.append(run.shared_grid.growth[-1].max())
    assert max(shared) < 100
    assert max(own) > 1e4 * max(shared)


@given(
    seed=st.integers(0, 2**31 - 1),
    h=st.sampled_from([1.0, 0.1, 0.01]),
    n=st.integers(1, 10),
    k=st.floats(0.2, 3.0),
)
def test_revnet_coupled_bound(seed, h, n, k):
    nets = [random_mlp_residual(3, 6, lipschitz=k, seed=seed + i) for i in range(2 * n)]
    couplings = [(nets[2 * i], nets[2 * i + 1], k, k) for i in range(n)]
    y0, epsilon = state_and_perturbation(4, 6, -3, seed)
    result = verify_revnet(couplings, y0, epsilon, step_size=h, on_violation="raise")
    assert result.growth.shape == (n + 1, 4)
    scalar = (np.linalg.norm(np.array([[1, h * k], [h * k, 1 + h * h * k * k]]), 2)) ** np.arange(n + 1)
    assert np.all(result.bound <= scalar[:, None] * (1 + 1e-9))


def test_revnet_with_a_wrong_constant_is_flagged():
    identity = nn.Identity()
    y0, epsilon = state_and_perturbation(2, 4, -3, 0)
    result = verify_revnet(
        [(identity, identity, 0.0, 0.0)] * 3, y0, epsilon, step_size=0.5, on_violation="ignore"
    )
    assert result.violated
    assert not verify_revnet([(identity, identity, 1.0, 1.0)] * 3, y0, epsilon, step_size=0.5).violated


def test_violations_warn_by_default():
    y0, epsilon = state_and_perturbation(1, 2, -3, 0)
    field = linear_field(2 * torch.eye(2, dtype=torch.float64))
    with pytest.warns(UserWarning, match="BOUND VIOLATED"):
        verify_scheme(field, y0, epsilon, method="euler", lipschitz=1.0, step_size=0.1, n_steps=2)


@pytest.mark.parametrize(
    ("y0", "epsilon", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3), "non-zero"),
        (torch.zeros(3), torch.ones(3), "batch"),
        (torch.zeros(2, 3), torch.ones(2, 4), "shape"),
        (torch.full((2, 3), math.nan), torch.ones(2, 3), "NaN"),
        (torch.zeros(2, 3, dtype=torch.int64), torch.ones(2, 3), "floating"),
    ],
)
def test_bad_inputs_raise(y0, epsilon, message):
    with pytest.raises(ValueError, match=message):
        verify_scheme(
            linear_field(torch.eye(3)), y0, epsilon, method="euler", lipschitz=1.0, step_size=0.1, n_steps=1
        )


def test_blow_up_is_reported_not_hidden():
    from stability import NonFiniteValueError

    y0, epsilon = state_and_perturbation(1, 2, -3, 0)
    field = linear_field(1e200 * torch.eye(2, dtype=torch.float64))
    with pytest.raises(NonFiniteValueError, match="step"):
        verify_scheme(field, y0, epsilon, method="euler", lipschitz=1e200, step_size=1.0, n_steps=5)
