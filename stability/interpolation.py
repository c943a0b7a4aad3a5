"""Dense output over one accepted step, so that output times never shorten a step."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from stability.runge_kutta import linear_combination
from stability.tableau import ButcherTableau


class RungeKuttaInterpolant:
    """The method's own continuous extension: y(t_n + θh) = y_n + h Σ_i k_i Σ_j P_ij θ^{j+1}.

    For DOPRI5 this is Shampine's 4th-order extension (local error O(h^5)).
    """

    def __init__(self, tableau: ButcherTableau, t_old, h, y_old: Tensor, stages: Sequence[Tensor]):
        if tableau.dense is None:
            raise ValueError(f"{tableau.name} has no dense-output coefficients")
        self.tableau, self.t_old, self.h, self.y_old, self.stages = tableau, t_old, h, y_old, stages

    def __call__(self, t) -> Tensor:
        """y at time t: numbers, or per-sample tensors [B] (t, t_old and h alike)."""
        theta = (t - self.t_old) / self.h
        weights = []
        for i, row in enumerate(self.tableau.dense):
            if not any(row):
                continue
            w, power = 0.0, theta
            for coefficient in row:
                w = w + coefficient * power
                power = power * theta
            weights.append((i, w))
        return linear_combination(self.y_old, self.stages, weights, self.h)


class HermiteInterpolant:
    """Cubic Hermite interpolation from y and f at both ends of the step (local error O(h^4)).

    ``derivative_at_end`` is called lazily: f(t_{n+1}, y_{n+1}) is then reused as the next step's first stage.
    """

    def __init__(
        self,
        t_old,
        h,
        y_old: Tensor,
        y_new: Tensor,
        derivative_at_start: Tensor,
        derivative_at_end: Callable[[], Tensor],
    ):
        self.t_old, self.h, self.y_old, self.y_new = t_old, h, y_old, y_new
        self.f_old, self._f_new = derivative_at_start, derivative_at_end

    def __call__(self, t) -> Tensor:
        """y at time t: numbers, or per-sample tensors [B] (t, t_old and h alike)."""
        s = (t - self.t_old) / self.h
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        weights = [(0, h00), (1, h01), (2, self.h * h10), (3, self.h * h11)]
        return linear_combination(None, [self.y_old, self.y_new, self.f_old, self._f_new()], weights, 1.0)
