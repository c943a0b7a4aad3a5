"""Backward (implicit) Euler, y_{n+1} = y_n + h·f(t_{n+1}, y_{n+1}): order 1, A-stable
(|R(z)| = |1/(1 − z)| ≤ 1 for Re z ≤ 0), the scheme a PolyNet block approximates.

Each step solves G(z) = z − y_n − h f(t_{n+1}, z) = 0 by Newton–Krylov (``newton_krylov``). Gradients come
from the implicit function theorem, not from the iterations: with J = ∂f/∂y at the solution z*,
dz*/dy_n = (I − hJ)⁻¹ and dz*/dθ = (I − hJ)⁻¹ h ∂f/∂θ, so the backward pass solves (I − hJ)ᵀ λ = g (GMRES on
vector-Jacobian products, fixed-point fallback) and hands λ to the graph of y_n + h f(t_{n+1}, z*).
Memory: one evaluation of f per step is kept for the backward pass, whatever the iteration count.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from stability import checks
from stability.base import OdeSolver, TimeVectorField
from stability.checks import LOW_PRECISION, all_finite, evaluate_checked
from stability.errors import NonConvergenceError, NonFiniteValueError
from stability.krylov import gmres
from stability.newton_krylov import make_jvp, newton_krylov
from stability.options import ImplicitOptions
from stability.solution import SolverStats
from stability.step_control import rms


@dataclass
class ImplicitStats(SolverStats):
    """SolverStats plus the work of the nonlinear solves (``nfe`` counts residual evaluations and JVPs)."""

    newton_iterations: int = 0
    fixed_point_iterations: int = 0
    jvp_evaluations: int = 0


def rounding_floor(z: Tensor, y: Tensor, hf: Tensor) -> float:
    """(eps/2)·‖(z, y, h f(z))‖/max(1, ‖z‖) (RMS norms): the size of the rounding in the scaled residual
    G(z) = z − y − h f(z) of its three terms; no iterate brings the computed residual much below it."""
    size = math.sqrt(sum(float(rms(x.float() if x.dtype in LOW_PRECISION else x)) ** 2 for x in (z, y, hf)))
    return torch.finfo(z.dtype).eps / 2 * size / max(1.0, float(rms(z)))


def backward_euler_step(func: TimeVectorField, t: float, y: Tensor, h: float, *,
                        options: ImplicitOptions | None = None, stats: ImplicitStats | None = None,
                        time_dtype: torch.dtype | None = None) -> Tensor:
    """z = y + h·func(t + h, z) solved to tolerance; differentiable in y and func's parameters by the IFT.

    ``func`` receives t + h as a 0-d tensor (of ``time_dtype``; default y's, float32 below it). Raises
    ``NonConvergenceError`` (with t, h and the residual) when neither Newton–Krylov nor the fixed-point
    fallback reaches the tolerance.
    """
    options = options or ImplicitOptions()
    t, h = float(t), float(h)
    t_new = torch.full((), t + h, dtype=checks.time_dtype(y, time_dtype), device=y.device)
    tol = options.tolerance(y.dtype)
    y_detached = y.detach()

    def field(z: Tensor) -> Tensor:  # Newton uses each value at once: no previous output to compare with
        return evaluate_checked(func, t_new, z, t + h, (None, 0))[0]

    field_jvp = make_jvp(field, options.jvp)

    def residual(z: Tensor) -> Tensor:
        return z - y_detached - h * field(z)

    def residual_jvp(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        value, product = field_jvp(z, v)
        return z - y_detached - h * value, v - h * product

    result = newton_krylov(residual, residual_jvp, y_detached, tol, options)
    if stats is not None:
        stats.nfe += result.residual_evaluations + result.jvp_evaluations
        stats.newton_iterations += result.newton_iterations
        stats.fixed_point_iterations += result.fixed_point_iterations
        stats.jvp_evaluations += result.jvp_evaluations
    if not result.converged and not math.isfinite(result.residual):
        with torch.no_grad():
            at_start = all_finite(field(y_detached))
        where = "at a Newton iterate" if at_start else "already at the initial guess z = y_n"
        raise NonFiniteValueError(
            f"func returned non-finite values at t={t + h:.6g} {where} in the backward Euler step from "
            f"t={t:.6g} with h={h:.6g}: no finite residual (not a convergence failure)", t=t, h=h)
    if not result.converged:
        with torch.no_grad():
            floor = rounding_floor(result.z, y_detached, h * field(result.z))
        advice = (f"tol is below the rounding level of the residual in {y.dtype} (≈ {floor:.2g}): use "
                  f"ImplicitOptions(tol={10 * floor:.1g}) or more"
                  f"{', or a float64 state' if y.dtype != torch.float64 else ''}"
                  if result.residual <= 100 * floor else "a smaller h or a larger tol may help")
        raise NonConvergenceError(
            f"backward Euler step from t={t:.6g} with h={h:.6g} did not converge: scaled residual "
            f"‖G(z)‖={result.residual:.3g} > tol={tol:.3g} after {result.newton_iterations} Newton and "
            f"{result.fixed_point_iterations} fixed-point iterations ({advice})", t=t, h=h)
    z_star = result.z
    if not torch.is_grad_enabled():
        return z_star
    if stats is not None:
        stats.nfe += 1
    with torch.enable_grad():
        # Value ≈ z*; its graph carries ∂/∂y = I and ∂/∂θ = h ∂f/∂θ, to be fed with λ instead of g.
        explicit = y + h * func(t_new, z_star)
    if not explicit.requires_grad:
        return z_star
    context = _ImplicitContext(func, t_new, h, z_star, tol, options, t)
    return _ImplicitFunctionGradient.apply(explicit, context)


@dataclass
class _ImplicitContext:
    func: TimeVectorField
    t_new: Tensor
    h: float
    z_star: Tensor
    tol: float
    options: ImplicitOptions
    t: float


class _ImplicitFunctionGradient(torch.autograd.Function):
    """Forward: returns z* (the converged root). Backward: solves (I − hJ)ᵀ λ = g, J = ∂f/∂y(t_{n+1}, z*),
    and sends λ into the graph of y_n + h f(t_{n+1}, z*) — whose Jacobians in y_n and θ are I and h ∂f/∂θ."""

    @staticmethod
    def forward(ctx, explicit: Tensor, context: _ImplicitContext) -> Tensor:
        ctx.context = context
        return context.z_star

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        c: _ImplicitContext = ctx.context
        z = c.z_star.detach().requires_grad_(True)
        with torch.enable_grad():
            value = c.func(c.t_new, z)

        def transpose_matvec(v: Tensor) -> Tensor:
            (vjp,) = torch.autograd.grad(value, z, v, retain_graph=True, allow_unused=True)
            return v if vjp is None else v - c.h * vjp

        linear = gmres(transpose_matvec, grad, rtol=c.tol, restart=c.options.restart,
                       max_matvecs=c.options.max_linear)
        adjoint = linear.x
        if not linear.converged:  # fixed point λ ← g + h Jᵀ λ (a contraction when h‖J‖ < 1)
            adjoint, converged = _adjoint_fixed_point(transpose_matvec, grad, adjoint, c)
            if not converged:
                raise NonConvergenceError(
                    f"backward pass of the backward Euler step from t={c.t:.6g} with h={c.h:.6g}: the linear "
                    f"system (I − hJ)ᵀλ = g was not solved (relative residual {linear.residual_norm:.3g} "
                    f"after {linear.matvecs} GMRES products, fixed-point fallback diverged)", t=c.t, h=c.h)
        return adjoint, None


def _adjoint_fixed_point(transpose_matvec, grad: Tensor, start: Tensor, c: _ImplicitContext):
    target = c.tol * max(float(torch.linalg.vector_norm(grad)), 1e-300)
    adjoint = start if all_finite(start) else grad.clone()
    for _ in range(c.options.max_fixed_point):
        residual = grad - transpose_matvec(adjoint)
        norm = float(torch.linalg.vector_norm(residual))
        if not math.isfinite(norm):
            return adjoint, False
        if norm <= target:
            return adjoint, True
        adjoint = adjoint + residual  # = g + h Jᵀ λ
    return adjoint, False


class BackwardEuler(OdeSolver):
    """Backward Euler (fixed step only; order 1, A-stable, L-stable), Newton–Krylov per step.

    Extra keyword ``implicit``: an ``ImplicitOptions`` (tolerance and iteration caps). Dense output is linear
    interpolation between step ends (local error O(h²), consistent with order 1).
    """

    name = "backward_euler"
    order = 1

    def __init__(self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float, options=None,
                 **keywords) -> None:
        super().__init__(func, t0, y0, t_bound, options, **keywords)
        self.stats = ImplicitStats()
        self.implicit = self.options.implicit or ImplicitOptions()
        self._checked_first_evaluation()  # shape/dtype/finiteness of f, once

    @classmethod
    def single_step(cls, func: TimeVectorField, t: float, y: Tensor, h: float, **options) -> Tensor:
        """y_{n+1} of one backward Euler step (IFT gradients); ``options`` are ``ImplicitOptions`` fields."""
        return backward_euler_step(func, t, y, h, options=ImplicitOptions(**options) if options else None)

    def _fixed_step(self, h: float) -> tuple[Tensor, None]:
        y_new = backward_euler_step(self._func, self.t, self.y, h, options=self.implicit, stats=self.stats,
                                    time_dtype=self._time_dtype)
        return y_new, None

    def dense_output(self) -> Callable[[float], Tensor]:
        if self.y_old is None:
            raise RuntimeError("no step has been taken yet")
        t_old, y_old, y_new, h = self.t_old, self.y_old, self.y, self.t - self.t_old
        return lambda t: torch.lerp(y_old, y_new, (t - t_old) / h)
