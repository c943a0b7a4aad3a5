"""Butcher tableaux as data: an explicit Runge–Kutta method is (c, A, b), plus an optional embedded error
weight vector and dense-output coefficients. One generic stepper (``runge_kutta.rk_step``) serves them all."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


@dataclass(frozen=True)
class ButcherTableau:
    """Explicit RK method: k_i = f(t + c_i h, y + h Σ_{j<i} a_ij k_j),  y_{n+1} = y_n + h Σ b_i k_i.

    ``b_error`` holds b − b̂ of the embedded method (order ``error_order``), so the local error estimate is
    h Σ (b_i − b̂_i) k_i. ``dense`` holds P with y(t + θh) = y + h Σ_i k_i Σ_j P_ij θ^{j+1}.
    ``fsal``: the last stage is evaluated at y_{n+1}, so its k is the next step's first stage.
    """

    name: str
    order: int
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[float, ...]
    b_error: tuple[float, ...] | None = None
    error_order: int | None = None
    fsal: bool = False
    dense: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        s = len(self.c)
        if len(self.a) != s or any(len(row) != i for i, row in enumerate(self.a)):
            raise ValueError(f"{self.name}: A must be strictly lower triangular with {s} rows")
        if len(self.b) != s or (self.b_error is not None and len(self.b_error) != s):
            raise ValueError(f"{self.name}: b and b_error need {s} entries")
        for i, row in enumerate(self.a):
            if abs(sum(row) - self.c[i]) > 1e-12:
                raise ValueError(f"{self.name}: row {i} of A does not sum to c_{i}")
        if self.fsal and (self.c[-1] != 1.0 or any(abs(x - y) > 1e-15 for x, y in zip(self.a[-1], self.b))):
            raise ValueError(f"{self.name}: FSAL requires the last row of A to equal b and c_s = 1")
        if (self.b_error is None) != (self.error_order is None):
            raise ValueError(f"{self.name}: b_error and error_order go together")

    @property
    def stages(self) -> int:
        return len(self.c)

    @property
    def adaptive(self) -> bool:
        """Whether the tableau carries an embedded error estimate (needed for step-size control)."""
        return self.b_error is not None

    @cached_property
    def stage_plan(self) -> tuple[tuple[float, tuple[tuple[int, float], ...]], ...]:
        """For stages 1..s-1: (c_i, nonzero (j, a_ij)) — zero coefficients cost nothing at run time."""
        return tuple((self.c[i], _nonzero(self.a[i])) for i in range(1, self.stages))

    @cached_property
    def b_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b)

    @cached_property
    def error_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b_error) if self.b_error is not None else ()


def _nonzero(coefficients: tuple[float, ...]) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(x)) for j, x in enumerate(coefficients) if x != 0)
