"""Dense output over one accepted step, so that output times never shorten a step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from stability.runge_kutta import linear_combination
from stability.tableau import ButcherTableau


def interpolant(
    tableau: ButcherTableau, t_old, h, y_old: Tensor, y_new: Tensor, stages: Sequence[Tensor],
    derivative_at_end: Callable[[], Tensor],
) -> Callable:
    """y(t) on the step [t_old, t_old + h]; t_old, h and t are numbers, or per-sample tensors [B].

    The method's own continuous extension when it has one, y_n + h Σ_i k_i Σ_j P_ij θ^{j+1} (DOPRI5:
    Shampine's, local error O(h^5)); otherwise cubic Hermite from y and f at both ends (local error O(h^4)),
    f(t_{n+1}, y_{n+1}) from ``derivative_at_end()`` (lazily: the caller keeps it as the next first stage).
    """
    if tableau.dense is not None:

        def extension(t) -> Tensor:
            theta = (t - t_old) / h
            weights = []
            for i, row in enumerate(tableau.dense):
                if not any(row):
                    continue
                w, power = 0.0, theta
                for coefficient in row:
                    w = w + coefficient * power
                    power = power * theta
                weights.append((i, w))
            return linear_combination(y_old, stages, weights, h)

        return extension

    def hermite(t) -> Tensor:
        s = (t - t_old) / h
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        weights = [(0, h00), (1, h01), (2, h * h10), (3, h * h11)]
        return linear_combination(None, [y_old, y_new, stages[0], derivative_at_end()], weights, 1.0)

    return hermite
