"""Tableaux of the adaptive stiff methods, as data: ESDIRK (singly diagonally implicit Runge–Kutta with an
explicit first stage) and Rosenbrock methods in Hairer–Wanner's transformed form. One stepper per family
(``stability.esdirk``, ``stability.rosenbrock``) runs every tableau of it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property


def _check_rows(name: str, rows: tuple[tuple[float, ...], ...], stages: int, what: str) -> None:
    if len(rows) != stages or any(len(row) != i for i, row in enumerate(rows)):
        raise ValueError(f"{name}: {what} must be strictly lower triangular with {stages} rows")


def _nonzero(coefficients) -> tuple[tuple[int, float], ...]:
    return tuple((j, float(x)) for j, x in enumerate(coefficients) if x != 0)


@dataclass(frozen=True)
class ESDIRKTableau:
    """z_1 = y_n explicit, then z_i = y_n + h Σ_{j<i} a_ij k_j + hγ k_i with k_i = f(t + c_i h, z_i) for
    i ≥ 2 (one nonlinear solve per stage, all with the matrix I − hγJ); y_{n+1} = y_n + h Σ b_i k_i.
    ``b_error`` = b − b̂ of the embedded method (order ``error_order``). ``predictor``: rows of weights α_ij
    that extrapolate the stage derivative, k_i⁰ = Σ_{j<i} α_ij k_j (rows sum to 1), for the Newton start
    z_i⁰ = y_n + h Σ_{j<i} a_ij k_j + hγ k_i⁰ (None: z_i⁰ = y_n). Stiffly accurate methods
    (b = last row of A with γ) have y_{n+1} = z_s, so k_s = f(t_{n+1}, y_{n+1}) starts the next step (FSAL).
    """

    name: str
    order: int
    error_order: int
    gamma: float
    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]  # strictly lower part; the diagonal is (0, γ, …, γ)
    b: tuple[float, ...]
    b_error: tuple[float, ...]
    predictor: tuple[tuple[float, ...], ...] | None = None
    dense = None  # cubic Hermite dense output (``runge_kutta.interpolant``)
    adaptive = True

    def __post_init__(self) -> None:
        s = len(self.c)
        _check_rows(self.name, self.a, s, "A")
        if self.predictor is not None:
            _check_rows(self.name, self.predictor, s, "the predictor")
            if any(abs(sum(row) - 1) > 1e-12 for row in self.predictor[1:]):
                raise ValueError(f"{self.name}: each predictor row extrapolates k_i and must sum to 1")
        if len(self.b) != s or len(self.b_error) != s:
            raise ValueError(f"{self.name}: b and b_error need {s} entries")
        for i, row in enumerate(self.a):
            if abs(sum(row) + (self.gamma if i else 0.0) - self.c[i]) > 1e-12:
                raise ValueError(f"{self.name}: row {i} of A (with the diagonal) does not sum to c_{i}")

    @property
    def stages(self) -> int:
        return len(self.c)

    @cached_property
    def fsal(self) -> bool:
        """Stiffly accurate: b is the last row of A (with γ), so y_{n+1} is the last stage and f(y_{n+1})
        its k: the next step's first stage."""
        last = (*self.a[-1], self.gamma)
        return self.c[-1] == 1.0 and all(abs(x - y) < 1e-15 for x, y in zip(last, self.b))

    @cached_property
    def stage_plan(self) -> tuple[tuple[float, tuple, tuple], ...]:
        """For stages 1..s-1: (c_i, nonzero (j, a_ij), nonzero (j, α_ij) of the predictor)."""
        predictor = self.predictor or ((),) * self.stages
        return tuple((self.c[i], _nonzero(self.a[i]), _nonzero(predictor[i])) for i in range(1, self.stages))

    @cached_property
    def b_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b)

    @cached_property
    def error_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.b_error)


@dataclass(frozen=True)
class RosenbrockTableau:
    """Rosenbrock method in transformed variables (Hairer–Wanner II, IV.7 (7.25)): with J = ∂f/∂y(t_n, y_n),
    f_t = ∂f/∂t(t_n, y_n),

        (I/(hγ) − J) u_i = f(t_n + α_i h, y_n + Σ_{j<i} a_ij u_j) + Σ_{j<i} (c_ij / h) u_j + γ_i h f_t,

    y_{n+1} = y_n + Σ m_i u_i, error estimate Σ e_i u_i (e = m − m̂, m̂ of order ``error_order``). Linearly
    implicit: one linear system per stage, all with the matrix I − hγJ, no Newton iteration.
    """

    name: str
    order: int
    error_order: int
    gamma: float
    alpha: tuple[float, ...]  # the stage times α_i
    gamma_t: tuple[float, ...]  # the coefficients γ_i of h f_t
    a: tuple[tuple[float, ...], ...]
    coupling: tuple[tuple[float, ...], ...]  # the c_ij (strictly lower)
    m: tuple[float, ...]
    m_error: tuple[float, ...]
    # (d¹, d²) of the continuous extension
    # y(θ) = (1 − θ) y_n + θ (y_{n+1} + (1 − θ)(Σ d¹_i u_i + θ Σ d²_i u_i)); None: cubic Hermite
    # (``runge_kutta.interpolant``)
    dense_weights: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    adaptive = True
    fsal = False  # f(t_{n+1}, y_{n+1}) is the next step's first stage, evaluated once

    def __post_init__(self) -> None:
        s = len(self.alpha)
        _check_rows(self.name, self.a, s, "A")
        _check_rows(self.name, self.coupling, s, "C")
        if len(self.gamma_t) != s or len(self.m) != s or len(self.m_error) != s:
            raise ValueError(f"{self.name}: gamma_t, m and m_error need {s} entries")
        if self.dense_weights is not None and any(len(row) != s for row in self.dense_weights):
            raise ValueError(f"{self.name}: dense_weights needs two rows of {s} entries")
        if self.gamma <= 0:
            raise ValueError(f"{self.name}: gamma must be positive")

    @property
    def stages(self) -> int:
        return len(self.alpha)

    @property
    def c(self) -> tuple[float, ...]:
        """The stage times (as a Butcher tableau's c): α."""
        return self.alpha

    @cached_property
    def stage_plan(self) -> tuple[tuple[float, float, tuple, tuple], ...]:
        """For each stage i: (α_i, γ_i, nonzero (j, a_ij), nonzero (j, c_ij))."""
        return tuple((self.alpha[i], self.gamma_t[i], _nonzero(self.a[i]), _nonzero(self.coupling[i]))
                     for i in range(self.stages))

    @cached_property
    def dense(self) -> tuple[tuple[float, ...], ...] | None:
        """The continuous extension as ``ButcherTableau.dense`` writes it for stages u_i/h:
        y(θ) = y_n + Σ_i u_i [θ (m_i + d¹_i) + θ² (d²_i − d¹_i) − θ³ d²_i]."""
        if self.dense_weights is None:
            return None
        first, second = self.dense_weights
        return tuple((m + d1, d2 - d1, -d2) for m, d1, d2 in zip(self.m, first, second))

    @cached_property
    def m_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.m)

    @cached_property
    def error_plan(self) -> tuple[tuple[int, float], ...]:
        return _nonzero(self.m_error)
