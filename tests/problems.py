"""Reference ODE problems shared by the solver tests (float64, with exact or scipy reference solutions)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

from nets.odenet import ODEFunc

LINEAR_MATRIX = np.array([[-0.5, 2.0, 0.0], [-2.0, -0.5, 0.3], [0.1, 0.0, -1.0]])


def linear_field(matrix: np.ndarray):
    a = torch.as_tensor(matrix, dtype=torch.float64)
    return lambda t, y: y @ a.T


def linear_exact(matrix: np.ndarray, y0: np.ndarray, t: float) -> np.ndarray:
    return expm(matrix * t) @ y0


def forced_duffing(t, y):
    """x'' = −x − x³/2 + cos 2t — nonlinear and non-autonomous; dopri5 reaches its asymptotic order here."""
    x, v = y[..., 0], y[..., 1]
    if isinstance(y, torch.Tensor):
        return torch.stack([v, -x - 0.5 * x**3 + torch.cos(2 * t)], dim=-1)
    return np.array([v, -x - 0.5 * x**3 + np.cos(2 * t)])


def van_der_pol(t, y, mu: float = 1.0):
    """y0' = y1, y1' = mu (1 − y0²) y1 − y0 — nonlinear, non-stiff for mu = 1."""
    x, v = y[..., 0], y[..., 1]
    if isinstance(y, torch.Tensor):
        return torch.stack([v, mu * (1 - x**2) * v - x], dim=-1)
    return np.array([v, mu * (1 - x**2) * v - x])


def scipy_reference(fun, y0, t_eval, rtol: float = 1e-13, atol: float = 1e-13) -> np.ndarray:
    """DOP853 at tight tolerance, solution shaped [len(t_eval), dim]."""
    sol = solve_ivp(fun, (t_eval[0], t_eval[-1]), y0, method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol)
    assert sol.success
    return sol.y.T


def observed_order(step_sizes, errors) -> float:
    """Least-squares slope of log(error) against log(h)."""
    return float(np.polyfit(np.log(step_sizes), np.log(errors), 1)[0])


# ---- a projectile, for the events (tests/stability/test_events.py, bench/events.py)
G = 9.81  # gravity


def projectile(t, y):
    """y = [x, z, vx, vz] under gravity alone (autonomous: any time offset gives the same motion)."""
    vx, vz = y[:, 2], y[:, 3]
    return torch.stack([vx, vz, torch.zeros_like(vx), torch.full_like(vz, -G)], 1)


class DragProjectile(torch.nn.Module):
    """Quadratic drag k|v|v: no closed form, a parameter k to differentiate."""

    def __init__(self, k: float = 0.3) -> None:
        super().__init__()
        self.k = torch.nn.Parameter(torch.tensor(k, dtype=torch.float64))

    def forward(self, t, y):
        vx, vz = y[:, 2], y[:, 3]
        speed = torch.sqrt(vx**2 + vz**2)
        return torch.stack([vx, vz, -self.k * speed * vx, -G - self.k * speed * vz], 1)


def launch(heights, speeds_x, speeds_z) -> torch.Tensor:
    z, vx, vz = (torch.as_tensor(v, dtype=torch.float64) for v in (heights, speeds_x, speeds_z))
    return torch.stack([torch.zeros_like(z), z, vx, vz], 1)


class DampedConvField(torch.nn.Module):
    """odenet's ODE function N (GroupNorm, ReLU, 3×3 convolutions, time as a channel) minus k·(y − c),
    k = 1e3: the damping makes it stiff (h|λ| ≤ 3.3 limits dopri5 to h ≲ 3e-3). With c = 0 the state relaxes
    to y ≈ N(y)/k, where N (degree 0 in a small y: its GroupNorms) has a Jacobian of order k too; a centre c
    of order 1 keeps the state there, N's Jacobian of order 1 and the damping dominant."""

    def __init__(self, channels: int = 8, damping: float = 1e3, centre: torch.Tensor | None = None) -> None:
        super().__init__()
        self.func, self.damping = ODEFunc(channels, conv_layers=2, time_dependent=True), damping
        self.register_buffer("centre", centre)

    def forward(self, t, y):
        return self.func(t, y) - self.damping * (y if self.centre is None else y - self.centre)


def damped_conv_problem() -> tuple[DampedConvField, torch.Tensor, list[float]]:
    """The stiff methods' conv field (float32): k = 1e3, centre c and y0 standard normal (seed 0), y0 of shape
    [2, 8, 6, 6] (288 unknowns a sample, above ``ImplicitOptions.dense_size``), outputs at 0.01 (after the
    transient) and 0.5; dopri5's steps there are bounded by stability (h ≲ 3.3/k)."""
    torch.manual_seed(0)
    y0 = torch.randn(2, 8, 6, 6)
    return DampedConvField(centre=torch.randn(8, 6, 6)), y0, [0.0, 0.01, 0.5]
