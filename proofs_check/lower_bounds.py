"""Empirical lower bounds of a Lipschitz constant: values K is guaranteed to be at least, never bounds on K.

* ``jacobian_norm``: σ_max of f's Jacobian at each sample, by power iteration on JᵀJ (JVPs and VJPs).
  For f Lipschitz with constant K, ‖J(y)‖₂ ≤ K wherever f is differentiable.
* ``lipschitz_lower``: the largest secant ratio |f(y + δ) − f(y)| / |δ| found by gradient ascent over (y, δ),
  started from the data and the Jacobian's top singular vectors. Every evaluated ratio is ≤ K by definition,
  so the maximum is a lower bound (up to rounding of the two evaluations).

``f`` maps a batch [B, ...] to [B, ...] with the samples independent (e.g. BatchNorm in eval mode); norms are
per sample.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

Function = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class LowerBound:
    """``value`` ≤ K: the best secant ratio found; ``per_sample`` the best per starting sample.

    ``points``/``perturbations`` are the witnesses: per sample, the (y, δ) whose ratio
    |f(y + δ) − f(y)| / |δ| is ``per_sample``. ``jacobian_norm`` is max ‖J_f(y)‖₂ estimated at the starting
    samples (also ≤ K, up to convergence).
    """

    value: float
    per_sample: Tensor
    jacobian_norm: float
    points: Tensor
    perturbations: Tensor


def per_sample_norm(x: Tensor) -> Tensor:
    """|x_b|: the 2-norm of each sample of a batch [B, ...]."""
    return torch.linalg.vector_norm(x.flatten(1), dim=1)


def per_sample_normalise(x: Tensor) -> Tensor:
    """x_b / |x_b| for each sample of a batch."""
    norms = per_sample_norm(x).clamp_min(torch.finfo(x.dtype).tiny)
    return x / norms.view(-1, *([1] * (x.dim() - 1)))


def jacobian_norm(f: Function, y: Tensor, *, iterations: int = 50, seed: int = 0) -> tuple[Tensor, Tensor]:
    """(σ, v): per-sample σ_b = ‖J_f(y_b) v_b‖ ≤ ‖J_f(y_b)‖₂ and the unit vectors v_b reaching them.

    Power iteration on JᵀJ with one recorded forward pass: Jᵀu by reverse mode, Jv by the double-backward
    trick (Jv = ∂/∂u ⟨Jᵀu, v⟩), or by central differences when f's backward is not differentiable (e.g. an
    implicit step whose gradient is ``once_differentiable``).
    """
    _check_batch(y)
    generator = torch.Generator(device=y.device).manual_seed(seed)
    v = per_sample_normalise(torch.randn(y.shape, dtype=y.dtype, device=y.device, generator=generator))
    with torch.enable_grad():
        point = y.detach().requires_grad_(True)
        output = f(point)
        jvp = _double_backward_jvp(output, point)
        for _ in range(iterations):
            try:
                image = jvp(v)
            except RuntimeError:  # not twice differentiable: fall back to central differences
                jvp = _finite_difference_jvp(f, y.detach())
                image = jvp(v)
            (back,) = torch.autograd.grad(output, point, image, retain_graph=True)  # JᵀJ v, per sample
            v = per_sample_normalise(back)
        image = jvp(v)
    return per_sample_norm(image).detach(), v.detach()


def _double_backward_jvp(output: Tensor, point: Tensor) -> Callable[[Tensor], Tensor]:
    dummy = torch.zeros_like(output, requires_grad=True)
    (transposed,) = torch.autograd.grad(output, point, dummy, create_graph=True)  # Jᵀ·dummy, linear in dummy

    def jvp(v: Tensor) -> Tensor:
        (image,) = torch.autograd.grad(transposed, dummy, v, retain_graph=True)
        return image.detach()

    return jvp


def _finite_difference_jvp(f: Function, y: Tensor) -> Callable[[Tensor], Tensor]:
    def jvp(v: Tensor) -> Tensor:
        shape = (-1,) + (1,) * (y.dim() - 1)
        step = (torch.finfo(y.dtype).eps ** (1 / 3)) * (1 + per_sample_norm(y)).to(y).view(shape)
        with torch.no_grad():
            return (f(y + step * v) - f(y - step * v)) / (2 * step)

    return jvp


def lipschitz_lower(
    f: Function,
    y: Tensor,
    *,
    ascent_steps: int = 100,
    learning_rate: float = 1e-2,
    iterations: int = 30,
    seed: int = 0,
) -> LowerBound:
    """Largest |f(y') − f(y'')| / |y' − y''| found by gradient ascent from pairs at ``y`` (module doc).

    δ starts along the Jacobian's top right-singular vector with norm 1e-3·(1 + |y|). Each step ascends the
    log-ratio along its per-sample normalised gradient: y moves by ``learning_rate``·(1 + |y|), δ by
    ``learning_rate``·|δ|, so the scale of δ does not matter.
    """
    sigma, direction = jacobian_norm(f, y, iterations=iterations, seed=seed)
    y = y.detach()
    shape = (-1,) + (1,) * (y.dim() - 1)
    scale = (1 + per_sample_norm(y)).view(shape)
    base = y.clone().requires_grad_(True)
    delta = (direction * 1e-3 * scale).requires_grad_(True)
    best = torch.zeros(y.shape[0], dtype=y.dtype, device=y.device)
    points, perturbations = y.clone(), torch.zeros_like(y)
    for step in range(ascent_steps + 1):
        with torch.enable_grad():
            ratio = _secant_ratio(f, base, delta)
        current = torch.nan_to_num(ratio.detach(), nan=0.0, posinf=0.0)
        improved = current > best
        best = torch.where(improved, current, best)
        points[improved] = base.detach()[improved]
        perturbations[improved] = ((base + delta) - base).detach()[improved]
        if step == ascent_steps:
            break
        log_ratio = torch.log(ratio.clamp_min(torch.finfo(y.dtype).tiny)).sum()
        grad_base, grad_delta = torch.autograd.grad(log_ratio, [base, delta])
        with torch.no_grad():
            delta_norm = per_sample_norm(delta).view(shape)
            base += learning_rate * scale * per_sample_normalise(grad_base)
            delta += learning_rate * delta_norm * per_sample_normalise(grad_delta)
    return LowerBound(
        value=float(best.max()),
        per_sample=best.cpu(),
        jacobian_norm=float(sigma.max()),
        points=points,
        perturbations=perturbations,
    )


def _secant_ratio(f: Function, base: Tensor, delta: Tensor) -> Tensor:
    both = f(torch.cat([base + delta, base]))
    moved, reference = both.chunk(2)
    # δ is measured as the difference actually fed to f, so rounding of base + δ cannot inflate the ratio.
    step = (base + delta) - base
    return per_sample_norm(moved - reference) / per_sample_norm(step)


def _check_batch(y: Tensor) -> None:
    if not isinstance(y, Tensor) or not y.is_floating_point():
        raise ValueError("y must be a floating-point tensor batch [B, ...]")
    if y.dim() < 2 or y.shape[0] == 0:
        raise ValueError(f"y must be a batch [B, ...] with B ≥ 1, got shape {tuple(y.shape)}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("y contains NaN or infinite values")


__all__ = ["LowerBound", "jacobian_norm", "lipschitz_lower", "per_sample_norm", "per_sample_normalise"]
