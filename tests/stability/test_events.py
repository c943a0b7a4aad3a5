"""Events: crossing times against closed forms, gradients against finite differences, per-sample equal to
alone, terminal events stopping their sample only, and the refusals."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from stability import Event, EventSolution, ODEInputError, SolverError, Status, solve
from stability.events import locate
from tests.problems import DragProjectile, G, launch, projectile

F64 = torch.float64
TIGHT = dict(rtol=1e-12, atol=1e-12)


def ground(height=0.0, terminal=True) -> Event:
    return Event(lambda t, y: y[:, 1] - height, direction=-1, terminal=terminal)


APEX = Event(lambda t, y: y[:, 3], direction=-1)  # vz falls through 0: the top of the arc


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3"])
@pytest.mark.parametrize("per_sample", [False, True], ids=["shared", "per-sample"])
def test_projectile_landing_and_apex_times_are_analytic(method, per_sample):
    """z(t) = z0 + vz t − g t²/2 lands at (vz + √(vz² + 2 g z0))/g and peaks at vz/g: within 1e-10 in float64
    (each method's interpolant is exact on a quadratic; the root solve reaches the resolution of t)."""
    vz = torch.linspace(0.5, 12.0, 8, dtype=F64)
    y0 = launch(torch.linspace(0.2, 3.0, 8), torch.ones(8), vz)
    sol = solve(projectile, y0, [0.0, 0.1, 5.0], events=[ground(), APEX], per_sample=per_sample,
                method=method, rtol=1e-8, atol=1e-10)
    assert isinstance(sol, EventSolution)
    landing, apex = sol.first(0)[0], sol.first(1)[0]
    torch.testing.assert_close(landing, (vz + torch.sqrt(vz**2 + 2 * G * y0[:, 1])) / G, rtol=0, atol=1e-10)
    torch.testing.assert_close(apex, vz / G, rtol=0, atol=1e-10)
    assert sol.status.tolist() == [Status.EVENT] * 8
    torch.testing.assert_close(sol.t_reached, landing)
    torch.testing.assert_close(sol.first(0)[1][:, 1], torch.zeros(8, dtype=F64), rtol=0, atol=1e-10)


def test_bouncing_ball_impact_times_are_analytic():
    """A ball dropped from z0 with restitution e: impacts at t1 = √(2 z0/g), then every 2·e^k·v1/g later
    (v1 = g t1). Each bounce restarts the (autonomous) flight from its own impact: four impacts per sample,
    each sample with its own e, within 1e-10 of the closed form."""
    restitution = torch.tensor([0.9, 0.7, 0.5, 0.3], dtype=F64)
    z0 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    state, clock, impacts = launch(z0, torch.zeros(4), torch.zeros(4)), torch.zeros(4, dtype=F64), []
    for _ in range(4):
        sol = solve(projectile, state, [0.0, 10.0], events=ground(), per_sample=True, rtol=1e-10, atol=1e-12)
        t_hit, y_hit = sol.first(0)
        clock = clock + t_hit
        impacts.append(clock)
        state = y_hit * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)  # back on the ground exactly…
        state[:, 3] = -restitution * y_hit[:, 3]  # …going up at e times the impact speed
    v1 = torch.sqrt(2 * G * z0)
    expected = [v1 / G]
    for k in range(1, 4):
        expected.append(expected[-1] + 2 * restitution**k * v1 / G)
    torch.testing.assert_close(torch.stack(impacts), torch.stack(expected), rtol=0, atol=1e-10)


def _loss(sol: EventSolution) -> torch.Tensor:
    weights = torch.arange(1, sol.event_t.numel() + 1, dtype=F64)
    return (sol.event_t * weights).sum() + sol.event_y[:, 0].sum() + sol.ys[1, :, 1].sum()


@pytest.mark.parametrize("per_sample,gradient", [
    (False, "backprop"), pytest.param(False, "checkpoint", marks=pytest.mark.slow),
    pytest.param(True, "backprop", marks=pytest.mark.slow),
    pytest.param(True, "checkpoint", marks=pytest.mark.slow),
    pytest.param(True, "adjoint", marks=pytest.mark.slow)])
def test_event_time_gradient_matches_finite_differences(per_sample, gradient):
    """dt*/dθ = −(∂g/∂θ)/(dg/dt) for θ = the drag k (in f), the floor height h (in g) and a launch speed (y0),
    with the crossing states and an output value in the loss too: central differences of the whole solve
    (rtol 1e-12, ε = 1e-6) agree to 1e-6 relative."""
    field = DragProjectile()
    height = torch.tensor(0.2, dtype=F64, requires_grad=True)
    y0 = launch([1.0, 0.5], [3.0, 1.0], [4.0, 6.0]).requires_grad_(True)
    events = [Event(lambda t, y: y[:, 1] - height, direction=-1, terminal=True), APEX]
    times = [0.0, 0.3, 3.0]
    sol = solve(field, y0, times, events=events, per_sample=per_sample, gradient=gradient, **TIGHT)
    assert sol.event_index.tolist() == [1, 0, 1, 0]  # apex then landing, for each sample
    grads = torch.autograd.grad(_loss(sol), [field.k, height, y0])
    if per_sample not in _EXPECTED:
        _EXPECTED[per_sample] = _finite_differences(field, height, y0, events, times, per_sample)
    expected = _EXPECTED[per_sample]
    assert [float(grads[0]), float(grads[1]), float(grads[2][1, 3])] == pytest.approx(expected, rel=1e-6)


_EXPECTED: dict[bool, list[float]] = {}  # the central differences do not depend on the gradient mode


def _finite_differences(field, height, y0, events, times, per_sample) -> list[float]:
    """Central differences of the whole solve (rtol 1e-12, ε = 1e-6) in k, h and y0[1, 3]."""
    def loss_at() -> float:
        with torch.no_grad():
            return float(_loss(solve(field, y0, times, events=events, per_sample=per_sample, **TIGHT)))

    def central(tensor, index=()) -> float:
        eps, base = 1e-6, tensor.detach()
        with torch.no_grad():
            base[index] += eps
            up = loss_at()
            base[index] -= 2 * eps
            down = loss_at()
            base[index] += eps
        return (up - down) / (2 * eps)

    return [central(field.k), central(height), central(y0, (1, 3))]


def test_checkpointed_event_gradients_equal_backprop():
    """The same graph, re-run chunk by chunk: equal to rounding (accumulation order at chunk boundaries)."""
    field = DragProjectile()
    y0 = launch([1.0, 0.5, 2.0], [3.0, 1.0, 0.0], [4.0, 6.0, -1.0]).requires_grad_(True)
    grads = []
    for gradient in ("backprop", "checkpoint"):
        sol = solve(field, y0, [0.0, 0.3, 3.0], events=[ground(), APEX], per_sample=True, gradient=gradient,
                    rtol=1e-6, atol=1e-6)
        grads.append(torch.autograd.grad(_loss(sol), [field.k, y0]))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_batch_of_32_equals_each_sample_solved_alone():
    """32 launches, each landing at its own time: every crossing time and state, output and statistic of the
    per-sample batch equals the same sample solved alone."""
    g = torch.Generator().manual_seed(0)
    y0 = launch(torch.rand(32, generator=g, dtype=F64) * 3, torch.rand(32, generator=g, dtype=F64) * 4,
                torch.rand(32, generator=g, dtype=F64) * 8 - 2)
    field, events, times = DragProjectile(), [ground(), APEX], [0.0, 0.4, 0.8, 4.0]
    with torch.no_grad():
        batch = solve(field, y0, times, events=events, per_sample=True, rtol=1e-6, atol=1e-8)
        landing = batch.first(0)[0]
        assert len(set(landing.tolist())) == 32
        for b in range(32):
            alone = solve(field, y0[b : b + 1], times, events=events, per_sample=True, rtol=1e-6, atol=1e-8)
            mine = batch.event_sample == b
            assert batch.event_index[mine].tolist() == alone.event_index.tolist()
            torch.testing.assert_close(batch.event_t[mine], alone.event_t, rtol=1e-13, atol=1e-14)
            torch.testing.assert_close(batch.event_y[mine], alone.event_y, rtol=1e-11, atol=1e-12)
            torch.testing.assert_close(batch.ys[:, b], alone.ys[:, 0], rtol=1e-11, atol=1e-12, equal_nan=True)
            assert batch.stats[b].nfe == alone.stats[0].nfe
            assert batch.status[b] == alone.status[0] == Status.EVENT


def test_terminal_event_stops_only_its_sample_and_non_terminal_events_are_recorded():
    """Per sample: the sample whose ball lands stops there (fewer evaluations, NaN outputs after its event
    time); the others' outputs and statistics are those of the solve without events; the apex of every sample
    is recorded without stopping anything."""
    y0 = launch([0.5, 50.0, 80.0], [1.0, 1.0, 1.0], [0.0, 3.0, 5.0])
    field, times = DragProjectile(0.01), [0.0, 0.2, 1.0, 2.0]
    with torch.no_grad():
        plain = solve(field, y0, times, per_sample=True, rtol=1e-8, atol=1e-9)
        sol = solve(field, y0, times, events=[ground(), APEX], per_sample=True, rtol=1e-8, atol=1e-9)
    landing = sol.first(0)[0]
    assert 0.2 < landing[0] < 1.0 and torch.isnan(landing[1:]).all()  # only the low ball lands
    assert sol.status.tolist() == [Status.EVENT, Status.SUCCESS, Status.SUCCESS]
    assert sol.t_reached.tolist() == [float(landing[0]), 2.0, 2.0]
    assert torch.isnan(sol.ys[2:, 0]).all() and torch.equal(sol.ys[:2, 0], plain.ys[:2, 0])
    assert sol.stats[0].nfe < plain.stats[0].nfe
    for b in (1, 2):
        assert torch.equal(sol.ys[:, b], plain.ys[:, b]) and sol.stats[b].nfe == plain.stats[b].nfe
    apex = sol.first(1)[0]
    assert torch.isnan(apex[0]) and torch.isfinite(apex[1:]).all()  # sample 0 was launched at its apex
    assert sol.event_index.tolist() == [0, 1, 1] and sol.event_sample.tolist() == [0, 1, 2]


def test_shared_control_stops_each_sample_at_its_own_event():
    """Shared control: the batch takes one step sequence; each sample's outputs after its own landing are
    NaN and the solve ends when every sample has landed."""
    y0 = launch([0.5, 2.0], [1.0, 1.0], [0.0, 3.0])
    sol = solve(projectile, y0, [0.0, 0.3, 0.6, 10.0], events=ground(), rtol=1e-8, atol=1e-10)
    landing = sol.first(0)[0]
    expected = (y0[:, 3] + torch.sqrt(y0[:, 3] ** 2 + 2 * G * y0[:, 1])) / G
    torch.testing.assert_close(landing, expected, rtol=0, atol=1e-10)
    assert torch.isnan(sol.ys[2:, 0]).all() and torch.isfinite(sol.ys[:3, 1]).all()
    assert torch.isnan(sol.ys[3]).all()  # both stopped before t = 10: the solve ended early
    assert sol.stats.step_times[-1] < 10.0


def test_event_in_a_decreasing_time_direction():
    """Backwards in time: y' = 1, y(2) = 2 crosses y = 0.5 at t = 0.5 (rising in t, falling as solved)."""
    sol = solve(lambda t, y: torch.ones_like(y), torch.tensor([[2.0]], dtype=F64), [2.0, 0.0],
                events=Event(lambda t, y: y[:, 0] - 0.5, direction=-1, terminal=True))
    assert sol.event_t.tolist() == pytest.approx([0.5], abs=1e-12) and sol.t_reached.tolist() == [sol.event_t]


@pytest.mark.parametrize(
    "make,match",
    [(lambda: Event(lambda t, y: y[:, 0], direction=2), "direction must be -1, 0 or 1"),
     (lambda: Event(lambda t, y: y[:, 0], terminal=1), "terminal must be True or False"),
     (lambda: Event("y"), "must be callable")],
)
def test_bad_event_settings_are_refused(make, match):
    with pytest.raises(ODEInputError, match=match):
        make()


def test_refusals_name_the_problem():
    y0 = launch([1.0], [0.0], [0.0])
    with pytest.raises(ODEInputError, match=r"shape \[1\] \(one value per sample\), got \(1, 1\)"):
        solve(projectile, y0, [0.0, 1.0], events=Event(lambda t, y: y[:, :1]))
    with pytest.raises(ODEInputError, match=r"event 0's condition returned a non-finite value for sample 0"):
        solve(projectile, y0, [0.0, 1.0], events=Event(lambda t, y: torch.log(y[:, 1] - 0.5)))
    with pytest.raises(ODEInputError, match="an Event or a non-empty sequence"):
        solve(projectile, y0, [0.0, 1.0], events=[])
    with pytest.raises(ODEInputError, match="need per_sample=True and adaptive steps"):
        solve(DragProjectile(), y0.requires_grad_(True), [0.0, 1.0], events=ground(), gradient="adjoint")
    with pytest.raises(ODEInputError, match="leading batch dimension"):
        solve(lambda t, y: -y, torch.tensor(1.0), [0.0, 1.0], events=Event(lambda t, y: y))


def test_fixed_steps_and_adjoint_without_grad():
    """Fixed steps (RK4, cubic Hermite dense output: exact on a quadratic) and the adjoint with nothing to
    differentiate (the located solve alone) find the same landing."""
    y0 = launch([1.0, 2.0], [0.0, 0.0], [1.0, 0.0])
    expected = (y0[:, 3] + torch.sqrt(y0[:, 3] ** 2 + 2 * G * y0[:, 1])) / G
    fixed = solve(projectile, y0, [0.0, 2.0], events=ground(), method="rk4", step_size=0.1, per_sample=True)
    torch.testing.assert_close(fixed.event_t, expected, rtol=0, atol=1e-12)
    adjoint = solve(projectile, y0, [0.0, 2.0], events=ground(), per_sample=True, gradient="adjoint")
    torch.testing.assert_close(adjoint.event_t, expected, rtol=0, atol=1e-10)
    assert math.isnan(float(fixed.ys[-1, 0, 0]))


@given(root=st.floats(0.01, 0.99), curvature=st.floats(0.0, 50.0), power=st.sampled_from([1, 3, 5]),
       offset=st.floats(-1e3, 1e3), width=st.floats(1e-6, 10.0))
def test_root_solve_reaches_the_resolution_of_t(root, curvature, power, offset, width):
    """locate on φ(t) = s^p (1 + c s²), s = t − r (flat roots for p = 3, 5, where regula falsi alone stalls):
    the root to within 4 ulp of the bracket's scale (the bisection every fourth iteration guarantees it)."""
    a = torch.tensor([offset], dtype=F64)
    b, r = a + width, a + root * width

    def phi(t):
        s = (t - r) / width
        return s**power * (1 + curvature * s**2)

    found = locate(phi, a, b, phi(a), phi(b), 4 * torch.finfo(F64).eps)
    scale = max(abs(float(a)), abs(float(b)), width)
    assert abs(float(found - r)) <= 8 * torch.finfo(F64).eps * scale + 1e-300


def test_shared_control_freezes_a_stopped_sample():
    """Shared control: after its landing a sample's rows of f are zero, so it stays where it stopped. Here f
    is singular at z = −0.3, which the low ball would reach soon after landing; frozen, it never does, and
    the high ball lands as it does alone."""

    def singular_below(t, y):
        f = projectile(t, y)
        return f + torch.stack([0 * y[:, 0], 0 * y[:, 0], 0 * y[:, 0], 0.01 / (y[:, 1] + 0.3)], 1)

    y0 = launch([0.5, 20.0], [0.0, 0.0], [0.0, 0.0])
    options = dict(events=ground(), rtol=1e-9, atol=1e-9)
    both = solve(singular_below, y0, [0.0, 5.0], **options)
    alone = solve(singular_below, y0[1:], [0.0, 5.0], **options)
    assert both.status.tolist() == [Status.EVENT] * 2
    torch.testing.assert_close(both.event_t[1:], alone.event_t, rtol=0, atol=1e-8)
    with pytest.raises(SolverError):  # not frozen, the low ball reaches the singularity
        solve(singular_below, y0, [0.0, 5.0], rtol=1e-9, atol=1e-9)


def test_backward_euler_event_on_its_linear_interpolant():
    """A solver without a tableau (backward Euler, shared control) is searched on its own dense output,
    linear between steps: for y' = −y, y_n = y0/(1+h)^n, the crossing of 0.5 lies where the line between
    the bracketing y_n, y_{n+1} does."""
    y0, h = torch.tensor([[1.0], [2.0]], dtype=F64), 0.01
    sol = solve(lambda t, y: -y, y0, [0.0, 3.0], method="backward_euler", step_size=h,
                events=Event(lambda t, y: y[:, 0] - 0.5, terminal=True))
    expected = []
    for start in y0[:, 0].tolist():
        n = math.floor(math.log(start / 0.5) / math.log(1 + h))
        y_n, y_next = start / (1 + h) ** n, start / (1 + h) ** (n + 1)
        expected.append(n * h + h * (y_n - 0.5) / (y_n - y_next))
    torch.testing.assert_close(sol.event_t, torch.tensor(expected, dtype=F64), rtol=0, atol=1e-11)
