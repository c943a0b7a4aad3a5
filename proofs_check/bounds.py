"""Perturbation bounds per scheme: how much one step can amplify |y' − y| when f is K-Lipschitz.

One step of size h maps two states at distance |e_n| to states at distance at most ``step_factor``·|e_n|:

* explicit Runge–Kutta (c, A, b): 1 + |h| L_Φ with the increment function's constant L_Φ ≤ Σ_i |b_i| κ_i,
  κ_i = K(1 + |h| Σ_{j<i} |a_ij| κ_j) (each stage k_i = f(y + h Σ_j a_ij k_j) is κ_i-Lipschitz in y).
  Euler: 1 + hK (Theorem 3.1); Heun: 1 + hK + (hK)²/2; RK4: 1 + hK(1 + hK/2 + (hK)²/6 + (hK)³/24)
  (Theorem 3.2); Dormand–Prince: the same recursion, inflated by its negative coefficients: even as h → 0
  its factor is 1 + h·Σ|b_i|·K with Σ|b_i| ≈ 1.645, since a K-Lipschitz f may have different secant slopes
  at different stages (the triangle inequality is what Theorem 3.2's argument uses).
* backward Euler y_{n+1} = y_n + h f(y_{n+1}): 1 / (1 − |h|K), valid for |h|K < 1 only.

Over a run with steps h_1..h_n the bound is Π_i step_factor(h_i), i.e. (1 + hK)^n for Euler; since
1 + hK ≤ e^{hK}, Euler (and Heun, RK4, whose factors are Taylor polynomials of e^{hK}) also satisfy the
exponential envelope e^{K|t_n − t_0|}, which backward Euler and Dormand–Prince's bound need not.

RevNet (y1 ← y1 + h F(y2); y2 ← y2 + h G(y1)): the pair (|e1|, |e2|) is bounded componentwise by
M (|e1|, |e2|) with M = [[1, hK_F], [hK_G, 1 + h²K_F K_G]].
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from stability import SOLVERS, ButcherTableau


def tableau_of(method: str | ButcherTableau) -> ButcherTableau:
    """The Butcher tableau of an explicit method given by name (``stability.SOLVERS``) or as a tableau."""
    if isinstance(method, ButcherTableau):
        return method
    solver = SOLVERS.get(method)
    tableau = getattr(solver, "tableau", None)
    if not isinstance(tableau, ButcherTableau):  # implicit methods (rodas4, kvaerno5) have other tableaux
        known = sorted(name for name, cls in SOLVERS.items()
                       if isinstance(getattr(cls, "tableau", None), ButcherTableau))
        raise ValueError(f"no explicit Runge–Kutta tableau named {method!r}; known: {', '.join(known)}")
    return tableau


def _check(step_size: float, lipschitz: float) -> tuple[float, float]:
    h, k = abs(float(step_size)), float(lipschitz)
    if not (math.isfinite(h) and math.isfinite(k)) or k < 0:
        raise ValueError(f"need a finite step size and a finite K ≥ 0, got h={step_size}, K={lipschitz}")
    return h, k


def stage_lipschitz(tableau: ButcherTableau, step_size: float, lipschitz: float) -> list[float]:
    """κ_i with κ_i = K(1 + |h| Σ_{j<i} |a_ij| κ_j): each stage k_i(y) is κ_i-Lipschitz."""
    h, k = _check(step_size, lipschitz)
    kappa: list[float] = []
    for row in tableau.a:
        kappa.append(k * (1 + h * sum(abs(a) * kj for a, kj in zip(row, kappa))))
    return kappa


def increment_lipschitz(method: str | ButcherTableau, step_size: float, lipschitz: float) -> float:
    """L_Φ ≤ Σ_i |b_i| κ_i: Lipschitz constant of the increment Φ in y_{n+1} = y_n + h Φ(t_n, y_n; h)."""
    tableau = tableau_of(method)
    kappa = stage_lipschitz(tableau, step_size, lipschitz)
    return sum(abs(b) * kb for b, kb in zip(tableau.b, kappa))


def step_factor(method: str | ButcherTableau, step_size: float, lipschitz: float) -> float:
    """Lipschitz constant of one step y_n ↦ y_{n+1} of ``method`` with step h for a K-Lipschitz f."""
    h, k = _check(step_size, lipschitz)
    if method == "backward_euler":
        if h * k >= 1:
            raise ValueError(f"backward Euler's bound 1/(1 − hK) needs hK < 1, got hK = {h * k:.6g}")
        return 1.0 / (1.0 - h * k)
    return 1.0 + h * increment_lipschitz(method, h, k)


def cumulative_bound(factors: Sequence[float]) -> np.ndarray:
    """[1, f_1, f_1 f_2, …]: the bound on |e_n|/|ε| after each step (log-space products; inf on overflow)."""
    logs = np.log(np.asarray(factors, dtype=np.float64))
    with np.errstate(over="ignore"):
        return np.exp(np.concatenate([[0.0], np.cumsum(logs)]))


def amplification_bound(
    method: str | ButcherTableau, step_sizes: Sequence[float], lipschitz: float
) -> np.ndarray:
    """Π_{i≤n} step_factor(h_i) for n = 0..len(step_sizes): e.g. (1 + hK)^n for Euler with a fixed h."""
    return cumulative_bound([step_factor(method, h, lipschitz) for h in step_sizes])


def exponential_envelope(lipschitz: float, times: Sequence[float]) -> np.ndarray:
    """e^{K |t_n − t_0|}: Theorem 3.1's second bound (and the exact flow's)."""
    t = np.asarray(times, dtype=np.float64)
    with np.errstate(over="ignore"):
        return np.exp(float(lipschitz) * np.abs(t - t[0]))


def revnet_step_matrix(step_size: float, lipschitz_f: float, lipschitz_g: float) -> np.ndarray:
    """M with (|e1'|, |e2'|) ≤ M (|e1|, |e2|) componentwise for one RevNet coupling step."""
    h, kf = _check(step_size, lipschitz_f)
    _, kg = _check(step_size, lipschitz_g)
    return np.array([[1.0, h * kf], [h * kg, 1.0 + h * h * kf * kg]])


def revnet_bound(matrices: Sequence[np.ndarray], initial_parts: np.ndarray) -> np.ndarray:
    """|e_n| / |ε| ≤ |M_n ⋯ M_1 (|ε1|, |ε2|)| / |ε| per sample; ``initial_parts`` [B, 2] → [n+1, B].

    M is non-negative, so the componentwise inequality propagates, and |e_n|² = |e1|² + |e2|².
    """
    parts = np.asarray(initial_parts, dtype=np.float64)
    if parts.ndim != 2 or parts.shape[1] != 2:
        raise ValueError(f"initial_parts must be [B, 2] = (|ε1|, |ε2|) per sample, got {parts.shape}")
    epsilon = np.linalg.norm(parts, axis=1)
    rows = [np.ones_like(epsilon)]
    current = parts.T
    with np.errstate(over="ignore", invalid="ignore"):
        for matrix in matrices:
            current = matrix @ current
            rows.append(np.linalg.norm(current, axis=0) / epsilon)
    return np.stack(rows)


__all__ = [
    "amplification_bound",
    "cumulative_bound",
    "exponential_envelope",
    "increment_lipschitz",
    "revnet_bound",
    "revnet_step_matrix",
    "stage_lipschitz",
    "step_factor",
    "tableau_of",
]
