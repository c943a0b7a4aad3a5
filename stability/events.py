"""Events: the times t* where g(t, y(t)) crosses zero, per sample, located on the dense output.

An ``Event(condition, direction, terminal)`` is watched at the end of every accepted step: a sign change of
g between the step's ends (in ``direction``: +1 rising, −1 falling, 0 both) brackets a root, which the
Illinois method (regula falsi with halving of the stale end, bisection every fourth iteration) locates on the
step's interpolant ŷ to the resolution of t. Its gradient is the implicit-function theorem's for
g(t*, ŷ(t*; θ); θ) = 0:

    dt*/dθ = −(∂g/∂θ) / (dg/dt),   dg/dt = ∂g/∂t + ∇_y g · ŷ'(t*)   (the derivative along the flow),

with ∂g/∂θ through ŷ(t*) (the stages' graph) and g's own parameters, and dy*/dθ = ∂ŷ/∂θ + ŷ'(t*) dt*/dθ.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from stability.errors import ODEInputError
from stability.runge_kutta import column

# g(t, y) -> [B]: t of shape [B] (each sample's time, in y's dtype), y of shape [B, ...]
Condition = Callable[[Tensor, Tensor], Tensor]
MAX_ROOT_ITERATIONS = 300  # bisection every 4th iteration: the bracket reaches one ulp well before this


@dataclass(frozen=True)
class Event:
    """The zero crossings of ``condition(t, y)`` (one value per sample: shape [B], t of shape [B]).

    ``direction``: +1 records crossings from negative to non-negative only, −1 from positive to non-positive
    only, 0 both (in the order the solve visits them: backwards in time when t decreases). ``terminal``:
    the sample's integration stops at its first such crossing (the others go on); otherwise every crossing
    is recorded. A crossing is seen when g changes sign between two step ends: two roots inside one step
    cancel (make ``max_step`` smaller than the shortest gap between roots)."""

    condition: Condition
    direction: int = 0
    terminal: bool = False

    def __post_init__(self) -> None:
        if not callable(self.condition):
            raise ODEInputError(f"Event condition must be callable (t, y) -> [B], got {self.condition!r}")
        if self.direction not in (-1, 0, 1) or isinstance(self.direction, bool):
            raise ODEInputError(f"Event direction must be -1, 0 or 1, got {self.direction!r}")
        if not isinstance(self.terminal, bool):
            raise ODEInputError(f"Event terminal must be True or False, got {self.terminal!r}")

    def evaluate(self, t: Tensor, y: Tensor) -> Tensor:
        """g(t, y) for rows y[i] at times t[i], checked to be one finite value per row."""
        g = self.condition(t, y)
        if not isinstance(g, Tensor) or g.shape != (y.shape[0],):
            shape = tuple(g.shape) if isinstance(g, Tensor) else type(g).__name__
            raise ODEInputError(f"Event condition must return a tensor of shape [{y.shape[0]}] (one value "
                                f"per sample), got {shape}")
        return g

    def crossed(self, g_old: Tensor, g_new: Tensor) -> Tensor:
        """Where g went from g_old to g_new through zero in ``direction`` (a zero at the start does not
        count again: it was the previous step's end)."""
        rising, falling = (g_old < 0) & (g_new >= 0), (g_old > 0) & (g_new <= 0)
        return rising if self.direction > 0 else falling if self.direction < 0 else rising | falling


def locate(phi: Callable[[Tensor], Tensor], a: Tensor, b: Tensor, fa: Tensor, fb: Tensor,
           resolution: float) -> Tensor:
    """Roots of phi (vectorised: one per row) in brackets [a, b] with fa·fb ≤ 0, fa = phi(a), fb = phi(b)
    (float64), by the Illinois method; stops when |b − a| ≤ resolution·max(|a|, |b|, |b−a|) or phi = 0.
    Returns the end with the smaller |phi|."""
    a, b, fa, fb = a.clone(), b.clone(), fa.clone(), fb.clone()
    for iteration in range(MAX_ROOT_ITERATIONS):
        scale = torch.maximum(torch.maximum(a.abs(), b.abs()), (b - a).abs())
        open_rows = ((b - a).abs() > resolution * scale) & (fb != 0) & (fa != 0)
        if not bool(open_rows.any()):
            break
        secant = b - fb * (b - a) / (fb - fa)
        middle = 0.5 * (a + b)
        inside = (secant - a) * (secant - b) < 0  # strictly inside the bracket (not lost to rounding)
        c = torch.where(inside & torch.isfinite(secant), secant, middle) if iteration % 4 != 3 else middle
        c = torch.where(open_rows, c, b)
        fc = torch.where(open_rows, phi(c), fb)
        flip = fc * fb < 0  # the root lies between b and c: b becomes the stale end
        a, fa = torch.where(flip, b, a), torch.where(flip, fb, torch.where(open_rows, 0.5 * fa, fa))
        b, fb = c, fc
    return torch.where(fb.abs() <= fa.abs(), b, a)


def differentiable_crossing(event: Event, t: Tensor, dense: Callable[[Tensor], Tensor],
                            time_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(t*, y*) at the located roots ``t`` (float64, no graph) of rows whose interpolant is ``dense``:
    equal to (t, ŷ(t)) in value, with the implicit-function theorem's gradient (module docstring)."""
    y = dense(t)
    if not torch.is_grad_enabled():
        return t, y
    return implicit_crossing(event, t, y, time_derivative(dense, t), time_dtype)


def time_derivative(dense: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    """ŷ'(t) row by row (no graph): the Jacobian-vector product d/dt ŷ(t)·1 as two vector-Jacobian products
    (row i of ŷ depends on t[i] only)."""
    with torch.enable_grad():
        t = t.detach().requires_grad_(True)
        y = dense(t)
        probe = torch.zeros_like(y, requires_grad=True)
        (row_sums,) = torch.autograd.grad(y, t, probe, create_graph=True)  # Σ_j probe_ij ∂y_ij/∂t_i
        (slope,) = torch.autograd.grad(row_sums, probe, torch.ones_like(row_sums))
    return slope.detach()


def implicit_crossing(event: Event, t: Tensor, y: Tensor, slope: Tensor, time_dtype: torch.dtype
                      ) -> tuple[Tensor, Tensor]:
    """(t*, y*) equal to (t, y) in value, whose gradients are the implicit-function theorem's for
    g(t*, y(t*)) = 0 with y(t) carrying the graph to θ and y'(t) = ``slope`` (no graph): dg/dt along the
    flow is ∂g/∂t + ∇_y g · slope."""
    g = event.evaluate(t.to(time_dtype), y)
    if not (torch.is_grad_enabled() and g.requires_grad):
        return t, y
    with torch.enable_grad():
        t_probe = t.detach().to(time_dtype).requires_grad_(True)
        y_probe = y.detach().requires_grad_(True)
        g_t, g_y = torch.autograd.grad(event.evaluate(t_probe, y_probe).sum(), (t_probe, y_probe),
                                       allow_unused=True, materialize_grads=True)
    dg_dt = (g_t + (g_y * slope).flatten(1).sum(1)).double()
    # a tangential crossing (dg/dt = 0) has no finite gradient; it is left at zero there, not NaN
    dg_dt = torch.where(dg_dt == 0, torch.full_like(dg_dt, math.inf), dg_dt)
    t_star = t + (-(g - g.detach()).double() / dg_dt)
    return t_star, y + column(t_star - t, y) * slope
