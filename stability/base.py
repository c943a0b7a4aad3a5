"""The solver base class, in the manner of scipy's ``OdeSolver``: construct, ``step()``, read ``t``, ``y``."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stability.checks import check_derivative, check_low_precision, check_state, evaluate_checked, time_dtype
from stability.errors import MaxStepsExceededError, ODEInputError
from stability.options import SolverOptions, as_options
from stability.solution import SolverStats

TimeVectorField = Callable[[Tensor, Tensor], Tensor]
Times = Tensor | Sequence[float]  # output times: strictly monotone, at least 2


def shared_time(func: TimeVectorField, batch: int) -> TimeVectorField:
    """A per-sample func (t of shape [B]) as a func of one time t, expanded to [B]: for one shared solve."""
    return lambda t, y: func(t.expand(batch), y)


class OdeSolver:
    """Base class: integrates dy/dt = func(t, y) from t0 towards t_bound one ``step()`` at a time; ``func``
    gets t as a 0-d tensor. ``options``: a ``SolverOptions``, or its fields as keywords (``step_size`` or
    ``grid``: exactly those steps; otherwise adaptive)."""

    name: str = "base"
    order: int = 0

    def __init__(self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float,
                 options: SolverOptions | None = None, **keywords) -> None:
        options = as_options(options, keywords if options else {"method": self.name, **keywords})
        check_state(y0)
        t0, t_bound = float(t0), float(t_bound)
        if not (math.isfinite(t0) and math.isfinite(t_bound)) or t0 == t_bound:
            raise ODEInputError(f"need finite t0 != t_bound, got t0={t0}, t_bound={t_bound}")
        self.options, self._func = options, func
        # func works on the solver's copy: an in-place change by func is refused without changing y0
        self.t0, self.t_bound, self.t, self.y = t0, t_bound, t0, y0.clone()
        self.direction = 1.0 if t_bound > t0 else -1.0
        self.rtol, self.atol = options.rtol, options.atol
        self.max_step, self.max_steps = float(options.max_step), options.max_steps
        self.controller = options.controller
        self.stats = SolverStats()
        self.status = "running"
        self.t_old = self.y_old = self._stages = self._h_last = None  # the last accepted step, once taken
        self._time_dtype = time_dtype(y0, options.time_dtype)
        # t tensors are made as new_full of this 0-d one: as torch.full rounds, with less dispatch per call
        self._t_last, self._t_tensor = None, torch.zeros((), dtype=self._time_dtype, device=y0.device)
        self._last_output: tuple[Tensor | None, int] = (None, 0)  # func's previous output and its version
        self.grid = self._make_grid(options.step_size, options.grid)
        self._grid_index = 0
        self.fixed_step = self.grid is not None
        if not self.fixed_step:
            check_low_precision(y0.dtype, self.rtol)

    def fun(self, t: float, y: Tensor) -> Tensor:
        """f(t, y) with t given as a float; counts the evaluation and checks the output's type, shape and
        dtype (a later wrong shape would otherwise broadcast silently), that func left y unchanged (its
        version counter) and that it did not overwrite and return its previous output (a reused buffer):
        either would corrupt the stages the solver holds, silently."""
        self.stats.nfe += 1
        if t != self._t_last:  # DOPRI5's last two stages share their time: one tensor for both
            self._t_last, self._t_tensor = t, self._t_tensor.new_full((), t)
        f, self._last_output = evaluate_checked(self._func, self._t_tensor, y, t, self._last_output)
        return f

    def _checked_first_evaluation(self) -> Tensor:
        f0 = self.fun(self.t, self.y)
        check_derivative(f0, self.y, self.t)
        return f0

    def _make_grid(self, step_size: float | None, grid: Sequence[float] | None) -> list[float] | None:
        """The time points of fixed-step mode (None when adaptive)."""
        if step_size is not None:
            n = max(1, math.ceil(abs(self.t_bound - self.t0) / step_size - 1e-9))
            if n > self.max_steps:
                raise MaxStepsExceededError(
                    f"step_size={step_size} needs {n} steps over [{self.t0}, {self.t_bound}], "
                    f"more than max_steps={self.max_steps}", t=self.t0, h=step_size)
            return [self.t0 + self.direction * k * step_size for k in range(n)] + [self.t_bound]
        if grid is None:
            return None
        points = [float(x) for x in grid]
        if len(points) < 2 or points[0] != self.t0 or points[-1] != self.t_bound:
            raise ODEInputError("grid must start at t0 and end at t_bound")
        if not all(math.isfinite(b - a) and (b - a) * self.direction > 0 for a, b in zip(points, points[1:])):
            raise ODEInputError("grid must be finite and strictly monotone in the direction of integration")
        if len(points) - 1 > self.max_steps:
            raise MaxStepsExceededError(f"grid has {len(points) - 1} steps > max_steps={self.max_steps}")
        return points

    def step(self) -> None:
        """Advance by one accepted step; sets ``t_old``, ``y_old``, ``t``, ``y`` and possibly ``status``."""
        if self.status != "running":
            raise RuntimeError(f"cannot step a solver whose status is '{self.status}'")
        if self.fixed_step:
            self._grid_index += 1
            t_new = self.grid[self._grid_index]
            self._commit(t_new, t_new - self.t, *self._fixed_step(t_new - self.t))
        else:
            self._adaptive_step()
        if self.t == self.t_bound:
            self.status = "finished"

    def _fixed_step(self, h: float) -> tuple[Tensor, list[Tensor] | None]:
        """(y_{n+1}, stages) of one step of size h from (t, y)."""
        raise NotImplementedError

    def _commit(self, t_new: float, h: float, y_new: Tensor, stages: list[Tensor] | None) -> None:
        self.stats.n_accepted += 1
        self.stats.step_sizes.append(h)
        self.stats.step_times.append(self.t)
        self.t_old, self.y_old, self._h_last, self._stages = self.t, self.y, h, stages
        self.t, self.y = t_new, y_new

    def dense_output(self) -> Callable[[float], Tensor]:
        """An interpolant of the solution over the last accepted step [t_old, t]."""
        raise NotImplementedError
