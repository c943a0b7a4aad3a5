"""The front door: ``solve(func, y0, t, options=None, **keywords)``, torchdiffeq-compatible ``odeint``, and
the same with one setting implied (``solve_adjoint``, ``solve_checkpointed``, ``solve_per_sample``, …)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from stability.adjoint import AdjointSolution, solve_with_adjoint
from stability.base import Times, TimeVectorField
from stability.checkpointing import solve_checkpoint
from stability.event_loop import solve_with_events
from stability.events import Event
from stability.integrate import solve_backprop
from stability.options import SolverOptions, as_options, option_keywords, time_precision
from stability.solution import PerSampleSolution, Solution

# The gradient strategies, each a function (func, y0, t, options) -> Solution around ``integrate``'s loop.
GRADIENT_STRATEGIES = {"backprop": solve_backprop, "checkpoint": solve_checkpoint,
                       "adjoint": solve_with_adjoint}


@option_keywords
def solve(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions | None = None, *,
          events: Event | Sequence[Event] | None = None, **keywords) -> Solution:
    """Solve dy/dt = func(t, y), y(t[0]) = y0, and return the solution at every time in ``t`` with statistics.

    Settings come as one ``SolverOptions`` value, as its fields given as torchdiffeq-style keywords
    (``method``, ``rtol``, ``atol``, ``step_size``, ``grid``, ``first_step``, ``max_step``, ``max_steps``,
    ``controller``, ``norm``, ``per_sample``, ``implicit``, ``gradient`` and its options, ``compile``,
    ``throw``),
    or both (keywords override). ``t`` is strictly monotone (at least 2 points); output times are reached by
    dense output, never by shortening steps. Gradients flow to ``y0`` and func's parameters:
    ``gradient="backprop"`` through the steps (step-size decisions add no gradient paths), ``"checkpoint"``
    the same with O(√steps) memory, ``"adjoint"`` by the adjoint ODE. ``per_sample=True``: step control per
    sample along dim 0 (func gets t of shape [B]). ``compile=True``: each explicit RK step as one
    ``torch.compile`` graph (``stability.compiled``). ``events``: one ``Event`` or several, watched per sample
    along dim 0 (an ``EventSolution``; ``stability.event_loop``). ``throw=False``: a failed integration
    returns its partial solution with ``status``/``t_reached`` per sample (``stability.status``). t given as
    a float64 tensor with a lower-precision y0: func receives t in float64 (``time_dtype``), so late times
    keep their resolution.
    """
    options = time_precision(as_options(options, keywords), y0, t)
    if events is not None:
        return solve_with_events(func, y0, t, events, options)
    return GRADIENT_STRATEGIES[options.gradient](func, y0, t, options)


@option_keywords
def solve_adjoint(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions | None = None, *,
                  events: Event | Sequence[Event] | None = None, **keywords) -> AdjointSolution:
    """``solve`` with ``gradient="adjoint"``: gradients w.r.t. y0 and ``adjoint_params`` (default: func's
    parameters when it is an ``nn.Module``; tensors func uses with requires_grad but not listed raise) from
    the adjoint ODE. ``adjoint_method``/``adjoint_rtol``/``adjoint_atol`` default to the forward ones;
    ``adjoint_norm``: "mixed" (max of per-part RMS over y, a, a_θ) or "seminorm" (a_θ out of step control,
    Kidger et al. 2021). ``adjoint_stats`` are filled in by the backward pass."""
    return solve(func, y0, t, as_options(options, keywords, gradient="adjoint"), events=events)


@option_keywords
def solve_checkpointed(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions | None = None, *,
                       events: Event | Sequence[Event] | None = None, **keywords) -> Solution:
    """``solve`` with ``gradient="checkpoint"``: backprop's gradient with O(√steps) stored graph.
    ``checkpoint_every``: steps per chunk (default ⌈√N⌉ for fixed steps, growing 1, 2, 3, … when adaptive);
    ``func`` must be deterministic (the backward pass re-runs it)."""
    return solve(func, y0, t, as_options(options, keywords, gradient="checkpoint"), events=events)


@option_keywords
def solve_per_sample(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions | None = None, *,
                     events: Event | Sequence[Event] | None = None, **keywords) -> PerSampleSolution:
    """``solve`` with ``per_sample=True``: the B problems y0[b] each with its own steps (``max_steps`` per
    sample); sample b's solution and statistics equal those of ``solve(func, y0[b:b+1], t, ...)``."""
    return solve(func, y0, t, as_options(options, keywords, per_sample=True), events=events)


@option_keywords
def odeint(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions | None = None,
           **keywords) -> Tensor:
    """The solution at every time in ``t``, shape ``[len(t), *y0.shape]`` (see ``solve`` for the options)."""
    return solve(func, y0, t, options, **keywords).ys


def odeint_adjoint(func: TimeVectorField, y0: Tensor, t: Times, options=None, **keywords) -> Tensor:
    """``odeint`` with adjoint-method gradients (see ``solve_adjoint``)."""
    return solve_adjoint(func, y0, t, options, **keywords).ys


def odeint_checkpointed(func: TimeVectorField, y0: Tensor, t: Times, options=None, **keywords) -> Tensor:
    """``odeint`` whose backward pass recomputes chunks of steps (see ``solve_checkpointed``)."""
    return solve_checkpointed(func, y0, t, options, **keywords).ys


def odeint_per_sample(func: TimeVectorField, y0: Tensor, t: Times, options=None, **keywords) -> Tensor:
    """``odeint`` with step control per sample along dim 0 (see ``solve_per_sample``)."""
    return solve_per_sample(func, y0, t, options, **keywords).ys
