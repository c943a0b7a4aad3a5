"""The one integration loop that every entry point uses.

A *stepper* holds the state of an integration and its step-size control: ``SharedStepper`` (one step
sequence for the whole state: an ``OdeSolver``, adaptive or on a fixed grid) or ``PerSampleStepper`` (t and h
of shape [B]). The loop ``run`` calls ``advance()`` until every output time is passed; each call
returns the outputs it produced. The gradient strategies (backprop here, ``checkpointing``, ``adjoint``) are
functions of (func, y0, t, options) around the same loop and steppers: every step control × every gradient.

Stepper protocol: ``finished``; ``advance() -> list[Tensor]``; ``state()`` / ``set_state(tensors)`` (the
differentiable carried state); ``snapshot()`` (a copy that can re-run from here); ``position()`` (what a
deterministic re-run must reproduce); ``assemble(y0, values) -> ys``; ``statistics()``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor

from stability.base import OdeSolver, Times, TimeVectorField, shared_time
from stability.checks import check_state, check_times
from stability.errors import ODEInputError, SolverError
from stability.options import SolverOptions
from stability.per_sample import PerSampleStepper
from stability.solution import HIT_TOLERANCE, PerSampleSolution, Solution, SolverStats, output_reached
from stability.solver import solver_class
from stability.status import Status, status_of


class SharedStepper:
    """One step-size sequence for the whole state: an ``OdeSolver`` and the output times it passes.

    ``replicas``: in per-sample mode with fixed steps every sample takes the same steps, so one solve serves
    all and its statistics are reported once per sample."""

    def __init__(self, solver: OdeSolver, times: list[float], replicas: int | None = None) -> None:
        self.solver, self.times, self.index, self.replicas = solver, times, 1, replicas
        self.y0 = solver.y  # the solver's copy of y0: ys[0], so y0's gradient sums in one place as before
        self.margin = HIT_TOLERANCE * abs(times[-1] - times[0])
        self.failure: SolverError | None = None  # with throw=False: the error that ended the solve

    @property
    def finished(self) -> bool:
        return self.index >= len(self.times)

    def advance(self) -> list[Tensor]:
        solver, times, margin = self.solver, self.times, self.margin
        try:
            solver.step()
        except SolverError as failure:
            if solver.options.throw:
                raise
            self.failure, self.index = failure, len(times)  # finished: the outputs not reached stay NaN
            return []
        produced = []
        while self.index < len(times):
            target = times[self.index]
            reached, at_end = output_reached(target, solver.t, solver.direction, margin)
            if not reached:
                return produced
            produced.append(solver.y if at_end else solver.dense_output()(target))
            self.index += 1
        return produced

    def state(self) -> tuple[Tensor, ...]:
        return (self.solver.y,)

    def set_state(self, state: tuple[Tensor, ...]) -> None:
        (self.solver.y,) = state

    def snapshot(self) -> SharedStepper:
        other = copy.copy(self)
        other.solver = solver = copy.copy(self.solver)
        solver.stats = copy.deepcopy(self.solver.stats)  # running totals: max_steps counts every chunk
        # The previous step's interpolation data is not needed to continue; dropping it keeps a chunk boundary
        # at y (and, for FSAL methods, its first stage) instead of all stages of the last step.
        solver.y_old = solver._stages = None
        solver._last_output = (None, 0)
        return other

    def position(self) -> tuple:
        return self.solver.t, self.solver.stats.n_steps

    def assemble(self, y0: Tensor, values: list[Tensor]) -> Tensor:
        # after a failure (throw=False) the outputs not reached are NaN; ys[0] is the solver's copy of y0
        missing = [torch.full_like(self.y0, math.nan)] * (len(self.times) - 1 - len(values))
        return torch.stack([self.y0, *values, *missing])

    def outcome(self) -> tuple[Tensor, Tensor, list[str | None]]:
        """(status, t_reached, messages): one integration (0-d), or ``replicas`` equal ones ([B])."""
        status = Status.SUCCESS if self.failure is None else status_of(self.failure)
        shape = () if self.replicas is None else (self.replicas,)
        message = None if self.failure is None else str(self.failure)
        return (torch.full(shape, int(status), dtype=torch.int64), torch.full(shape, self.solver.t,
                dtype=torch.float64), [message] * (self.replicas or 1))

    def statistics(self) -> SolverStats | list[SolverStats]:
        stats = self.solver.stats
        return stats if self.replicas is None else [copy.deepcopy(stats) for _ in range(self.replicas)]


def make_stepper(func: TimeVectorField, y0: Tensor, times: list[float], options: SolverOptions):
    """The stepper ``options`` ask for: per-sample adaptive control, or one ``OdeSolver`` for the state."""
    replicas = None
    if options.per_sample:
        check_state(y0)
        if y0.dim() < 1:
            raise ODEInputError("per-sample mode needs a leading batch dimension in y0")
        if not options.fixed_step:
            return PerSampleStepper(func, y0, times, options)
        func, replicas = shared_time(func, y0.shape[0]), y0.shape[0]  # fixed steps: one solve serves all
    solver = solver_class(options.method)(func, times[0], y0, times[-1], options)
    return SharedStepper(solver, times, replicas)


def run(stepper) -> list[Tensor]:
    """The loop: advance until every output time is passed; the output values in the order produced."""
    values: list[Tensor] = []
    while not stepper.finished:
        values.extend(stepper.advance())
    return values


def solution(stepper, y0: Tensor, values: list[Tensor], t, times: list[float], options) -> Solution:
    """The ``Solution`` (or ``PerSampleSolution``) of a finished stepper."""
    ys = stepper.assemble(y0, values)
    t_out = t if isinstance(t, Tensor) else torch.tensor(times, dtype=y0.dtype)
    kind = PerSampleSolution if options.per_sample else Solution
    status, t_reached, messages = stepper.outcome()
    return kind(t=t_out, ys=ys, stats=stepper.statistics(), method=options.method, status=status,
                t_reached=t_reached, messages=messages)


def solve_backprop(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions):
    """Gradient strategy "backprop": the graph of every step is kept (the exact discrete gradient)."""
    times = check_times(t)
    stepper = make_stepper(func, y0, times, options)
    return solution(stepper, y0, run(stepper), t, times, options)
