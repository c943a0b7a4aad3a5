"""Events and failure as a value, measured: crossing times against closed forms and scipy, event-time
gradients against finite differences in every gradient mode, a batch against each sample alone, and a
batch in which one sample fails under throw=False.

Run:  python -m bench.events
(the same quantities are asserted by ``tests/stability/test_events.py`` and ``test_failure_status.py``)
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp

from stability import Event, Status, solve
from tests.problems import DragProjectile, G, launch, projectile

F64 = torch.float64

GROUND = Event(lambda t, y: y[:, 1], direction=-1, terminal=True)
APEX = Event(lambda t, y: y[:, 3], direction=-1)


def analytic_times() -> None:
    vz = torch.linspace(0.5, 12.0, 8, dtype=F64)
    y0 = launch(torch.linspace(0.2, 3.0, 8), torch.ones(8), vz)
    landing = (vz + torch.sqrt(vz**2 + 2 * G * y0[:, 1])) / G
    print("(a) projectile, 8 launches, rtol 1e-8 atol 1e-10: max |t* - closed form| (landing, apex)")
    for method in ("dopri5", "tsit5", "bosh3"):
        for per_sample in (False, True):
            sol = solve(projectile, y0, [0.0, 5.0], events=[GROUND, APEX], method=method,
                        per_sample=per_sample, rtol=1e-8, atol=1e-10)
            errors = [float((sol.first(0)[0] - landing).abs().max()),
                      float((sol.first(1)[0] - vz / G).abs().max())]
            mode = "per-sample" if per_sample else "shared"
            print(f"    {method:7s} {mode:10s} landing {errors[0]:.2e}  apex {errors[1]:.2e}")


def bouncing_ball() -> None:
    """Dropped from z0 with restitution e: impacts at √(2 z0/g), then every 2·e^k·v1/g later. Each bounce
    restarts the autonomous flight at its impact (per sample: each has its own e and its own clock)."""
    restitution = torch.tensor([0.9, 0.7, 0.5, 0.3], dtype=F64)
    z0 = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=F64)
    state, clock, worst = launch(z0, torch.zeros(4), torch.zeros(4)), torch.zeros(4, dtype=F64), 0.0
    v1 = torch.sqrt(2 * G * z0)
    expected = v1 / G
    for k in range(4):
        sol = solve(projectile, state, [0.0, 10.0], events=GROUND, per_sample=True, rtol=1e-10, atol=1e-12)
        t_hit, y_hit = sol.first(0)
        clock = clock + t_hit
        worst = max(worst, float((clock - expected).abs().max()))
        expected = expected + 2 * restitution ** (k + 1) * v1 / G
        state = y_hit * torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=F64)
        state[:, 3] = -restitution * y_hit[:, 3]
    print(f"(a') bouncing ball, 4 samples (e = 0.9, 0.7, 0.5, 0.3), 4 impacts each, dopri5 rtol 1e-10: "
          f"max |impact time - closed form| {worst:.2e}")


def against_scipy() -> None:
    """Drag has no closed form: the landing time of DOP853 at rtol = atol = 1e-13 with scipy's event root
    finder is the reference."""
    field, y0 = DragProjectile(), launch([1.0, 0.5, 2.0], [3.0, 1.0, 0.5], [4.0, 6.0, -1.0])
    reference = []
    for row in y0.numpy():
        def rhs(t, y):
            return field(torch.tensor([t]), torch.tensor(y)[None]).detach().numpy()[0]

        hit = lambda t, y: y[1]  # noqa: E731
        hit.terminal, hit.direction = True, -1
        reference.append(solve_ivp(rhs, (0, 10), row, method="DOP853", rtol=1e-13, atol=1e-13, events=hit)
                         .t_events[0][0])
    print("(b) drag projectile (k = 0.3), 3 launches: max |t* - scipy DOP853 (rtol 1e-13, its event finder)|")
    with torch.no_grad():
        for rtol in (1e-6, 1e-9, 1e-12):
            sol = solve(field, y0, [0.0, 10.0], events=GROUND, per_sample=True, rtol=rtol, atol=rtol)
            error = float(np.abs(sol.event_t.numpy() - np.array(reference)).max())
            print(f"    dopri5 per-sample rtol=atol={rtol:.0e}: {error:.2e}")


def gradients() -> None:
    field = DragProjectile()
    height = torch.tensor(0.2, dtype=F64, requires_grad=True)
    y0 = launch([1.0, 0.5], [3.0, 1.0], [4.0, 6.0]).requires_grad_(True)
    events = [Event(lambda t, y: y[:, 1] - height, direction=-1, terminal=True), APEX]
    times, tight = [0.0, 0.3, 3.0], dict(rtol=1e-12, atol=1e-12)

    def loss(sol):
        weighted = (sol.event_t * torch.arange(1, 5, dtype=F64)).sum()
        return weighted + sol.event_y[:, 0].sum() + sol.ys[1, :, 1].sum()

    def loss_at(per_sample) -> float:
        with torch.no_grad():
            return float(loss(solve(field, y0, times, events=events, per_sample=per_sample, **tight)))

    def central(tensor, index, per_sample) -> float:
        base, eps = tensor.detach(), 1e-6
        with torch.no_grad():
            base[index] += eps
            up = loss_at(per_sample)
            base[index] -= 2 * eps
            down = loss_at(per_sample)
            base[index] += eps
        return (up - down) / (2 * eps)

    print("(c) d(loss)/dθ, loss = Σ weighted t* + Σ x(t*) + Σ z(0.3), θ = drag k, floor height h, vz0 of "
          "sample 1;")
    print("    max relative difference to central differences (ε = 1e-6, rtol = atol = 1e-12)")
    for per_sample, gradient in ((False, "backprop"), (False, "checkpoint"), (True, "backprop"),
                                 (True, "checkpoint"), (True, "adjoint")):
        sol = solve(field, y0, times, events=events, per_sample=per_sample, gradient=gradient, **tight)
        k, h, y = torch.autograd.grad(loss(sol), [field.k, height, y0])
        ours = [float(k), float(h), float(y[1, 3])]
        theirs = [central(field.k, (), per_sample), central(height, (), per_sample),
                  central(y0, (1, 3), per_sample)]
        worst = max(abs(a - b) / abs(b) for a, b in zip(ours, theirs))
        mode = "per-sample" if per_sample else "shared"
        print(f"    {mode:10s} {gradient:10s} {worst:.1e}   (dL/dk = {ours[0]:.10f}, dL/dh = {ours[1]:.10f})")


def batch_against_alone() -> None:
    g = torch.Generator().manual_seed(0)
    y0 = launch(torch.rand(32, generator=g, dtype=F64) * 3, torch.rand(32, generator=g, dtype=F64) * 4,
                torch.rand(32, generator=g, dtype=F64) * 8 - 2)
    field, times, worst_t, worst_y, same_nfe = DragProjectile(), [0.0, 0.4, 0.8, 4.0], 0.0, 0.0, 0
    with torch.no_grad():
        batch = solve(field, y0, times, events=[GROUND, APEX], per_sample=True, rtol=1e-8, atol=1e-9)
        for b in range(32):
            alone = solve(field, y0[b : b + 1], times, events=[GROUND, APEX], per_sample=True, rtol=1e-8,
                          atol=1e-9)
            mine = batch.event_sample == b
            worst_t = max(worst_t, float((batch.event_t[mine] - alone.event_t).abs().max()))
            worst_y = max(worst_y, float((batch.event_y[mine] - alone.event_y).abs().max()))
            same_nfe += batch.stats[b].nfe == alone.stats[0].nfe
    landing = batch.first(0)[0]
    print(f"(d) 32 drag launches (landing times {float(landing.min()):.3f} .. {float(landing.max()):.3f}), "
          f"per-sample, rtol 1e-8: max |Δt*| {worst_t:.1e}, max |Δy*| {worst_y:.1e} against each alone; "
          f"NFE equal for {same_nfe}/32")


def failure_as_value() -> None:
    def van_der_pol(t, y):
        x, v, mu = y.unbind(-1)
        return torch.stack([v, mu * (1 - x**2) * v - x, torch.zeros_like(mu)], -1)

    mu = torch.tensor([1.0, 2.0, 1000.0, 0.5, 3.0], dtype=F64)
    y0 = torch.stack([torch.full_like(mu, 2.0), torch.zeros_like(mu), mu], -1)
    options = dict(rtol=1e-6, atol=1e-6, max_steps=300, per_sample=True)
    sol = solve(van_der_pol, y0, [0.0, 0.5, 1.5, 3.0], throw=False, **options)
    worst = 0.0
    for b in (0, 1, 3, 4):
        alone = solve(van_der_pol, y0[b : b + 1], [0.0, 0.5, 1.5, 3.0], **options)
        worst = max(worst, float((sol.ys[:, b] - alone.ys[:, 0]).abs().max()))
    names = [Status(int(s)).name for s in sol.status]
    print(f"(e) Van der Pol μ = {mu.tolist()}, max_steps 300, throw=False: status {names}, t_reached "
          f"{[round(x, 4) for x in sol.t_reached.tolist()]}; the others' max |Δy| to each alone {worst:.1e}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    analytic_times()
    bouncing_ball()
    against_scipy()
    gradients()
    batch_against_alone()
    failure_as_value()
