"""Explicit Runge–Kutta solvers (one generic class driven by Butcher tableaux) and the registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from stability import methods
from stability.backward_euler import BackwardEuler
from stability.base import DEFAULT_ATOL, DEFAULT_MAX_STEPS, DEFAULT_RTOL, OdeSolver, TimeVectorField
from stability.checks import (
    check_derivative,
    check_output,
    check_state,
    check_tolerances,
    max_steps_error,
    non_finite_step,
    nonfinite_rejections_error,
    underflow_error,
)
from stability.errors import ODEInputError
from stability.interpolation import HermiteInterpolant, RungeKuttaInterpolant
from stability.runge_kutta import linear_combination, rk_step
from stability.step_control import MAX_NONFINITE_REJECTIONS, STRETCH, error_ratio, initial_step
from stability.tableau import ButcherTableau

# Re-exported from their new homes (``base``, ``checks``) for code that imported them from here.
__all__ = ["DEFAULT_ATOL", "DEFAULT_MAX_STEPS", "DEFAULT_RTOL", "OdeSolver", "TimeVectorField", "SOLVERS",
           "solver_class", "check_derivative", "check_output", "check_state", "check_tolerances"]


class RungeKuttaSolver(OdeSolver):
    """Explicit Runge–Kutta solver for the class attribute ``tableau``; adaptive when the tableau allows."""

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "tableau", None) is not None:
            cls.name = cls.tableau.name

    def __init__(
        self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float, options=None, **keywords
    ) -> None:
        super().__init__(func, t0, y0, t_bound, options, **keywords)
        self.order = self.tableau.order
        self._norm = self.options.norm or error_ratio
        self._stages: list[Tensor] | None = None
        self._first_stage: Tensor | None = self._checked_first_evaluation()
        self._previous_ratio = 1.0
        self._nonfinite_rejections = 0
        if not self.fixed_step:
            interval = abs(self.t_bound - self.t0)
            if self._first_step is not None:
                if not (0 < self._first_step <= interval):
                    raise ODEInputError(f"first_step must lie in (0, {interval}], got {self._first_step}")
                self.h_abs = float(self._first_step)
            else:
                self.h_abs = initial_step(self.fun, self.t, self.y, self._first_stage, self.direction,
                                          self.tableau.error_order, self.rtol, self.atol, interval)
            self.h_abs = min(self.h_abs, self.max_step)

    @classmethod
    def single_step(cls, func: TimeVectorField, t: float, y: Tensor, h: float) -> Tensor:
        """y_{n+1} of one step of this method from (t, y) with step h; no checks, no statistics."""

        def fun(s: float, state: Tensor) -> Tensor:
            return func(torch.full((), s, dtype=state.dtype, device=state.device), state)

        return rk_step(fun, float(t), y, float(h), cls.tableau).y

    def _fixed_step(self, h: float) -> tuple[Tensor, list[Tensor]]:
        result = rk_step(self.fun, self.t, self.y, h, self.tableau, self._first_stage)
        if not bool(torch.isfinite(result.y).all()):
            raise non_finite_step(self.t, h, self.y, result.stages, self.tableau.c)
        return result.y, result.stages

    def _adaptive_step(self) -> None:
        stats, controller, q = self.stats, self.controller, self.tableau.error_order
        t, y, h_abs, rejected = self.t, self.y, self.h_abs, False
        while True:
            if stats.n_steps >= self.max_steps:
                raise max_steps_error(self.max_steps, self.t0, self.t_bound, t, h_abs, self._stiffness())
            t_new = t + self.direction * h_abs
            if self.direction * (t_new + STRETCH * self.direction * h_abs - self.t_bound) >= 0 and (
                self.direction * (t_new - self.t_bound) >= 0 or abs(self.t_bound - t) <= self.max_step
            ):
                t_new = self.t_bound  # clipped, or stretched by ≤ STRETCH·h (within max_step): no sliver step
            h = t_new - t
            h_abs = abs(h)
            if h_abs < 10 * abs(math.nextafter(t, self.direction * math.inf) - t):
                raise underflow_error(t, h_abs, self.direction, self._nonfinite_rejections > 0)
            result = rk_step(self.fun, t, y, h, self.tableau, self._first_stage)
            ratio = self.scaled_error(result.error, y, result.y).item()
            if ratio <= 1.0:
                factor = controller.accept_factor(ratio, self._previous_ratio, q, rejected)
                self._previous_ratio = max(ratio, 1e-4)
                self.h_abs = min(h_abs * factor, self.max_step)
                self._nonfinite_rejections = 0
                self._commit(t_new, h, result.y, result.stages)
                return
            stats.n_rejected += 1
            rejected = True
            self._nonfinite_rejections = 0 if math.isfinite(ratio) else self._nonfinite_rejections + 1
            if self._nonfinite_rejections >= MAX_NONFINITE_REJECTIONS:
                raise nonfinite_rejections_error(t, h_abs)
            h_abs *= controller.reject_factor(ratio, q)

    def _stiffness(self) -> float | None:
        """h·‖k_j − k_i‖/‖Y_j − Y_i‖ over the last accepted step for two stages at the same time (DOPRI5's
        6th and 7th; otherwise the first and last): an estimate of h·|λ| for the dominant eigenvalue λ of
        ∂f/∂y (Hairer–Wanner II.10's stiffness test). Near the stability boundary (≈ 3.3 for DOPRI5) the
        step size is limited by stability, not accuracy: the problem is stiff."""
        stages, tableau = self._stages, self.tableau
        if stages is None or self.y_old is None or len(stages) < 2:
            return None
        j = len(stages) - 1
        i = j - 1 if tableau.c[j - 1] == tableau.c[j] else 0
        with torch.no_grad():
            inputs = [linear_combination(self.y_old, stages, tableau.stage_plan[k - 1][1], self._h_last)
                      if k > 0 else self.y_old for k in (i, j)]
            dy = float(torch.linalg.vector_norm((inputs[1] - inputs[0]).float()))
            df = float(torch.linalg.vector_norm((stages[j] - stages[i]).float()))
        return abs(self._h_last) * df / dy if dy > 0 and math.isfinite(df) else None

    def scaled_error(self, error: Tensor, y_old: Tensor, y_new: Tensor) -> Tensor:
        """The error norm the controller compares with 1 (subclasses may weight parts of the state)."""
        return self._norm(error, y_old, y_new, self.rtol, self.atol)

    def _commit(self, t_new: float, h: float, y_new: Tensor, stages: list[Tensor]) -> None:
        super()._commit(t_new, h, y_new, stages)
        self._first_stage = stages[-1] if self.tableau.fsal else None

    def _derivative_at_end(self) -> Tensor:
        if self._first_stage is None:
            self._first_stage = self.fun(self.t, self.y)
        return self._first_stage

    def dense_output(self) -> Callable[[float], Tensor]:
        if self._stages is None:
            raise RuntimeError("no step has been taken yet")
        if self.tableau.dense is not None:
            return RungeKuttaInterpolant(self.tableau, self.t_old, self._h_last, self.y_old, self._stages)
        return HermiteInterpolant(
            self.t_old, self._h_last, self.y_old, self.y, self._stages[0], self._derivative_at_end
        )


class Euler(RungeKuttaSolver):
    """Explicit Euler, order 1 (fixed step only)."""

    tableau = methods.EULER


class Heun(RungeKuttaSolver):
    """Heun / explicit trapezoid, order 2; adaptive with the embedded Euler error estimate."""

    tableau = methods.HEUN


class RK4(RungeKuttaSolver):
    """Classical fourth-order Runge–Kutta (fixed step only)."""

    tableau = methods.RK4


class Dopri5(RungeKuttaSolver):
    """Dormand–Prince 5(4), FSAL, PI step control, 4th-order dense output."""

    tableau = methods.DOPRI5


SOLVERS: dict[str, type[OdeSolver]] = {
    "euler": Euler, "heun": Heun, "rk4": RK4, "dopri5": Dopri5, "backward_euler": BackwardEuler,
}


def solver_class(method: str) -> type[OdeSolver]:
    """The solver registered under ``method``; unknown names raise listing the known ones."""
    try:
        return SOLVERS[method]
    except (KeyError, TypeError):
        raise ODEInputError(f"unknown method {method!r}; available: {', '.join(sorted(SOLVERS))}") from None
