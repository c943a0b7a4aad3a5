"""Events with adjoint gradients: locate without a graph, then recompute the states at every sample's own
output and event times by adjoint solves, and differentiate the event times by the implicit-function theorem.

The adjoint keeps no forward graph, so the interpolant that ``event_loop`` differentiates is not there.
Instead, after a no-graph located solve, sample b's knots T_0 = t_0 < T_1 < … (its output times up to its
stop, and its crossing times, merged) are joined by K chained solves: segment k integrates the rescaled
system dy/ds = Δ_b f(T_{k−1,b} + sΔ_b, y), Δ_b = T_{k,b} − T_{k−1,b}, over s ∈ [0, 1] (one shared s for the
batch; a sample with fewer knots gets Δ_b = 0), each with ``gradient="adjoint"``: memory independent of the
number of steps, O(K) segment states. The event time's gradient then uses dg/dt = ∂g/∂t + ∇_y g · f(t*, y*).
func must take per-sample times (``per_sample=True``), since each sample sits at its own time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from stability.adjoint import solve_with_adjoint
from stability.base import Times, TimeVectorField
from stability.checks import check_times, time_dtype
from stability.errors import ODEInputError
from stability.event_loop import solve_with_events
from stability.events import Event, implicit_crossing
from stability.options import SolverOptions
from stability.solution import EventSolution

_ADJOINT_DEFAULTS = dict(adjoint_method=None, adjoint_rtol=None, adjoint_atol=None, adjoint_params=None,
                         adjoint_norm="mixed")


def solve_events_adjoint(func: TimeVectorField, y0: Tensor, t: Times, events: Sequence[Event],
                         options: SolverOptions) -> EventSolution:
    """``solve`` with events and ``gradient="adjoint"`` (per-sample, adaptive control; module docstring)."""
    if not options.per_sample or options.fixed_step:
        raise ODEInputError(
            "events with gradient='adjoint' need per_sample=True and adaptive steps: the states at each "
            "sample's own event time are recomputed by solves in which func receives each sample's time "
            "(t of shape [B]); use per_sample=True, or gradient='backprop'/'checkpoint'")
    times = check_times(t)
    located_options = options.replace(gradient="backprop", **_ADJOINT_DEFAULTS)
    with torch.no_grad():
        located = solve_with_events(func, y0.detach(), t, events, located_options)
    if not (torch.is_grad_enabled() and (y0.requires_grad or _has_parameters(func, options))):
        return located
    knots, output_knot, event_knot = _knots(located, times)
    states = _chained_states(func, y0, knots, options)  # [K+1, B, ...]
    samples = torch.arange(y0.shape[0], device=y0.device)
    outputs = torch.stack([states[output_knot[i], samples] for i in range(len(times) - 1)])
    direction = 1.0 if times[-1] > times[0] else -1.0
    after_stop = direction * (torch.tensor(times[1:])[:, None] - located.t_reached[None, :]) > 0
    after_stop = _rows(after_stop.to(y0.device), outputs)
    outputs = torch.where(after_stop, torch.full_like(outputs, math.nan), outputs)
    ys = torch.cat([y0.unsqueeze(0), outputs])
    event_t, event_y = located.event_t, located.event_y
    if event_t.numel() > 0:
        y_at = states[event_knot, located.event_sample]
        t_parts, y_parts, order = [], [], []
        for number, event in enumerate(events):
            mine = (located.event_index == number).nonzero().squeeze(1)
            if mine.numel() == 0:
                continue
            t_rows, y_rows = event_t[mine], y_at[mine]
            with torch.no_grad():
                slope = func(t_rows.to(time_dtype(y0)), y_rows.detach())
            t_star, y_star = implicit_crossing(event, t_rows, y_rows, slope, time_dtype(y0))
            t_parts.append(t_star)
            y_parts.append(y_star)
            order.append(mine)
        positions = torch.argsort(torch.cat(order))
        event_t = torch.cat(t_parts).index_select(0, positions)
        event_y = torch.cat(y_parts).index_select(0, positions)
    return EventSolution(t=located.t, ys=ys, stats=located.stats, method=located.method,
                         status=located.status, t_reached=located.t_reached, messages=located.messages,
                         event_index=located.event_index, event_sample=located.event_sample, event_t=event_t,
                         event_y=event_y)


def _has_parameters(func, options: SolverOptions) -> bool:
    params = options.adjoint_params if options.adjoint_params is not None else (
        tuple(func.parameters()) if isinstance(func, nn.Module) else ())
    return any(p.requires_grad for p in params)


def _rows(mask: Tensor, ys: Tensor) -> Tensor:
    return mask.view(*mask.shape, *([1] * (ys.dim() - 2)))


def _knots(located: EventSolution, times: list[float]):
    """Per sample, its output times (up to where it stopped) and crossing times merged in time order, padded
    by repeating the last: (knots [K+1, B] float64, knot of output i+1 [T−1, B], knot of crossing j [N])."""
    batch, direction = located.ys.shape[1], 1.0 if times[-1] > times[0] else -1.0
    reached = located.t_reached.tolist()
    crossings = [[] for _ in range(batch)]
    for j, (b, time) in enumerate(zip(located.event_sample.tolist(), located.event_t.tolist())):
        crossings[b].append((time, 1, j))
    lists, output_knot, event_knot = [], [[0] * batch for _ in times[1:]], [0] * len(located.event_t)
    for b in range(batch):
        outputs = [(time, 0, i) for i, time in enumerate(times[1:]) if direction * (time - reached[b]) <= 0]
        merged = sorted(outputs + crossings[b], key=lambda item: (direction * item[0], item[1]))
        for k, (_, kind, i) in enumerate(merged, start=1):
            if kind == 0:
                output_knot[i][b] = k
            else:
                event_knot[i] = k
        lists.append([times[0]] + [time for time, _, _ in merged])
    depth = max(len(knots) for knots in lists)
    knots = torch.tensor([knots + [knots[-1]] * (depth - len(knots)) for knots in lists], dtype=torch.float64)
    device = located.ys.device
    return knots.T.contiguous().to(device), torch.tensor(output_knot, device=device), torch.tensor(
        event_knot, dtype=torch.int64, device=device)


def _chained_states(func: TimeVectorField, y0: Tensor, knots: Tensor, options: SolverOptions) -> Tensor:
    """The states at every knot: K adjoint solves of the rescaled system, segment after segment."""
    params = options.adjoint_params if options.adjoint_params is not None else (
        tuple(func.parameters()) if isinstance(func, nn.Module) else ())
    segment_options = options.replace(per_sample=False, adjoint_params=tuple(params), first_step=None,
                                      max_step=math.inf)
    states, dtype = [y0], time_dtype(y0)
    for k in range(1, knots.shape[0]):
        start, span = knots[k - 1], knots[k] - knots[k - 1]
        if bool((span == 0).all()):
            states.append(states[-1])
            continue
        width = span.to(y0.dtype).view(-1, *([1] * (y0.dim() - 1)))

        def rescaled(s: Tensor, y: Tensor, start=start, span=span, width=width) -> Tensor:
            return width * func((start + s.double() * span).to(dtype), y)

        states.append(solve_with_adjoint(rescaled, states[-1], [0.0, 1.0], segment_options).ys[-1])
    return torch.stack(states)
