"""Solver objects in the manner of scipy's ``OdeSolver``: construct, call ``step()``, read ``t``, ``y``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stability import methods
from stability.errors import (
    MaxStepsExceededError,
    NonFiniteValueError,
    ODEInputError,
    StepSizeUnderflowError,
)
from stability.interpolation import HermiteInterpolant, RungeKuttaInterpolant
from stability.runge_kutta import rk_step
from stability.solution import SolverStats
from stability.step_control import PIController, error_ratio, initial_step
from stability.tableau import ButcherTableau

TimeVectorField = Callable[[Tensor, Tensor], Tensor]

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000
# Consecutive rejections with a non-finite error estimate (each shrinks h by min_factor) before giving up.
MAX_NONFINITE_REJECTIONS = 12


class OdeSolver:
    """Base class: integrates dy/dt = func(t, y) from t0 towards t_bound one ``step()`` at a time.

    ``func`` receives t as a 0-d tensor (dtype and device of y0) and must return a tensor shaped like y0.
    Fixed-step mode (``step_size`` or ``grid``) takes exactly those steps; otherwise the step is adaptive.
    """

    name: str = "base"
    order: int = 0

    def __init__(
        self,
        func: TimeVectorField,
        t0: float,
        y0: Tensor,
        t_bound: float,
        *,
        rtol: float = DEFAULT_RTOL,
        atol: float = DEFAULT_ATOL,
        step_size: float | None = None,
        grid: Sequence[float] | None = None,
        first_step: float | None = None,
        max_step: float = math.inf,
        max_steps: int = DEFAULT_MAX_STEPS,
        controller: PIController | None = None,
    ) -> None:
        check_state(y0)
        t0, t_bound = float(t0), float(t_bound)
        if not (math.isfinite(t0) and math.isfinite(t_bound)) or t0 == t_bound:
            raise ODEInputError(f"need finite t0 != t_bound, got t0={t0}, t_bound={t_bound}")
        check_tolerances(rtol, atol)
        if not isinstance(max_steps, int) or max_steps < 1:
            raise ODEInputError(f"max_steps must be a positive integer, got {max_steps!r}")
        if not max_step > 0:
            raise ODEInputError(f"max_step must be positive, got {max_step}")
        self._func = func
        self.t0, self.t_bound, self.t, self.y = t0, t_bound, t0, y0
        self.direction = 1.0 if t_bound > t0 else -1.0
        self.rtol, self.atol = float(rtol), float(atol)
        self.max_step, self.max_steps = float(max_step), max_steps
        self.controller = controller or PIController()
        self.stats = SolverStats()
        self.status = "running"
        self.t_old: float | None = None
        self.y_old: Tensor | None = None
        self._time_dtype = y0.dtype if y0.dtype in (torch.float32, torch.float64) else torch.float32
        self._grid = self._make_grid(step_size, grid)
        self.fixed_step = self._grid is not None
        self._first_step = first_step

    # --- the vector field, counted -------------------------------------------------------------------
    def fun(self, t: float, y: Tensor) -> Tensor:
        """f(t, y) with t given as a float; counts the evaluation."""
        self.stats.nfe += 1
        return self._func(torch.full((), t, dtype=self._time_dtype, device=y.device), y)

    def _checked_first_evaluation(self) -> Tensor:
        f0 = self.fun(self.t, self.y)
        check_derivative(f0, self.y, self.t)
        return f0

    # --- grid for fixed-step mode ----------------------------------------------------------------------
    def _make_grid(self, step_size: float | None, grid: Sequence[float] | None) -> list[float] | None:
        if step_size is not None and grid is not None:
            raise ODEInputError("give either step_size or grid, not both")
        if step_size is not None:
            step_size = float(step_size)
            if not (math.isfinite(step_size) and step_size > 0):
                raise ODEInputError(f"step_size must be positive and finite, got {step_size}")
            span = abs(self.t_bound - self.t0)
            n = max(1, math.ceil(span / step_size - 1e-9))
            if n > self.max_steps:
                raise MaxStepsExceededError(
                    f"step_size={step_size} needs {n} steps over [{self.t0}, {self.t_bound}], "
                    f"more than max_steps={self.max_steps}",
                    t=self.t0,
                    h=step_size,
                )
            return [self.t0 + self.direction * k * step_size for k in range(n)] + [self.t_bound]
        if grid is not None:
            points = [float(x) for x in grid]
            if len(points) < 2 or points[0] != self.t0 or points[-1] != self.t_bound:
                raise ODEInputError("grid must start at t0 and end at t_bound")
            steps = [b - a for a, b in zip(points, points[1:])]
            if not all(math.isfinite(s) and s * self.direction > 0 for s in steps):
                raise ODEInputError(
                    "grid must be finite and strictly monotone in the direction of integration"
                )
            if len(steps) > self.max_steps:
                raise MaxStepsExceededError(f"grid has {len(steps)} steps > max_steps={self.max_steps}")
            return points
        return None

    def step(self) -> None:
        """Advance by one accepted step; sets ``t_old``, ``y_old``, ``t``, ``y`` and possibly ``status``."""
        raise NotImplementedError

    def dense_output(self) -> Callable[[float], Tensor]:
        """An interpolant of the solution over the last accepted step [t_old, t]."""
        raise NotImplementedError


class RungeKuttaSolver(OdeSolver):
    """Explicit Runge–Kutta solver for the class attribute ``tableau``; adaptive when the tableau allows."""

    tableau: ButcherTableau

    def __init__(self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float, **options) -> None:
        super().__init__(func, t0, y0, t_bound, **options)
        self.order = self.tableau.order
        if not self.fixed_step and not self.tableau.adaptive:
            raise ODEInputError(
                f"method '{self.tableau.name}' has no embedded error estimate: give step_size or grid"
            )
        self._stages: list[Tensor] | None = None
        self._first_stage: Tensor | None = self._checked_first_evaluation()
        self._grid_index = 0
        self._previous_ratio = 1.0
        self._nonfinite_rejections = 0
        if not self.fixed_step:
            interval = abs(self.t_bound - self.t0)
            if self._first_step is not None:
                if not (0 < self._first_step <= interval):
                    raise ODEInputError(f"first_step must lie in (0, {interval}], got {self._first_step}")
                self.h_abs = float(self._first_step)
            else:
                self.h_abs = initial_step(
                    self.fun,
                    self.t,
                    self.y,
                    self._first_stage,
                    self.direction,
                    self.tableau.error_order,
                    self.rtol,
                    self.atol,
                    interval,
                )
            self.h_abs = min(self.h_abs, self.max_step)

    @classmethod
    def single_step(cls, func: TimeVectorField, t: float, y: Tensor, h: float) -> Tensor:
        """y_{n+1} of one step of this method from (t, y) with step h; no checks, no statistics."""

        def fun(s: float, state: Tensor) -> Tensor:
            return func(torch.full((), s, dtype=state.dtype, device=state.device), state)

        return rk_step(fun, float(t), y, float(h), cls.tableau).y

    def step(self) -> None:
        if self.status != "running":
            raise RuntimeError(f"cannot step a solver whose status is '{self.status}'")
        if self.fixed_step:
            self._fixed_step()
        else:
            self._adaptive_step()
        if self.t == self.t_bound:
            self.status = "finished"

    def _fixed_step(self) -> None:
        t_new = self._grid[self._grid_index + 1]
        h = t_new - self.t
        result = rk_step(self.fun, self.t, self.y, h, self.tableau, self._first_stage)
        self._grid_index += 1
        self._commit(t_new, h, result.y, result.stages)

    def _adaptive_step(self) -> None:
        stats, controller, q = self.stats, self.controller, self.tableau.error_order
        t, y, h_abs, rejected = self.t, self.y, self.h_abs, False
        while True:
            if stats.n_steps >= self.max_steps:
                done = abs(t - self.t0) / abs(self.t_bound - self.t0)
                raise MaxStepsExceededError(
                    f"max_steps={self.max_steps} exceeded at t={t:.6g} ({100 * done:.1f}% of "
                    f"[{self.t0:g}, {self.t_bound:g}]) with step size h={h_abs:.3g}",
                    t=t,
                    h=h_abs,
                )
            t_new = t + self.direction * h_abs
            if self.direction * (t_new - self.t_bound) > 0:
                t_new = self.t_bound
            h = t_new - t
            h_abs = abs(h)
            if h_abs < 10 * abs(math.nextafter(t, self.direction * math.inf) - t):
                if self._nonfinite_rejections:
                    raise NonFiniteValueError(
                        f"func returned non-finite values at t={t + h:.6g}: the step shrank to h={h_abs:.3g} "
                        f"at t={t!r} without getting past them",
                        t=t,
                        h=h_abs,
                    )
                raise StepSizeUnderflowError(
                    f"step size underflow: h={h_abs:.3g} at t={t!r} is below the resolution of t "
                    f"(the problem is probably stiff or singular there)",
                    t=t,
                    h=h_abs,
                )
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
                raise NonFiniteValueError(
                    f"func returned non-finite values at t={t:.6g} even with the step shrunk to "
                    f"h={h_abs:.3g}",
                    t=t,
                    h=h_abs,
                )
            h_abs *= controller.reject_factor(ratio, q)

    def scaled_error(self, error: Tensor, y_old: Tensor, y_new: Tensor) -> Tensor:
        """The error norm the controller compares with 1 (subclasses may weight parts of the state)."""
        return error_ratio(error, y_old, y_new, self.rtol, self.atol)

    def _commit(self, t_new: float, h: float, y_new: Tensor, stages: list[Tensor]) -> None:
        self.stats.n_accepted += 1
        self.stats.step_sizes.append(h)
        self.stats.step_times.append(self.t)
        self.t_old, self.y_old, self._h_last, self._stages = self.t, self.y, h, stages
        self.t, self.y = t_new, y_new
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


SOLVERS: dict[str, type[OdeSolver]] = {"euler": Euler, "heun": Heun, "rk4": RK4, "dopri5": Dopri5}

# The implicit solver lives in its own module, which subclasses OdeSolver and adds itself to SOLVERS.
import stability.backward_euler  # noqa: E402, F401


def solver_class(method: str) -> type[OdeSolver]:
    """The solver registered under ``method``; unknown names raise listing the known ones."""
    try:
        return SOLVERS[method]
    except (KeyError, TypeError):
        raise ODEInputError(f"unknown method {method!r}; available: {', '.join(sorted(SOLVERS))}") from None


# --- input checks shared by the entry points ------------------------------------------------------------
def check_state(y0: Tensor) -> None:
    if not isinstance(y0, Tensor):
        raise ODEInputError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if not y0.is_floating_point():
        raise ODEInputError(f"y0 must have a floating dtype, got {y0.dtype}")
    if y0.numel() == 0:
        raise ODEInputError("y0 is empty")
    if not bool(torch.isfinite(y0).all()):
        raise ODEInputError("y0 contains NaN or infinite values")


def check_tolerances(rtol: float, atol: float) -> None:
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ODEInputError(f"{name} must be a finite non-negative number, got {value!r}")
    if rtol == 0 and atol == 0:
        raise ODEInputError("rtol and atol cannot both be zero")


def check_derivative(f: Tensor, y: Tensor, t: float) -> None:
    if not isinstance(f, Tensor):
        raise ODEInputError(f"func must return a torch.Tensor, got {type(f).__name__}")
    if f.shape != y.shape:
        raise ODEInputError(
            f"func returned shape {tuple(f.shape)} at t={t}, expected {tuple(y.shape)} like y0"
        )
    if f.dtype != y.dtype:
        raise ODEInputError(f"func returned dtype {f.dtype} at t={t}, expected {y.dtype} like y0")
    if not bool(torch.isfinite(f).all()):
        raise NonFiniteValueError(f"func returned non-finite values at t={t} (the initial state)", t=t)
