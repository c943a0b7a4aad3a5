"""One step of an ESDIRK method (``stiff_tableau.ESDIRKTableau``): an explicit first stage, then one
nonlinear solve per stage, z_i = r_i + hγ f(t + c_i h, z_i) with r_i = y + h Σ_{j<i} a_ij k_j.

Each solve is a simplified Newton iteration z ← z − (I − hγJ)⁻¹ (z − r_i − hγ f(z)) with J = ∂f/∂y(t_n, y_n)
factored once per step (``linearization``), stopped by Hairer–Wanner's test η‖Δz‖ ≤ κ (η = θ/(1 − θ), θ the
contraction rate, ‖·‖ the RMS scaled by atol + rtol|y|, κ = max(10 eps/rtol, min(0.03, √rtol))); then
k_i = (z_i − r_i)/(hγ). The iteration starts from the tableau's predictor z_i⁰ = r_i + hγ Σ_{j<i} α_ij k_j
(an extrapolation of the stage derivative). A diverging or too slow iteration fails the step
at once (the remaining stages are not solved), with an error estimate that makes the controller halve h
(``NEWTON_FAILURE_RATIO``).

Gradients by the implicit-function theorem, stage by stage: z_i's gradient is that of the fixed point of
r_i + hγ f(t_i, ·) (``backward_euler._ImplicitFunctionGradient``: the backward pass solves
(I − hγJ(z_i))ᵀλ = g by GMRES on vector-Jacobian products), never the Newton iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from stability.backward_euler import _ImplicitContext, _ImplicitFunctionGradient
from stability.checks import time_dtype
from stability.linearization import Linearization
from stability.options import ImplicitOptions
from stability.runge_kutta import RKStep, column, linear_combination
from stability.step_control import rms
from stability.stiff_tableau import ESDIRKTableau

# The error estimate of a step that failed for another reason than its error (a Krylov solve short of its
# tolerance), relative to 1 + |y|: every error norm rejects it and the controller answers with its largest
# reduction of h.
NEWTON_FAILURE = 1e6
# A failed Newton iteration: the error estimate is this many times the tolerance atol + rtol|y_n|, the
# ratio at which the default controller (safety 0.9, embedded order 4: 0.9·r^(−1/5)) halves h, as Hairer's
# RADAU5 and scipy's Radau do after a failed Newton iteration (with the controller's minimum factor, 0.2,
# kvaerno5 took more steps and f evaluations on the stiff suite's Van der Pol, docs/stiff.md).
NEWTON_FAILURE_RATIO = (0.9 / 0.5) ** 5


def esdirk_step(func: Callable, raw_func: Callable, t: float | Tensor, y: Tensor, h: float | Tensor,
                tableau: ESDIRKTableau, first_stage: Tensor | None, linearization: Linearization, rtol: float,
                atol: float, options: ImplicitOptions, per_sample: bool) -> RKStep:
    """One step from (t, y) with step h (numbers, or per-sample tensors [B]); ``func`` is the counted
    evaluation, ``raw_func`` func itself (for the backward pass). Stages returned: [k_1, k_s] (k_s is
    f(t_{n+1}, y_{n+1}) for a stiffly accurate method: the next first stage)."""
    h_gamma = h * tableau.gamma
    linearization.factor(h_gamma)
    hg = column(h_gamma, y) if isinstance(h_gamma, Tensor) else h_gamma
    with torch.no_grad():
        scale = y.detach().abs().mul(rtol).add_(atol)
    kappa = max(10 * torch.finfo(y.dtype).eps / max(rtol, 1e-300), min(0.03, math.sqrt(rtol)))
    k = [func(t, y) if first_stage is None else first_stage]
    failed = torch.zeros(y.shape[0] if per_sample else (), dtype=torch.bool, device=y.device)
    nonfinite = failed  # the samples whose iteration met a NaN or an infinity (from f or from J)
    eta = torch.ones(failed.shape, dtype=torch.float64, device=y.device)  # Newton's η, carried stage to stage
    grad = torch.is_grad_enabled()
    for c, a_row, predictor in tableau.stage_plan:
        t_stage = t + c * h
        rhs = linear_combination(y, k, a_row, h)
        with torch.no_grad():
            z = (rhs.detach() + hg * linear_combination(None, [x.detach() for x in k], predictor, 1.0)
                 if predictor else y.detach())
            z, stage_failed, stage_nonfinite, iterations, eta = _newton(
                func, t_stage, rhs.detach(), z, hg, linearization, scale, kappa, eta, options.max_newton,
                per_sample)
        linearization.stats.newton_iterations += iterations
        failed, nonfinite = failed | stage_failed, nonfinite | stage_nonfinite
        if bool(failed.all()):  # every sample retries with a smaller h: the remaining stages would be wasted
            linearization.stats.newton_failures += failed.long() if per_sample else 1
            return RKStep(y, _failure_error(scale, nonfinite, per_sample), [k[0], k[0]])
        if grad:  # as backward Euler: the graph of r_i + hγ f(t_i, z*), fed λ by the backward pass
            t_tensor = _as_time(t_stage, y)
            explicit = rhs + hg * func(t_stage, z)
            if explicit.requires_grad:
                context = _ImplicitContext(raw_func, t_tensor, hg, z, options.tolerance(y.dtype), options,
                                           _first(t))
                z = _ImplicitFunctionGradient.apply(explicit, context)
        k.append((z - rhs) / hg)
    y_new = linear_combination(y, k, tableau.b_plan, h) if not tableau.fsal else z
    with torch.no_grad():
        error = linear_combination(None, k, tableau.error_plan, h)
    if bool(failed.any()):  # rejected: an error estimate every norm rejects, and y_new = y (finite)
        linearization.stats.newton_failures += failed.long() if per_sample else 1
        mask = column(failed.double(), y) > 0 if per_sample else failed
        error = torch.where(mask, _failure_error(scale, nonfinite, per_sample), error)
        y_new = torch.where(mask, y, y_new)
    return RKStep(y_new, error, [k[0], k[-1]])


def _failure_error(scale: Tensor, nonfinite: Tensor, per_sample: bool) -> Tensor:
    """The error estimate of a failed Newton iteration: ``NEWTON_FAILURE_RATIO`` times the tolerance (h
    halves), or NaN where the iteration met non-finite values (the loop's non-finite rejections: h shrinks
    by the controller's minimum factor, and a NaN that persists is reported as func's)."""
    mask = column(nonfinite.double(), scale) > 0 if per_sample else nonfinite
    return torch.where(mask, torch.full_like(scale, math.nan), NEWTON_FAILURE_RATIO * scale)


def _newton(func, t, rhs: Tensor, z: Tensor, hg, linearization: Linearization, scale: Tensor, kappa: float,
            eta: Tensor, max_iterations: int, per_sample: bool) -> tuple[Tensor, Tensor, Tensor, int, Tensor]:
    """Simplified Newton for z = rhs + hγ f(t, z): (z, failed, non-finite, iterations, η), the flags per
    sample ([B]) or one each. The first iteration is judged with max(η, eps)^0.8 of the previous stage
    (Hairer–Wanner IV.8); an iteration whose rate θ predicts no convergence within the remaining iterations
    fails at once, and so does one whose correction is not finite."""
    shape = (z.shape[0],) if per_sample else ()
    converged = torch.zeros(shape, dtype=torch.bool, device=z.device)
    failed = torch.zeros(shape, dtype=torch.bool, device=z.device)
    nonfinite = failed
    previous = torch.full(shape, math.inf, dtype=torch.float64, device=z.device)
    eta = eta.clamp(min=torch.finfo(torch.float64).eps) ** 0.8
    for iteration in range(max_iterations):
        residual = z - rhs - hg * func(t, z)
        delta = linearization.solve(-residual)
        norm = rms(delta / scale, per_sample).double()
        nonfinite = nonfinite | (~converged & ~torch.isfinite(norm))
        failed = failed | nonfinite
        if iteration > 0:
            theta = norm / previous
            hopeless = theta ** (max_iterations - 1 - iteration) / (1 - theta) * norm > kappa
            failed = failed | (~converged & (~(theta < 0.99) | hopeless))  # diverging, slow, or non-finite
        done = converged | failed
        step = ~done
        if iteration > 0:  # the rate of the samples still iterating (a finished one keeps its η)
            eta = torch.where(step & (theta < 0.99), theta / (1 - theta), eta)
        z = z + delta * column(step.double(), z) if per_sample else (z + delta if bool(step) else z)
        converged = converged | (step & (eta * norm <= kappa))
        previous = norm
        if bool((converged | failed).all()):
            break
    return z, failed | ~converged, nonfinite, iteration + 1, eta


def _as_time(t, like: Tensor) -> Tensor:
    """t as func receives it: a 0-d tensor, or per-sample times [B], in the state's time dtype."""
    if isinstance(t, Tensor):
        return t.to(time_dtype(like))
    return torch.full((), t, dtype=time_dtype(like), device=like.device)


def _first(t) -> float:
    return float(t.reshape(-1)[0]) if isinstance(t, Tensor) else float(t)
