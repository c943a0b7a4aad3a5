"""Jacobian-free Newton–Krylov for G(z) = 0, with a fixed-point fallback; used by the implicit steps.

Newton: solve G'(z) δ = −G(z) by GMRES with Jacobian-vector products from forward-mode autograd (no Jacobian
is ever formed), backtrack z + αδ until ‖G‖ decreases, repeat; quadratic convergence near the root when the
linear solves are tight (Eisenstat–Walker forcing terms keep them no tighter than needed).
Fallback: the fixed-point iteration z ← z − G(z), which converges when I − G' is a contraction (for the
backward-Euler residual G(z) = z − y − h f(z) that is z ← y + h f(z), needing h·Lip(f) < 1).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd import forward_ad

from stability.checks import all_finite
from stability.krylov import gmres


@dataclass
class NewtonResult:
    """Outcome of a nonlinear solve; ``residual`` is the scaled norm that was compared with the tolerance."""

    z: Tensor
    residual: float
    converged: bool
    newton_iterations: int = 0
    fixed_point_iterations: int = 0
    residual_evaluations: int = 0
    jvp_evaluations: int = 0


def rms(x: Tensor) -> float:
    return float(torch.linalg.vector_norm(x)) / math.sqrt(max(x.numel(), 1))


def newton_krylov(residual: Callable[[Tensor], Tensor], jvp: Callable[[Tensor, Tensor], tuple],
                  z0: Tensor, tol: float, limits) -> NewtonResult:
    """Find z with ‖G(z)‖_rms ≤ tol·max(1, ‖z‖_rms).

    ``residual(z)`` is G(z); ``jvp(z, v)`` returns (G(z), G'(z) v); ``limits`` caps the iterations
    (``max_newton``, ``max_linear``, ``restart``, ``max_fixed_point``: an ``ImplicitOptions``). Runs under
    ``torch.no_grad``; never raises on non-convergence (``converged`` says), so the caller can name its own
    context (t, h).
    """
    with torch.no_grad():
        result = _newton(residual, jvp, z0, tol, limits.max_newton, limits.max_linear, limits.restart)
        if result.converged:
            return result
        finite = math.isfinite(result.residual)
        fallback = _fixed_point(residual, result.z if finite else z0, tol, limits.max_fixed_point)
        better = fallback.converged or not finite or fallback.residual < result.residual
        return dataclasses.replace(  # the better iterate, with the work of both
            fallback if better else result, newton_iterations=result.newton_iterations,
            jvp_evaluations=result.jvp_evaluations, fixed_point_iterations=fallback.fixed_point_iterations,
            residual_evaluations=result.residual_evaluations + fallback.residual_evaluations)


def _scaled(g: Tensor, z: Tensor) -> float:
    return rms(g) / max(1.0, rms(z))


def _newton(residual, jvp, z, tol, max_newton, max_linear, restart) -> NewtonResult:
    g = residual(z)
    norm = _scaled(g, z)
    out = NewtonResult(z=z, residual=norm, converged=False, residual_evaluations=1)
    previous_norm = None
    forcing = 0.1  # first linear solve loose; Eisenstat–Walker tightens it as Newton converges
    while math.isfinite(norm) and norm > tol and out.newton_iterations < max_newton:
        out.newton_iterations += 1
        if previous_norm is not None:  # Eisenstat–Walker choice 2, safeguarded
            forcing = min(0.1, 0.9 * (norm / previous_norm) ** 2)
        # No point in solving the linear system far below what the tolerance needs.
        forcing = max(forcing, min(0.1, 0.1 * tol / norm), 1e-12)
        state = z

        def matvec(v: Tensor, state: Tensor = state) -> Tensor:
            out.jvp_evaluations += 1
            return jvp(state, v)[1]

        linear = gmres(matvec, -g, rtol=forcing, restart=restart, max_matvecs=max_linear)
        delta = linear.x
        if not all_finite(delta):
            break
        step = 1.0
        for _ in range(6):  # backtracking line search on ‖G‖ (Armijo, slope from the linear model)
            trial = z + step * delta
            g_trial = residual(trial)
            out.residual_evaluations += 1
            trial_norm = _scaled(g_trial, trial)
            if math.isfinite(trial_norm) and trial_norm <= (1 - 1e-4 * step) * norm:
                break
            step *= 0.5
        else:
            break  # no decrease along the Newton direction
        previous_norm, norm, z, g = norm, trial_norm, trial, g_trial
        out.z, out.residual = z, norm
    out.converged = norm <= tol
    return out


def _fixed_point(residual, z, tol, max_iterations) -> NewtonResult:
    g = residual(z)
    norm = _scaled(g, z)
    out = NewtonResult(z=z, residual=norm, converged=False, residual_evaluations=1)
    while math.isfinite(norm) and norm > tol and out.fixed_point_iterations < max_iterations:
        out.fixed_point_iterations += 1
        candidate = z - g
        g_candidate = residual(candidate)
        out.residual_evaluations += 1
        candidate_norm = _scaled(g_candidate, candidate)
        if not math.isfinite(candidate_norm) or candidate_norm > 1e3 * norm:
            break  # diverging: the map is not a contraction here
        z, g, norm = candidate, g_candidate, candidate_norm
        out.z, out.residual = z, norm
    out.converged = norm <= tol
    return out


def make_jvp(function: Callable[[Tensor], Tensor], mode: str = "forward") -> Callable:
    """(z, v) ↦ (F(z), F'(z) v). ``mode="forward"``: forward-mode AD (dual numbers; ≈ 2 evaluations of F, no
    graph). ``"reverse"``: the double-backward trick — u ↦ vjp(u) = F'(z)ᵀu is linear, so its own vjp with v
    is F'(z) v (≈ 4 evaluations, but works for every differentiable op and is cheaper for tiny fields whose
    scalar ops torch's forward mode runs through Python decompositions). Forward mode falls back to reverse
    for ops without forward formulas."""
    use_forward = mode == "forward"  # validated by ImplicitOptions

    def forward_mode(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        with forward_ad.dual_level():
            value, product = forward_ad.unpack_dual(function(forward_ad.make_dual(z, v)))
        return value, torch.zeros_like(value) if product is None else product  # None: F does not depend on z

    def double_backward(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            value = function(z)
            u = torch.zeros_like(value, requires_grad=True)
            (vjp,) = torch.autograd.grad(value, z, u, create_graph=True, allow_unused=True)
            if vjp is None or not vjp.requires_grad:  # F is constant or affine-free in z
                return value.detach(), torch.zeros_like(value)
            (product,) = torch.autograd.grad(vjp, u, v, allow_unused=True)
        return value.detach(), torch.zeros_like(value) if product is None else product

    def jvp(z: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        nonlocal use_forward
        if use_forward:
            try:
                with warnings.catch_warnings():  # torch's first forward-AD call scripts its decompositions
                    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", DeprecationWarning)
                    return forward_mode(z, v)
            except (NotImplementedError, RuntimeError) as error:
                if "forward" not in str(error).lower() and "jvp" not in str(error).lower():
                    raise
                use_forward = False
        return double_backward(z, v)

    return jvp
