"""Reference ODE problems shared by the solver tests (float64, with exact or scipy reference solutions)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

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
