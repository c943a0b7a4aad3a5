"""NFE and accuracy of our adaptive methods against scipy at equal tolerance on a suite of classic problems:
dopri5 against RK45 and bosh3 against RK23 (the same pairs), tsit5 against RK45.

Problems (float64, shared step control): the Arenstorf orbit (one period), the Kepler problem at eccentricity
0.9 (three periods), Lorenz on [0, 2], the Brusselator (A = 1, B = 3) on [0, 20], and a batch of 8 Van der Pol
oscillators (μ = 1) on [0, 10] solved as one state. The error is the max-norm error at the final time against
DOP853 at rtol = atol = 1e-13, relative to max(1, ‖y_ref‖∞).

A second table sets step controllers side by side on dopri5: the default I controller (PIController(beta=0),
scipy's), the PI controller with beta = 0.04, and each of diffrax's suggested PID coefficient sets
(``stability.pid_controller.PRESETS``), with scipy's RK45 for reference; then totals per controller.

Run:  python -m bench.nfe_suite
(asserted by ``tests/stability/test_solver_nfe_suite.py`` and ``test_solver_methods.py``)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.integrate import solve_ivp

import stability
from stability.pid_controller import PRESETS

TOLERANCES = (1e-3, 1e-6, 1e-9)


def arenstorf(t, y, mu: float = 0.012277471):
    x, yy, vx, vy = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    nu = 1 - mu
    d1 = ((x + mu) ** 2 + yy**2) ** 1.5
    d2 = ((x - nu) ** 2 + yy**2) ** 1.5
    ax = x + 2 * vy - nu * (x + mu) / d1 - mu * (x - nu) / d2
    ay = yy - 2 * vx - nu * yy / d1 - mu * yy / d2
    return torch.stack([vx, vy, ax, ay], dim=-1)


def kepler(t, y):
    q1, q2, p1, p2 = y[..., 0], y[..., 1], y[..., 2], y[..., 3]
    r3 = (q1**2 + q2**2) ** 1.5
    return torch.stack([p1, p2, -q1 / r3, -q2 / r3], dim=-1)


def lorenz(t, y, sigma: float = 10.0, rho: float = 28.0, beta: float = 8 / 3):
    a, b, c = y[..., 0], y[..., 1], y[..., 2]
    return torch.stack([sigma * (b - a), a * (rho - c) - b, a * b - beta * c], dim=-1)


def brusselator(t, y, a: float = 1.0, b: float = 3.0):
    u, v = y[..., 0], y[..., 1]
    return torch.stack([a + u * u * v - (b + 1) * u, b * u - u * u * v], dim=-1)


def van_der_pol(t, y, mu: float = 1.0):
    x, v = y[..., 0], y[..., 1]
    return torch.stack([v, mu * (1 - x * x) * v - x], dim=-1)


_E = 0.9
_VDP_BATCH = (torch.linspace(0.2, 3.0, 8, dtype=torch.float64)[:, None] * torch.tensor([1.0, -0.5])).tolist()

PROBLEMS = {
    "arenstorf": (arenstorf, [0.994, 0.0, 0.0, -2.00158510637908252240537862224], 17.0652165601579625588917),
    "kepler_e0.9": (kepler, [1 - _E, 0.0, 0.0, math.sqrt((1 + _E) / (1 - _E))], 6 * math.pi),
    "lorenz": (lorenz, [1.0, 1.0, 1.0], 2.0),
    "brusselator": (brusselator, [1.5, 3.0], 20.0),
    "van_der_pol_batch8": (van_der_pol, _VDP_BATCH, 10.0),
}


@dataclass
class Row:
    problem: str
    tol: float
    nfe: int
    nfe_rk45: int
    error: float
    error_rk45: float

    @property
    def nfe_ratio(self) -> float:
        return self.nfe / self.nfe_rk45


def _numpy(func, shape):
    def f(t, y):
        return func(torch.tensor(t), torch.from_numpy(y).view(shape)).reshape(-1).numpy()
    return f


# Our method -> scipy's implementation of the same pair (same error estimate and step control).
SCIPY_PEER = {"dopri5": "RK45", "bosh3": "RK23"}


def run(problem: str, tol: float, method: str = "dopri5", **options) -> Row:
    """Our ``method`` against scipy's ``SCIPY_PEER[method]`` (RK45 for methods scipy does not have)."""
    func, y0, t1 = PROBLEMS[problem]
    y0 = torch.tensor(y0, dtype=torch.float64)
    flat = _numpy(func, y0.shape)
    ref = solve_ivp(flat, (0.0, t1), y0.reshape(-1).numpy(), method="DOP853", rtol=1e-13, atol=1e-13).y[:, -1]
    peer = SCIPY_PEER.get(method, "RK45")
    rk45 = solve_ivp(flat, (0.0, t1), y0.reshape(-1).numpy(), method=peer, rtol=tol, atol=tol)
    sol = stability.solve(func, y0, [0.0, t1], method=method, rtol=tol, atol=tol, max_steps=10**6, **options)
    scale = max(1.0, float(np.abs(ref).max()))
    error = float(np.abs(sol.ys[-1].reshape(-1).numpy() - ref).max()) / scale
    error_rk45 = float(np.abs(rk45.y[:, -1] - ref).max()) / scale
    return Row(problem, tol, sol.stats.nfe, rk45.nfev, error, error_rk45)


def controllers() -> dict[str, object]:
    """The controllers the second table compares, by name."""
    named = {"I (default)": stability.PIController(), "PI beta=0.04": stability.PIController(beta=0.04)}
    named.update({f"PID {name}": stability.PIDController.preset(name) for name in PRESETS if name != "I"})
    return named


def controller_table() -> None:
    """NFE and error of dopri5 per controller on every problem and tolerance, then the totals."""
    named = controllers()
    print("\ndopri5 step controllers: nfe (error) per controller; scipy RK45 for reference")
    print(f"{'problem':>20} {'tol':>6} {'scipy':>16} " + " ".join(f"{name:>20}" for name in named))
    # per controller: total nfe, wins over the default (fewer nfe, error no larger), rows
    totals = {name: [0, 0, 0] for name in named}
    for problem in PROBLEMS:
        for tol in TOLERANCES:
            rows = {name: run(problem, tol, "dopri5", controller=c) for name, c in named.items()}
            base = rows["I (default)"]
            cells = []
            for name, r in rows.items():
                totals[name][0] += r.nfe
                totals[name][1] += r.nfe < base.nfe and r.error <= base.error
                totals[name][2] += 1
                cells.append(f"{r.nfe:>7} ({r.error:.1e})")
            print(f"{problem:>20} {tol:>6.0e} {base.nfe_rk45:>7} ({base.error_rk45:.1e}) " + " ".join(
                f"{cell:>20}" for cell in cells))
    default_total = totals["I (default)"][0]
    print(f"\n{'controller':>20} {'total nfe':>10} {'vs default':>10} {'wins':>6}   (win: fewer nfe and an "
          f"error no larger than the default's on one problem and tolerance)")
    for name, (nfe, wins, rows) in totals.items():
        print(f"{name:>20} {nfe:>10} {nfe / default_total:>10.3f} {wins:>3}/{rows}")


def main() -> None:
    for method in ("dopri5", "bosh3", "tsit5"):
        peer = SCIPY_PEER.get(method, "RK45")
        print(f"\n{method} against scipy {peer}")
        print(f"{'problem':>20} {'tol':>6} {'nfe':>7} {'scipy':>7} {'ratio':>6} {'error':>9} "
              f"{'err_scipy':>9}")
        for problem in PROBLEMS:
            for tol in TOLERANCES:
                r = run(problem, tol, method)
                print(f"{r.problem:>20} {r.tol:>6.0e} {r.nfe:>7} {r.nfe_rk45:>7} {r.nfe_ratio:>6.3f} "
                      f"{r.error:>9.2e} {r.error_rk45:>9.2e}")
    controller_table()


if __name__ == "__main__":
    main()
