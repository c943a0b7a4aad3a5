"""Adjoint-method gradients (Pontryagin; Chen et al. 2018): memory independent of the number of steps.

The forward solve keeps only the outputs ys. Backwards, between consecutive output times, the augmented system

    dy/dt = f(t, y),   da/dt = −aᵀ ∂f/∂y,   da_θ/dt = −aᵀ ∂f/∂θ

is integrated from t_i to t_{i−1} with y(t_i) = ys[i] and a(t_i) = a + ∂L/∂ys[i]; at t_0, a = ∂L/∂y0 and
a_θ = ∂L/∂θ. This is the gradient of the *exact* flow, evaluated with a second numerical solve (and y rebuilt
backwards), so it differs from the gradient of the forward discretisation (plain backprop or checkpointing)
by O(tolerance) for adaptive methods and O(h^p) for fixed steps — the comparison that exposes adjoint error.
Fixed-step forwards integrate the adjoint backwards on the same grid; adaptive ones with ``adjoint_rtol`` /
``adjoint_atol`` under a mixed error norm (the largest RMS over y, a and a_θ, or a seminorm without a_θ).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from stability.checks import check_output, check_times
from stability.errors import NonFiniteValueError, ODEInputError
from stability.odeint import _HIT_TOLERANCE, solve
from stability.solution import Solution, SolverStats
from stability.solver import DEFAULT_ATOL, DEFAULT_MAX_STEPS, DEFAULT_RTOL, RungeKuttaSolver, solver_class
from stability.step_control import PIController, error_ratio

TimeVectorField = Callable[[Tensor, Tensor], Tensor]


@dataclass
class AdjointSolution(Solution):
    """A ``Solution`` whose ``adjoint_stats`` are filled in when the backward pass runs."""

    adjoint_stats: SolverStats = field(default_factory=SolverStats)


def odeint_adjoint(func: TimeVectorField, y0: Tensor, t: Tensor | Sequence[float], **options) -> Tensor:
    """``odeint`` with adjoint-method gradients; see ``solve_adjoint`` for the options."""
    return solve_adjoint(func, y0, t, **options).ys


def solve_adjoint(
    func: TimeVectorField,
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
    adjoint_method: str | None = None,
    adjoint_rtol: float | None = None,
    adjoint_atol: float | None = None,
    adjoint_params: Sequence[Tensor] | None = None,
    adjoint_norm: str = "mixed",
) -> AdjointSolution:
    """Solve like ``solve``; gradients w.r.t. ``y0`` and ``adjoint_params`` come from the adjoint ODE.

    ``adjoint_params`` defaults to the parameters of ``func`` when it is an ``nn.Module``. Tensors that
    ``func`` uses with ``requires_grad`` but that are not listed raise an error in the backward pass (rather
    than silently receiving no gradient). ``adjoint_method`` / ``adjoint_rtol`` / ``adjoint_atol`` default to
    the forward ones; ``adjoint_norm`` is "mixed" (max of per-part RMS over y, a, a_θ) or "seminorm" (a_θ
    excluded from step control, Kidger et al. 2021: fewer backward steps, a_θ still integrated by them).
    """
    adjoint_method = method if adjoint_method is None else adjoint_method
    for name in (method, adjoint_method):
        cls = solver_class(name)
        if not issubclass(cls, RungeKuttaSolver):
            raise ODEInputError(
                f"the adjoint method needs explicit Runge–Kutta methods, got {name!r} (backward_euler's "
                f"implicit-function-theorem backprop already stores one evaluation per step)"
            )
    adaptive = step_size is None and grid is None
    if adaptive and not solver_class(adjoint_method).tableau.adaptive:
        raise ODEInputError(
            f"adjoint_method {adjoint_method!r} has no error estimate for the adaptive backward solve"
        )
    if adjoint_norm not in ("mixed", "seminorm"):
        raise ODEInputError(f"adjoint_norm must be 'mixed' or 'seminorm', got {adjoint_norm!r}")
    if adjoint_params is None:
        adjoint_params = tuple(func.parameters()) if isinstance(func, nn.Module) else ()
    adjoint_params = tuple(adjoint_params)
    if not all(isinstance(p, Tensor) for p in adjoint_params):
        raise ODEInputError("adjoint_params must be a sequence of tensors")
    params = tuple(p for p in adjoint_params if p.requires_grad)
    forward_options = dict(
        method=method,
        rtol=rtol,
        atol=atol,
        step_size=step_size,
        grid=grid,
        first_step=first_step,
        max_step=max_step,
        max_steps=max_steps,
        controller=controller,
    )
    context = _AdjointContext(
        func=func,
        t=t,
        forward_options=forward_options,
        adaptive=adaptive,
        adjoint_method=adjoint_method,
        adjoint_rtol=rtol if adjoint_rtol is None else adjoint_rtol,
        adjoint_atol=atol if adjoint_atol is None else adjoint_atol,
        max_step=max_step,
        max_steps=max_steps,
        controller=controller,
        seminorm=adjoint_norm == "seminorm",
        n_params=len(params),
    )
    needs_grad = torch.is_grad_enabled() and (y0.requires_grad or len(params) > 0)
    if not needs_grad:
        if torch.is_grad_enabled():
            _refuse_unlisted_gradients(func, y0, t)
        with torch.no_grad():  # nothing to differentiate: never a silent O(steps) backprop graph
            sol = solve(func, y0, t, **forward_options)
        return AdjointSolution(t=sol.t, ys=sol.ys, stats=sol.stats, method=method)
    ys = _AdjointFunction.apply(context, y0, *params)
    forward = context.forward_solution
    return AdjointSolution(
        t=forward.t, ys=ys, stats=forward.stats, method=method, adjoint_stats=context.adjoint_stats
    )


def _refuse_unlisted_gradients(func: TimeVectorField, y0: Tensor, t) -> None:
    """With nothing to differentiate (y0 without grad, no adjoint_params), a func that uses tensors requiring
    grad would get its gradients from plain backprop, silently; raise instead (costs one evaluation)."""
    t0 = torch.as_tensor(check_times(t)[0], dtype=_time_dtype(y0), device=y0.device)
    f0 = func(t0, y0.detach())
    if isinstance(f0, Tensor) and f0.requires_grad:
        raise ODEInputError(
            "gradient='adjoint': func uses tensors requiring grad, but y0 does not require grad and "
            "adjoint_params is empty, so the adjoint would compute no gradient for them. Pass them in "
            "adjoint_params, or use gradient='backprop'"
        )


def _time_dtype(y: Tensor) -> torch.dtype:
    return y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32


@dataclass
class _AdjointContext:
    func: TimeVectorField
    t: Tensor | Sequence[float]
    forward_options: dict
    adaptive: bool
    adjoint_method: str
    adjoint_rtol: float
    adjoint_atol: float
    max_step: float
    max_steps: int
    controller: PIController | None
    seminorm: bool
    n_params: int
    forward_solution: Solution | None = None
    adjoint_stats: SolverStats = field(default_factory=SolverStats)


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, context: _AdjointContext, y0: Tensor, *params: Tensor) -> Tensor:
        sol = solve(context.func, y0.detach(), context.t, **context.forward_options)
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
    times = check_times(context.t)
    shape, n, dtype = ys.shape[1:], ys[0].numel(), ys.dtype
    sizes = [n, n] + [p.numel() for p in params]
    system = _AugmentedSystem(context.func, shape, n, params)
    grid = None if context.adaptive else context.forward_solution.stats.step_times + [times[-1]]
    solver_cls = _solver_with_norm(solver_class(context.adjoint_method), sizes, context.seminorm)
    stats = context.adjoint_stats
    adjoint = grad_ys[-1].reshape(-1)
    param_adjoints = [torch.zeros(p.numel(), dtype=dtype, device=ys.device) for p in params]
    span = abs(times[-1] - times[0])
    for i in range(len(times) - 1, 0, -1):
        state = torch.cat([ys[i].reshape(-1), adjoint, *param_adjoints])
        options = dict(
            rtol=context.adjoint_rtol,
            atol=context.adjoint_atol,
            max_step=context.max_step,
            max_steps=context.max_steps,
            controller=context.controller,
        )
        if grid is not None:
            inside = [p for p in grid if _strictly_between(p, times[i - 1], times[i], _HIT_TOLERANCE * span)]
            options["grid"] = [times[i], *reversed(inside), times[i - 1]]
        try:
            solver = solver_cls(system, times[i], state, times[i - 1], **options)
            while solver.status == "running":
                solver.step()
        except NonFiniteValueError as error:
            raise NonFiniteValueError(
                f"in the adjoint backward pass (the augmented system [f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ] integrated from "
                f"t={times[i]:.6g} back to t={times[i - 1]:.6g}): {error}",
                t=error.t,
                h=error.h,
            ) from error
        _accumulate(stats, solver.stats)
        pieces = torch.split(solver.y, sizes)
        adjoint = pieces[1] + grad_ys[i - 1].reshape(-1)
        param_adjoints = list(pieces[2:])
    grad_y0 = adjoint.view(shape)
    grad_params = [a.view_as(p).to(p.dtype) for a, p in zip(param_adjoints, params)]
    return grad_y0, grad_params


def _strictly_between(point: float, a: float, b: float, margin: float) -> bool:
    low, high = min(a, b), max(a, b)
    return low + margin < point < high - margin


def _accumulate(total: SolverStats, part: SolverStats) -> None:
    total.nfe += part.nfe
    total.n_accepted += part.n_accepted
    total.n_rejected += part.n_rejected
    total.step_sizes.extend(part.step_sizes)
    total.step_times.extend(part.step_times)


class _AugmentedSystem:
    """[y, a, a_θ] ↦ [f, −aᵀ∂f/∂y, −aᵀ∂f/∂θ] on one flat state; one vector-Jacobian product per call.

    On the first call it checks that every tensor requiring grad that f depends on is y or a listed
    parameter, so a missing ``adjoint_params`` entry is an error instead of a silently zero gradient.
    """

    def __init__(self, func: TimeVectorField, shape: torch.Size, n: int, params: list[Tensor]) -> None:
        self.func, self.shape, self.n, self.params = func, shape, n, params
        self.checked = False

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
        pieces = [f.detach().reshape(-1)]
        for grad, x in zip(grads, inputs):
            size = x.numel()
            pieces.append(
                torch.zeros(size, dtype=state.dtype, device=state.device)
                if grad is None
                else grad.reshape(-1).to(state.dtype)
            )
        return torch.cat(pieces)


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
        raise ODEInputError(
            f"func uses {len(unlisted)} tensor(s) requiring grad that are not in adjoint_params (shapes "
            f"{shapes}); the adjoint would give them no gradient. Pass them in adjoint_params (or make func "
            f"an nn.Module owning them)"
        )


def _solver_with_norm(cls: type[RungeKuttaSolver], sizes: list[int], seminorm: bool) -> type:
    """``cls`` with the error norm max_k RMS_k over the parts [y, a, a_θ1, …] (a_θ dropped for a seminorm)."""
    controlled = 2 if seminorm else len(sizes)

    class MixedNorm(cls):
        def scaled_error(self, error: Tensor, y_old: Tensor, y_new: Tensor) -> Tensor:
            parts = zip(
                torch.split(error, sizes)[:controlled],
                torch.split(y_old, sizes)[:controlled],
                torch.split(y_new, sizes)[:controlled],
            )
            return torch.stack(
                [error_ratio(e, a, b, self.rtol, self.atol) for e, a, b in parts if e.numel() > 0]
            ).max()

    MixedNorm.__name__ = MixedNorm.__qualname__ = f"{cls.__name__}MixedNorm"
    return MixedNorm
