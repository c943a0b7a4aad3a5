"""Explicit Runge–Kutta solvers (one generic class driven by Butcher tableaux) and the registry of methods."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from stability import methods
from stability.backward_euler import BackwardEuler
from stability.base import OdeSolver, TimeVectorField
from stability.checks import (
    all_finite,
    check_first_step,
    check_norm_value,
    max_steps_error,
    min_step_error,
    non_finite_step,
    nonfinite_rejections_error,
    underflow_error,
)
from stability.compiled import compiled_step
from stability.errors import ODEInputError
from stability.runge_kutta import RKStep, interpolant, rk_step
from stability.step_control import MAX_NONFINITE_REJECTIONS, STRETCH, error_norm, initial_step, stiffness
from stability.tableau import ButcherTableau


class RungeKuttaSolver(OdeSolver):
    """Explicit Runge–Kutta solver for the class attribute ``tableau``; adaptive when the tableau allows."""

    tableau: ButcherTableau

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if getattr(cls, "tableau", None) is not None:
            cls.name, cls.order = cls.tableau.name, cls.tableau.order

    def __init__(
        self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float, options=None, **keywords
    ) -> None:
        super().__init__(func, t0, y0, t_bound, options, **keywords)
        self._norm = error_norm(self.options.norm)
        self._own_norm = self.options.norm not in (None, "rms")  # not the compiled graph's mixed RMS
        self._compiled = (compiled_step(func, self.tableau, self.rtol, self.atol, self._time_dtype)
                          if self.options.compile else None)
        self._first_stage: Tensor | None = self._checked_first_evaluation()
        self._memory, self._nonfinite_rejections = self.controller.initial_memory(), 0
        if not self.fixed_step:
            interval = abs(self.t_bound - self.t0)
            h_abs = check_first_step(self.options.first_step, interval)
            if h_abs is None:
                h_abs = initial_step(self.fun, self.t, self.y, self._first_stage, self.direction,
                                     self.tableau.error_order, self.rtol, self.atol, interval)
            self.h_abs = min(h_abs, self.max_step)

    @classmethod
    def single_step(cls, func: TimeVectorField, t: float, y: Tensor, h: float) -> Tensor:
        """y_{n+1} of one step of this method from (t, y) with step h; no checks, no statistics."""
        fun = lambda s, state: func(torch.full((), s, dtype=state.dtype, device=state.device), state)  # noqa: E731
        return rk_step(fun, float(t), y, float(h), cls.tableau).y

    def _rk_step(self, t: float, y: Tensor, h: float) -> tuple[RKStep, float | None]:
        """One step and its error ratio (None for fixed-step tableaux); ``compile=True``: the compiled step,
        whose graph computes the mixed RMS ratio too (a given ``norm`` still runs eagerly); a non-FSAL method
        then evaluates its first stage in the graph (one more evaluation than eager on the first step)."""
        if self._compiled is None:
            result, ratio = rk_step(self.fun, t, y, h, self.tableau, self._first_stage), None
        else:
            first = self._first_stage if self.tableau.fsal else None  # one graph for every step
            self.stats.nfe += len(self.tableau.stage_plan) + (first is None)
            result, ratio = self._compiled(torch.tensor([t, h], dtype=torch.float64), y, first)
        if result.error is not None and (ratio is None or self._own_norm):
            ratio = self._norm(result.error, y, result.y, self.rtol, self.atol)
        return result, None if ratio is None else float(ratio)

    def _fixed_step(self, h: float) -> tuple[Tensor, list[Tensor]]:
        result, _ = self._rk_step(self.t, self.y, h)
        if not all_finite(result.y):
            raise non_finite_step(self.t, h, result.stages, self.tableau.c)
        return result.y, result.stages

    def _adaptive_step(self) -> None:
        stats, controller, tableau, direction, t_bound = (
            self.stats, self.controller, self.tableau, self.direction, self.t_bound)
        t, y, h_abs, rejected, forced = self.t, self.y, self.h_abs, False, False
        while True:
            if stats.n_accepted + stats.n_rejected >= self.max_steps:
                estimate = stiffness(self.y_old, self._stages, tableau, self._h_last)
                raise max_steps_error(self.max_steps, self.t0, t_bound, t, h_abs, estimate)
            if h_abs < self.options.min_step:
                h_abs, forced = self._below_min_step(t, h_abs)
            t_new = t + direction * h_abs
            if direction * (t_new + STRETCH * direction * h_abs - t_bound) >= 0 and (
                direction * (t_new - t_bound) >= 0 or abs(t_bound - t) <= self.max_step
            ):
                t_new = t_bound  # clipped, or stretched by ≤ STRETCH·h (within max_step): no sliver step
            h = t_new - t
            h_abs = abs(h)
            if h_abs < 10 * abs(math.nextafter(t, direction * math.inf) - t):
                raise underflow_error(t, h_abs, direction, self._nonfinite_rejections > 0)
            result, ratio = self._rk_step(t, y, h)
            if ratio <= 1.0 or (forced and math.isfinite(ratio)):
                factor = controller.accept_factor(ratio, self._memory, tableau.error_order, rejected)
                self._memory = controller.remember(self._memory, ratio)
                self.h_abs = min(h_abs * factor, self.max_step)
                self._nonfinite_rejections = 0
                self._commit(t_new, h, result.y, result.stages)
                return
            stats.n_rejected += 1
            rejected = True
            self._nonfinite_rejections = 0 if math.isfinite(ratio) else self._nonfinite_rejections + 1
            if self._nonfinite_rejections == 1 and self._own_norm:
                check_norm_value(ratio, result.error, result.y, t)
            if self._nonfinite_rejections >= MAX_NONFINITE_REJECTIONS:
                raise nonfinite_rejections_error(t, h_abs)
            h_abs *= controller.reject_factor(ratio, tableau.error_order, self._memory)

    def _below_min_step(self, t: float, h_abs: float) -> tuple[float, bool]:
        """The step the controller proposed is below ``min_step``: taken at min_step and accepted whatever its
        (finite) error with ``force_min_step``, else a ``StepSizeUnderflowError``."""
        if self.options.force_min_step:
            return self.options.min_step, True
        raise min_step_error(self.options.min_step, t, h_abs)

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
        return interpolant(self.tableau, self.t_old, self._h_last, self.y_old, self.y, self._stages,
                           self._derivative_at_end)


class Euler(RungeKuttaSolver):
    """Explicit Euler, order 1 (fixed step only)."""

    tableau = methods.EULER


class Heun(RungeKuttaSolver):
    """Heun / explicit trapezoid, order 2; adaptive with the embedded Euler error estimate."""

    tableau = methods.HEUN


class RK4(RungeKuttaSolver):
    """Classical fourth-order Runge–Kutta (fixed step only)."""

    tableau = methods.RK4


class Bosh3(RungeKuttaSolver):
    """Bogacki–Shampine 3(2), FSAL, cubic dense output (scipy's RK23, MATLAB's ode23)."""

    tableau = methods.BOSH3


class Dopri5(RungeKuttaSolver):
    """Dormand–Prince 5(4), FSAL, PI step control, 4th-order dense output."""

    tableau = methods.DOPRI5


class Tsit5(RungeKuttaSolver):
    """Tsitouras 5(4), FSAL, 4th-order dense output (diffrax's and DifferentialEquations.jl's default)."""

    tableau = methods.TSIT5


SOLVERS: dict[str, type[OdeSolver]] = {
    "euler": Euler, "heun": Heun, "rk4": RK4, "bosh3": Bosh3, "dopri5": Dopri5, "tsit5": Tsit5,
    "backward_euler": BackwardEuler,
}


def solver_class(method: str) -> type[OdeSolver]:
    """The solver registered under ``method``; unknown names raise listing the known ones."""
    try:
        return SOLVERS[method]
    except (KeyError, TypeError):
        raise ODEInputError(f"unknown method {method!r}; available: {', '.join(sorted(SOLVERS))}") from None


def step(func: TimeVectorField, t: float, y: Tensor, h: float, method: str = "euler") -> Tensor:
    """y_{n+1} after one step of ``method`` with step h from (t, y); e.g. euler: y + h·func(t, y).

    No validation and no statistics: this is the hot path of a network's forward pass (``nets``' blocks).
    """
    return solver_class(method).single_step(func, t, y, h)
