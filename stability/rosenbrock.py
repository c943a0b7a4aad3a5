"""One step of a Rosenbrock method (``stiff_tableau.RosenbrockTableau``): linearly implicit, so each stage is
one linear solve with the matrix I − hγJ factored once per step, and no Newton iteration.

u_i = hγ (I − hγJ)⁻¹ [f(t + α_i h, y + Σ_{j<i} a_ij u_j) + Σ_{j<i} (c_ij/h) u_j + γ_i h f_t],
y_{n+1} = y + Σ m_i u_i, error Σ e_i u_i. t and h are numbers, or per-sample tensors [B].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stability.linearization import Linearization
from stability.runge_kutta import RKStep, column, linear_combination
from stability.stiff_tableau import RosenbrockTableau


def rosenbrock_step(func: Callable, t: float | Tensor, y: Tensor, h: float | Tensor,
                    tableau: RosenbrockTableau, first_stage: Tensor | None,
                    linearization: Linearization) -> RKStep:
    """One step from (t, y) with step h; ``linearization`` holds J (and f_t) at (t, y); ``first_stage`` is
    f(t, y) when known. Stages returned: u_i/h for the method's continuous extension (``tableau.dense``),
    or [f(t, y)] for cubic Hermite."""
    h_gamma = h * tableau.gamma
    linearization.factor(h_gamma)
    scale = column(h_gamma, y) if isinstance(h_gamma, Tensor) else h_gamma
    time_derivative = linearization.time_derivative() if any(tableau.gamma_t) else None
    inverse_h = 1.0 / h
    u: list[Tensor] = []
    f0 = func(t, y) if first_stage is None else first_stage
    for i, (alpha, gamma_t, a_row, c_row) in enumerate(tableau.stage_plan):
        f = f0 if i == 0 else func(t + alpha * h, linear_combination(y, u, a_row, 1.0))
        rhs = linear_combination(f, u, c_row, inverse_h) if c_row else f
        if time_derivative is not None and gamma_t != 0:
            rhs = linear_combination(rhs, [time_derivative], ((0, gamma_t),), h)
        u.append(scale * linearization.solve(rhs))
    y_new = linear_combination(y, u, tableau.m_plan, 1.0)
    with torch.no_grad():
        error = linear_combination(None, u, tableau.error_plan, 1.0)
    if tableau.dense is None:
        return RKStep(y_new, error, [f0])
    scale_back = (lambda x: x * column(inverse_h, x)) if isinstance(h, Tensor) else (lambda x: x * inverse_h)
    return RKStep(y_new, error, [scale_back(x) for x in u])
