"""Solving with events: a stepper around ``integrate``'s steppers that watches each accepted step for the
zero crossings of ``Event`` conditions, per sample along dim 0, and stops a sample at its terminal event.

``EventStepper`` follows the stepper protocol of ``stability.integrate`` (so ``run`` and the checkpointed
loop drive it unchanged); its ``advance()`` returns the inner stepper's outputs followed by the located
crossings' (t*, y*), so their gradients pass through checkpointed chunks like any output. Under per-sample
control a stopped sample takes no more steps; under shared control the batch is one step sequence, so a
stopped sample's rows of f are set to zero from the next step on (its state stays put, out of the error
control) and its outputs after t* are NaN, like a per-sample one's.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stability.base import OdeSolver, Times, TimeVectorField
from stability.checkpointing import run_checkpointed
from stability.checks import all_finite, check_state, check_times, time_dtype
from stability.errors import ODEInputError
from stability.events import Event, differentiable_crossing, locate
from stability.integrate import make_stepper, run
from stability.options import SolverOptions
from stability.per_sample import PerSampleStepper
from stability.runge_kutta import interpolant
from stability.solution import EventSolution
from stability.status import Status

# (samples [n], t_old [n], t_new [n], y_new [n, ...], dense_rows(rows) -> (t [m] -> ŷ [m, ...]))
StepView = tuple[Tensor, Tensor, Tensor, Tensor, Callable[[Tensor], Callable[[Tensor], Tensor]]]


class FrozenRows:
    """A shared solver's f with the rows of stopped samples set to zero: each copy of the stepper (a
    checkpointed chunk's replay) holds its own, so a replay sees the rows stopped when its chunk began."""

    def __init__(self, func: TimeVectorField, live: Tensor | None = None) -> None:
        self.func, self.live = func, live

    def __call__(self, t: Tensor, y: Tensor) -> Tensor:
        f = self.func(t, y)
        if self.live is None or not isinstance(f, Tensor) or f.shape != y.shape:
            return f  # nothing stopped yet (or a malformed f, which the solver's checks then name)
        return torch.where(self.live.view(-1, *([1] * (f.dim() - 1))), f, torch.zeros((), dtype=f.dtype,
                                                                                       device=f.device))


class EventStepper:
    """The inner stepper (``SharedStepper`` or ``PerSampleStepper``) plus the event watch."""

    def __init__(self, inner, events: Sequence[Event], y0: Tensor, times: list[float]) -> None:
        self.inner, self.events, self.times = inner, tuple(events), times
        if isinstance(inner, PerSampleStepper):
            inner.keep_last_step = True  # the crossings are searched on the step it just accepted
        else:
            if not isinstance(getattr(inner, "solver", None), OdeSolver):
                raise ODEInputError(f"events are not supported by the stepper {type(inner).__name__}")
            inner.solver._func = FrozenRows(inner.solver._func)
        self.direction = 1.0 if times[-1] > times[0] else -1.0
        options = inner.options if isinstance(inner, PerSampleStepper) else inner.solver.options
        self.batch, self.time_dtype = y0.shape[0], time_dtype(y0, options.time_dtype)
        self.resolution = 4 * torch.finfo(y0.dtype).eps
        device = y0.device
        t0 = torch.full((self.batch,), times[0], dtype=torch.float64, device=device)
        with torch.no_grad():
            self.g = torch.stack([event.evaluate(t0.to(self.time_dtype), y0).double() for event in events])
        if not all_finite(self.g):
            number, row = (~torch.isfinite(self.g)).nonzero()[0].tolist()
            raise ODEInputError(f"event {number}'s condition returned a non-finite value for sample {row} at "
                                f"the start t={times[0]:.6g}")
        self.stop_time = torch.full((self.batch,), math.nan, dtype=torch.float64, device=device)
        # per advance: (number of the inner outputs, event numbers [n], samples [n]) of its crossings
        self.log: list[tuple[int, Tensor | None, Tensor | None]] = []

    @property
    def finished(self) -> bool:
        return self.inner.finished

    @property
    def solver(self):  # the checkpointed loop sizes its chunks from a shared solver's grid
        return self.inner.solver

    def advance(self) -> list[Tensor]:
        values = self.inner.advance()
        view = self._last_step()
        crossings = None if view is None else self._crossings(view)
        if crossings is None:
            self.log.append((len(values), None, None))
            return values
        index, samples, t_star, y_star = crossings
        self.log.append((len(values), index, samples))
        return [*values, t_star, y_star]

    def state(self) -> tuple[Tensor, ...]:
        return self.inner.state()

    def set_state(self, state: tuple[Tensor, ...]) -> None:
        self.inner.set_state(state)

    def snapshot(self) -> EventStepper:
        other = copy.copy(self)
        other.inner, other.log = self.inner.snapshot(), list(self.log)
        if not isinstance(self.inner, PerSampleStepper):
            frozen = self.inner.solver._func
            other.inner.solver._func = FrozenRows(frozen.func, frozen.live)
        return other

    def position(self) -> tuple:
        return self.inner.position()

    def statistics(self):
        return self.inner.statistics()

    def _last_step(self) -> StepView | None:
        """The step the last ``advance`` accepted, for the samples still integrating (None: no step)."""
        inner = self.inner
        if isinstance(inner, PerSampleStepper):
            if inner.last_step is None:
                return None
            samples, t_old, h, y_old, y_new, stages = inner.last_step
            return samples, t_old, t_old + h, y_new, lambda rows: inner._interpolant(
                samples.index_select(0, rows), t_old, h, y_old, y_new, stages, rows)
        solver = inner.solver
        if inner.failure is not None or solver.y_old is None:  # every other advance accepted one step
            return None
        samples = (~(self.stop_time == self.stop_time)).nonzero().squeeze(1)  # not stopped (stop time NaN)
        if samples.numel() == 0:
            return None
        full = lambda value: torch.full((samples.numel(),), value, dtype=torch.float64,  # noqa: E731
                                        device=samples.device)
        return samples, full(solver.t_old), full(solver.t), solver.y.index_select(0, samples), (
            lambda rows: _shared_dense(solver, samples.index_select(0, rows)))

    def _crossings(self, view: StepView):
        """Locate the crossings in the step ``view``; stop samples at their first terminal one; return
        (event numbers, samples, t*, y*) of those recorded, or None."""
        samples, t_old, t_new, y_new, dense_rows = view
        with torch.no_grad():
            g_new = torch.stack([e.evaluate(t_new.to(self.time_dtype), y_new).double() for e in self.events])
            if not all_finite(g_new):
                number, row = (~torch.isfinite(g_new)).nonzero()[0].tolist()
                raise ODEInputError(f"event {number}'s condition returned a non-finite value for sample "
                                    f"{int(samples[row])} at t={float(t_new[row]):.6g}: a crossing cannot be "
                                    f"located through NaN or infinity")
            g_old = self.g.index_select(1, samples)
            self.g = self.g.index_copy(1, samples, g_new)
            found = []
            for number, event in enumerate(self.events):
                rows = event.crossed(g_old[number], g_new[number]).nonzero().squeeze(1)
                if rows.numel() == 0:
                    continue
                dense = dense_rows(rows)
                phi = lambda t, e=event, d=dense: e.evaluate(t.to(self.time_dtype), d(t)).double()  # noqa: E731
                roots = locate(phi, t_old[rows], t_new[rows], g_old[number, rows], g_new[number, rows],
                               self.resolution)
                found.append((torch.full_like(rows, number), rows, roots))
        if not found:
            return None
        index, rows, roots = (torch.cat(parts) for parts in zip(*found))
        order = torch.argsort(self.direction * roots, stable=True)
        index, rows, roots = index[order], rows[order], roots[order]
        terminal = torch.tensor([e.terminal for e in self.events], device=index.device)[index]
        first_stop = torch.full_like(t_new, self.direction * math.inf).scatter_reduce(
            0, rows[terminal], roots[terminal], "amin" if self.direction > 0 else "amax")
        keep = self.direction * (roots - first_stop[rows]) <= 0  # nothing after the sample's stop
        index, rows, roots = index[keep], rows[keep], roots[keep]
        t_star, y_star = [], []
        for number, event in enumerate(self.events):  # the gradient-carrying values, event by event
            mine = (index == number).nonzero().squeeze(1)
            if mine.numel() > 0:
                t, y = differentiable_crossing(event, roots[mine], dense_rows(rows[mine]), self.time_dtype)
                t_star.append((mine, t))
                y_star.append((mine, y))
        positions = torch.argsort(torch.cat([mine for mine, _ in t_star]))
        t_all = torch.cat([t for _, t in t_star]).index_select(0, positions)
        y_all = torch.cat([y for _, y in y_star]).index_select(0, positions)
        stopping = torch.isfinite(first_stop).nonzero().squeeze(1)  # after the interpolants are done with
        if stopping.numel() > 0:
            self._stop(samples.index_select(0, stopping), first_stop.index_select(0, stopping))
        return index, samples.index_select(0, rows), t_all, y_all

    def _stop(self, samples: Tensor, times: Tensor) -> None:
        self.stop_time = self.stop_time.index_copy(0, samples, times)
        stopped = self.stop_time == self.stop_time
        if isinstance(self.inner, PerSampleStepper):
            self.inner.stop(samples, Status.EVENT)
        elif bool(stopped.all()):  # shared: every sample stopped, so the solve
            self.inner.index = len(self.inner.times)
        else:  # f of the stopped rows is zero from now on, the next step's first stage included
            solver = self.inner.solver
            solver._func.live = ~stopped
            first = getattr(solver, "_first_stage", None)
            if first is not None:
                solver._first_stage = torch.where(_rows(stopped[None], first[None])[0], torch.zeros(
                    (), dtype=first.dtype, device=first.device), first)

    def result(self, y0: Tensor, values: list[Tensor], t: Times, options: SolverOptions) -> EventSolution:
        inner_values, t_parts, y_parts, index_parts, sample_parts, position = [], [], [], [], [], 0
        for count, index, samples in self.log:
            inner_values.extend(values[position : position + count])
            position += count
            if index is not None:
                t_parts.append(values[position])
                y_parts.append(values[position + 1])
                index_parts.append(index)
                sample_parts.append(samples)
                position += 2
        ys = self.inner.assemble(y0, inner_values)
        times = torch.tensor(self.times, dtype=torch.float64, device=y0.device)
        after_stop = self.direction * (times[:, None] - self.stop_time[None, :]) > 0  # NaN stop: False
        ys = torch.where(_rows(after_stop, ys), torch.full_like(ys, math.nan).detach(), ys)
        status, t_reached, messages = self.inner.outcome()
        if status.dim() == 0:  # a shared solve's outcome, for each sample
            status, t_reached = status.expand(self.batch).clone(), t_reached.expand(self.batch).clone()
        stopped = (self.stop_time == self.stop_time).cpu()
        status[stopped] = int(Status.EVENT)
        t_reached[stopped] = self.stop_time.cpu()[stopped]
        messages = messages * self.batch if len(messages) == 1 and self.batch > 1 else messages
        event_index, event_sample, event_t, event_y = _sorted_log(index_parts, sample_parts, t_parts, y_parts,
                                                                  y0)
        t_out = t if isinstance(t, Tensor) else torch.tensor(self.times, dtype=y0.dtype)
        return EventSolution(t=t_out, ys=ys, stats=self.statistics(), method=options.method, status=status,
                             t_reached=t_reached, messages=messages, event_index=event_index,
                             event_sample=event_sample, event_t=event_t, event_y=event_y)


def _rows(mask: Tensor, ys: Tensor) -> Tensor:
    """mask [T, B] broadcast against ys [T, B, ...]."""
    return mask.view(*mask.shape, *([1] * (ys.dim() - 2)))


def _sorted_log(index_parts, sample_parts, t_parts, y_parts, y0: Tensor):
    """The crossings of every advance, stably sorted by sample (each sample's stay in time order)."""
    if not index_parts:
        empty = torch.zeros(0, dtype=torch.int64, device=y0.device)
        return empty, empty, torch.zeros(0, dtype=torch.float64, device=y0.device), y0[:0]
    samples = torch.cat(sample_parts)
    order = torch.sort(samples, stable=True).indices
    return (torch.cat(index_parts)[order], samples[order], torch.cat(t_parts)[order],
            torch.cat(y_parts)[order])


def _shared_dense(solver, rows: Tensor) -> Callable[[Tensor], Tensor]:
    """ŷ(t) of rows (samples, repeats allowed) of a shared solver's last step at per-row times t [n]."""
    if getattr(solver, "tableau", None) is not None:
        y_old, y_new = solver.y_old.index_select(0, rows), solver.y.index_select(0, rows)
        stages = [k.index_select(0, rows) for k in solver._stages]
        return interpolant(solver.tableau, solver.t_old, solver._h_last, y_old, y_new, stages,
                           lambda: solver._derivative_at_end().index_select(0, rows))
    dense = solver.dense_output()  # any other solver: its own interpolant, one time at a time
    dtype = solver.y.dtype  # its interpolation weight in the state's dtype (torch.lerp needs it)
    samples = rows.tolist()
    return lambda t: torch.stack([dense(t[i].to(dtype)).select(0, b) for i, b in enumerate(samples)])


def solve_with_events(func: TimeVectorField, y0: Tensor, t: Times, events: Sequence[Event],
                      options: SolverOptions) -> EventSolution:
    """``solve`` with ``events``: gradient "backprop" or "checkpoint" (the crossings differentiable by the
    implicit-function theorem), shared or per-sample step control."""
    events = _checked_events(events)
    times = check_times(t)
    check_state(y0)
    if y0.dim() < 1:
        raise ODEInputError("events need a leading batch dimension in y0 (one condition value per sample)")
    if options.compile:
        raise ODEInputError("events do not combine with compile=True: the located crossings evaluate the "
                            "interpolant and the condition outside the compiled step; use compile=False")
    if options.gradient == "adjoint":
        from stability.event_adjoint import solve_events_adjoint  # noqa: PLC0415 (adjoint's own module)

        return solve_events_adjoint(func, y0, t, events, options)
    stepper = EventStepper(make_stepper(func, y0, times, options), events, y0, times)
    if options.gradient == "checkpoint":
        stepper, values = run_checkpointed(stepper, options)
    else:
        values = run(stepper)
    return stepper.result(y0, values, t, options)


def _checked_events(events) -> tuple[Event, ...]:
    events = (events,) if isinstance(events, Event) else tuple(events)
    if not events or not all(isinstance(e, Event) for e in events):
        raise ODEInputError("events must be an Event or a non-empty sequence of Events")
    return events

