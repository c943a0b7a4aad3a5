"""The front door: ``odeint(func, y0, t, method=..., rtol=..., atol=...)``, torchdiffeq-compatible."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stability.checks import as_float_list, check_times
from stability.errors import NonFiniteValueError, ODEInputError
from stability.solution import Solution
from stability.solver import DEFAULT_ATOL, DEFAULT_MAX_STEPS, DEFAULT_RTOL, solver_class
from stability.step_control import PIController

# Output times this close (relative to the span) to a step end are taken from the step, not interpolated.
_HIT_TOLERANCE = 1e-12


def solve(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor | Sequence[float],
    *,
    method: str = "dopri5",
    rtol: float = DEFAULT_RTOL,
    atol: float = DEFAULT_ATOL,
    step_size: float | None = None,
    grid: Tensor | Sequence[float] | None = None,
    first_step: float | None = None,
    max_step: float = math.inf,
    max_steps: int = DEFAULT_MAX_STEPS,
    controller: PIController | None = None,
    gradient: str = "backprop",
    per_sample: bool = False,
    implicit=None,
    **gradient_options,
) -> Solution:
    """Solve dy/dt = func(t, y), y(t[0]) = y0, and return the solution at every time in ``t`` with statistics.

    ``t`` is strictly increasing or strictly decreasing (at least 2 points). Adaptive methods step with the
    mixed error norm RMS(err / (atol + rtol·max(|y_n|, |y_{n+1}|))) ≤ 1 and reach output times by dense
    output, never by shortening steps; ``step_size`` (or an explicit ``grid``) selects fixed-step mode.
    Gradients flow to ``y0`` and to parameters of ``func`` by backpropagation through the steps; step-size
    decisions are made on detached values and add no gradient paths.

    ``gradient="checkpoint"``: the same gradient with O(√steps) stored graph (option ``checkpoint_every``);
    ``"adjoint"``: adjoint-ODE gradients with memory flat in the steps (options ``adjoint_rtol``,
    ``adjoint_atol``, ``adjoint_method``, ``adjoint_params``, ``adjoint_norm``; see ``stability.adjoint``).
    ``per_sample=True``: independent step control for each sample along dim 0 (func then receives t of shape
    [B]; ``stats`` becomes a list per sample; see ``stability.per_sample``).
    """
    if gradient != "backprop" or per_sample or gradient_options:
        options = dict(method=method, rtol=rtol, atol=atol, step_size=step_size, grid=grid,
                       first_step=first_step, max_step=max_step, max_steps=max_steps, controller=controller)
        if implicit is not None:
            options["implicit"] = implicit
        return _solve_variant(func, y0, t, gradient, per_sample, gradient_options, options)
    solver, times = start_solver(
        func, y0, t, method=method, rtol=rtol, atol=atol, step_size=step_size, grid=grid,
        first_step=first_step, max_step=max_step, max_steps=max_steps, controller=controller,
        implicit=implicit,
    )
    span = abs(times[-1] - times[0])
    outputs = [y0]
    index = 1
    while index < len(times):
        solver.step()
        while index < len(times) and solver.direction * (times[index] - solver.t) <= _HIT_TOLERANCE * span:
            if abs(times[index] - solver.t) <= _HIT_TOLERANCE * span:
                outputs.append(solver.y)
            else:
                outputs.append(solver.dense_output()(times[index]))
            index += 1
    ys = torch.stack(outputs)
    if solver.fixed_step:
        _check_finite_trajectory(ys, times)
    t_out = t if isinstance(t, Tensor) else torch.tensor(times, dtype=y0.dtype)
    return Solution(t=t_out, ys=ys, stats=solver.stats, method=method)


def odeint(
    func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t: Tensor | Sequence[float], **options
) -> Tensor:
    """The solution at every time in ``t``, shape ``[len(t), *y0.shape]`` (see ``solve`` for the options)."""
    return solve(func, y0, t, **options).ys


def _solve_variant(func, y0, t, gradient: str, per_sample: bool, extra: dict, options: dict) -> Solution:
    """Dispatch to the gradient / step-control variants (imported lazily: they build on this module)."""
    if gradient not in ("backprop", "checkpoint", "adjoint"):
        raise ODEInputError(f"gradient must be 'backprop', 'checkpoint' or 'adjoint', got {gradient!r}")
    if per_sample:
        if gradient != "backprop" or extra:
            raise ODEInputError("per_sample=True supports gradient='backprop' only (no extra options)")
        from stability.per_sample import solve_per_sample

        return solve_per_sample(func, y0, t, **options)
    if gradient == "adjoint":
        from stability.adjoint import solve_adjoint

        return solve_adjoint(func, y0, t, **options, **extra)
    if gradient == "checkpoint":
        from stability.checkpointing import solve_checkpointed

        return solve_checkpointed(func, y0, t, **options, **extra)
    raise ODEInputError(f"unknown options for gradient='backprop': {', '.join(sorted(extra))}")



def start_solver(
    func, y0: Tensor, t: Tensor | Sequence[float], *, method: str, grid=None, implicit=None, **options
):
    """The solver of ``method`` over [t[0], t[-1]] and the checked output times (shared by variants)."""
    times = check_times(t)
    if implicit is not None:
        if method != "backward_euler":
            raise ODEInputError(f"implicit options apply to method='backward_euler' only, not {method!r}")
        options["implicit"] = implicit
    grid = None if grid is None else as_float_list(grid, "grid")
    return solver_class(method)(func, times[0], y0, times[-1], grid=grid, **options), times


def _check_finite_trajectory(ys: Tensor, times: list[float]) -> None:
    finite = torch.isfinite(ys.detach()).flatten(1).all(dim=1)
    if not bool(finite.all()):
        first = int((~finite).nonzero()[0])
        raise NonFiniteValueError(
            f"the solution is non-finite at t={times[first]:.6g} (output {first}): the scheme blew up; "
            f"a smaller step size may help",
            t=times[first],
        )
