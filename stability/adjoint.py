"""Adjoint-method gradients (Pontryagin; Chen et al. 2018): memory independent of the number of steps.

The forward solve keeps only the outputs ys. Backwards, between consecutive output times, the augmented system

    dy/dt = f(t, y),   da/dt = −aᵀ ∂f/∂y,   da_θ/dt = −aᵀ ∂f/∂θ

is integrated from t_i to t_{i−1} with y(t_i) = ys[i] and a(t_i) = a + ∂L/∂ys[i]; at t_0, a = ∂L/∂y0 and
a_θ = ∂L/∂θ: the gradient of the exact flow, O(tolerance) (adaptive) or O(h^p) (fixed steps, integrated back
on the same grid) from backprop's. Adaptive backward solves use ``adjoint_rtol``/``adjoint_atol`` under the
largest RMS over y, a and a_θ (or a seminorm without a_θ).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from stability.base import Times, TimeVectorField, shared_time
from stability.checks import check_output, check_times, time_dtype
from stability.errors import NonFiniteValueError, ODEInputError
from stability.integrate import solve_backprop
from stability.options import SolverOptions
from stability.solution import HIT_TOLERANCE, Solution, SolverStats
from stability.step_control import error_ratio


@dataclass
class AdjointSolution(Solution):
    """A ``Solution`` whose ``adjoint_stats`` are filled in when the backward pass runs."""

    adjoint_stats: SolverStats = field(default_factory=SolverStats)


def solve_with_adjoint(func: TimeVectorField, y0: Tensor, t: Times, options: SolverOptions):
    """Gradient strategy "adjoint": the forward loop without a graph, the adjoint ODE in the backward pass.

    With per-sample control the forward solve is per sample; the backward solve of the augmented system
    (whose parameter adjoint sums over the samples) uses shared control at the adjoint tolerances."""
    adjoint_params = options.adjoint_params
    if adjoint_params is None:
        adjoint_params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    params = tuple(p for p in adjoint_params if p.requires_grad)
    times = check_times(t)
    if not (torch.is_grad_enabled() and (y0.requires_grad or len(params) > 0)):
        if torch.is_grad_enabled():
            _refuse_unlisted_gradients(func, y0, times[0], options.per_sample, options.time_dtype)
        with torch.no_grad():  # nothing to differentiate: never a silent O(steps) backprop graph
            sol = solve_backprop(func, y0, t, options)
        return AdjointSolution(t=sol.t, ys=sol.ys, stats=sol.stats, method=options.method, status=sol.status,
                               t_reached=sol.t_reached, messages=sol.messages)
    context = _AdjointContext(func=func, t=t, times=times, options=options)
    ys = _AdjointFunction.apply(context, y0, *params)
    forward = context.forward_solution
    return AdjointSolution(t=forward.t, ys=ys, stats=forward.stats, method=options.method,
                           status=forward.status, t_reached=forward.t_reached, messages=forward.messages,
                           adjoint_stats=context.adjoint_stats)


def _refuse_unlisted_gradients(func: TimeVectorField, y0: Tensor, t0: float, per_sample: bool,
                               time: torch.dtype | None) -> None:
    """With nothing to differentiate (y0 without grad, no adjoint_params), a func that uses tensors requiring
    grad would get its gradients from plain backprop, silently; raise instead (costs one evaluation)."""
    t = torch.full((y0.shape[0],) if per_sample else (), t0, dtype=time_dtype(y0, time), device=y0.device)
    f0 = func(t, y0.detach().clone())  # a copy: func may not change the caller's y0, even in place
    if isinstance(f0, Tensor) and f0.requires_grad:
        raise ODEInputError("gradient='adjoint': func uses tensors requiring grad, but y0 does not require "
                            "grad and adjoint_params is empty, so the adjoint would compute no gradient for "
                            "them. Pass them in adjoint_params, or use gradient='backprop'")


@dataclass
class _AdjointContext:
    func: TimeVectorField
    t: Times
    times: list[float]
    options: SolverOptions
    forward_solution: Solution | None = None
    adjoint_stats: SolverStats = field(default_factory=SolverStats)


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, context: _AdjointContext, y0: Tensor, *params: Tensor) -> Tensor:
        sol = solve_backprop(context.func, y0.detach(), context.t, context.options)
        context.forward_solution = sol
        ctx.context = context
        ctx.save_for_backward(sol.ys, *params)
        return sol.ys

    @staticmethod
    def backward(ctx, grad_ys: Tensor):
        context: _AdjointContext = ctx.context
        ys, *params = ctx.saved_tensors
        with torch.no_grad():
            grad_y0, grad_params = _integrate_adjoint(context, ys, grad_ys, params)
        return (None, grad_y0, *grad_params)


def _integrate_adjoint(context: _AdjointContext, ys: Tensor, grad_ys: Tensor, params: list[Tensor]):
    times, options = context.times, context.options
    shape, n, dtype = ys.shape[1:], ys[0].numel(), ys.dtype
    sizes = [n, n] + [p.numel() for p in params]
    # per-sample func takes per-sample times; the backward solve is shared
    func = shared_time(context.func, shape[0]) if options.per_sample else context.func
    system = _AugmentedSystem(func, shape, n, params)
    forward_stats = context.forward_solution.stats
    forward_stats = forward_stats[0] if isinstance(forward_stats, list) else forward_stats
    grid = forward_stats.step_times + [times[-1]] if options.fixed_step else None
    # Per-sample tolerances [B]: the shared backward solve runs at the strictest of them.
    tolerances = {} if grid is not None else dict(
        rtol=_strictest(options.rtol if options.adjoint_rtol is None else options.adjoint_rtol),
        atol=_strictest(options.atol if options.adjoint_atol is None else options.adjoint_atol))
    backward_options = SolverOptions(
        method=options.adjoint_method or options.method,
        max_step=options.max_step,
        max_steps=options.max_steps,
        controller=options.controller,
        norm=functools.partial(_mixed_norm, sizes, 2 if options.adjoint_norm == "seminorm" else len(sizes)),
        grid=(times[0], times[-1]) if grid is not None else None,
        time_dtype=options.time_dtype,
        **tolerances,
    )
    stats = context.adjoint_stats
    adjoint = grad_ys[-1].reshape(-1)
    param_adjoints = [torch.zeros(p.numel(), dtype=dtype, device=ys.device) for p in params]
    margin = HIT_TOLERANCE * abs(times[-1] - times[0])
    for i in range(len(times) - 1, 0, -1):
        state = torch.cat([ys[i].reshape(-1), adjoint, *param_adjoints])
        segment = backward_options
        if grid is not None:
            low, high = min(times[i - 1], times[i]) + margin, max(times[i - 1], times[i]) - margin
            inside = [p for p in grid if low < p < high]
            segment = backward_options.replace(grid=(times[i], *reversed(inside), times[i - 1]))
        try:
            backward = solve_backprop(system, state, [times[i], times[i - 1]], segment)
        except NonFiniteValueError as error:
            where = (f"in the adjoint backward pass (the augmented system [f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ] integrated "
                     f"from t={times[i]:.6g} back to t={times[i - 1]:.6g})")
            raise NonFiniteValueError(f"{where}: {error}", t=error.t, h=error.h) from error
        for name in ("nfe", "n_accepted", "n_rejected", "step_sizes", "step_times"):
            setattr(stats, name, getattr(stats, name) + getattr(backward.stats, name))
        pieces = torch.split(backward.ys[-1], sizes)
        adjoint = pieces[1] + grad_ys[i - 1].reshape(-1)
        param_adjoints = list(pieces[2:])
    grad_y0 = adjoint.view(shape)
    grad_params = [a.view_as(p).to(p.dtype) for a, p in zip(param_adjoints, params)]
    return grad_y0, grad_params


def _strictest(tolerance: float | Tensor) -> float:
    return float(tolerance.min()) if isinstance(tolerance, Tensor) else tolerance


class _AugmentedSystem:
    """[y, a, a_θ] ↦ [f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ] on one flat state; one vector-Jacobian product per call.

    On the first call it checks that every tensor requiring grad that f depends on is y or a listed
    parameter, so a missing ``adjoint_params`` entry is an error instead of a silently zero gradient.
    """

    def __init__(self, func: TimeVectorField, shape: torch.Size, n: int, params: list[Tensor]) -> None:
        self.func, self.shape, self.n, self.params, self.checked = func, shape, n, params, False

    def __call__(self, t: Tensor, state: Tensor) -> Tensor:
        n = self.n
        a = state[n : 2 * n].view(self.shape)
        with torch.enable_grad():
            y = state[:n].view(self.shape).detach().requires_grad_(True)
            f = self.func(t, y)
            if not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:
                check_output(f, y, float(t))
            if not self.checked:
                _check_graph_inputs(f, y, self.params)
                self.checked = True
            inputs = (y, *self.params)
            if f.requires_grad:
                grads = torch.autograd.grad(f, inputs, -a, allow_unused=True)
            else:
                grads = (None,) * len(inputs)
        pieces = [torch.zeros(x.numel(), dtype=state.dtype, device=state.device) if grad is None
                  else grad.reshape(-1).to(state.dtype) for grad, x in zip(grads, inputs)]
        return torch.cat([f.detach().reshape(-1), *pieces])


def _check_graph_inputs(output: Tensor, y: Tensor, params: Sequence[Tensor]) -> None:
    if output.grad_fn is None:
        return
    known_leaves = {id(y)} | {id(p) for p in params if p.grad_fn is None}
    stop_nodes = {p.grad_fn for p in params if p.grad_fn is not None}
    unlisted: list[Tensor] = []
    seen = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen or node in stop_nodes:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if id(variable) not in known_leaves:
                unlisted.append(variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    if unlisted:
        shapes = ", ".join(str(tuple(v.shape)) for v in unlisted[:5])
        raise ODEInputError(f"func uses {len(unlisted)} tensor(s) requiring grad that are not in "
                            f"adjoint_params (shapes {shapes}); the adjoint would give them no gradient. "
                            f"Pass them in adjoint_params (or make func an nn.Module owning them)")


def _mixed_norm(sizes: list[int], controlled: int, error: Tensor, y_old: Tensor, y_new: Tensor, rtol: float,
                atol: float) -> float:
    """max_k RMS_k over the parts [y, a, a_θ1, …] of the augmented state (the first ``controlled`` parts:
    2 for a seminorm, which leaves the parameter adjoints out of step control)."""
    parts = zip(*(torch.split(x, sizes)[:controlled] for x in (error, y_old, y_new)))
    ratios = [error_ratio(e, a, b, rtol, atol) for e, a, b in parts if e.numel() > 0]
    return math.nan if any(math.isnan(r) for r in ratios) else max(ratios)
