"""The solver base class, in the manner of scipy's ``OdeSolver``: construct, ``step()``, read ``t``, ``y``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stability.checks import (
    check_derivative,
    check_low_precision,
    check_output,
    check_state,
    check_tolerances,
)
from stability.errors import MaxStepsExceededError, ODEInputError
from stability.solution import SolverStats
from stability.step_control import PIController

TimeVectorField = Callable[[Tensor, Tensor], Tensor]

DEFAULT_RTOL = 1e-7
DEFAULT_ATOL = 1e-9
DEFAULT_MAX_STEPS = 100_000


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
        if not self.fixed_step:
            check_low_precision(y0.dtype, self.rtol)
        self._first_step = first_step

    # --- the vector field, counted -------------------------------------------------------------------
    def fun(self, t: float, y: Tensor) -> Tensor:
        """f(t, y) with t given as a float; counts the evaluation and checks the output's type, shape and
        dtype (three attribute comparisons: a later wrong shape would otherwise broadcast silently)."""
        self.stats.nfe += 1
        f = self._func(torch.full((), t, dtype=self._time_dtype, device=y.device), y)
        if not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:
            check_output(f, y, t)
        return f

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
