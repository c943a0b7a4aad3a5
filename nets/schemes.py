"""Network blocks that *are* one step of a numerical scheme for dy/dt = F(y), with a real step size h.

Every block wraps a residual function ``F`` (an ``nn.Module`` mapping a state to a state of the same shape)
and advances the state by one step of the named ``stability`` scheme, so a network of such blocks is the
scheme run for as many steps as it has blocks, with h = 1 for the usual architectures:

- :class:`SchemeStep` with ``method="euler"``: y + h·F(y), the ResNet block (explicit Euler, order 1);
  ``method="heun"``: y + h/2·(F(y) + F(y + h·F(y))) = ½(E∘E)(y) + ½y with E the Euler step, the FractalNet
  C = 2 join with identity paths (order 2); any other explicit ``stability`` method works the same way.
- :class:`PolyStep`: y + h·F(y) + (hF)(hF(y)), the PolyNet poly-2 block — I + hF + (hF)², the Neumann
  series of the backward-Euler step (I − hF)⁻¹ truncated after the quadratic term (not a ``stability``
  scheme itself).
- :class:`BackwardEulerStep`: the implicit step y_{n+1} = y + h·F(y_{n+1}) PolyNet approximates, solved by
  ``stability``'s ``backward_euler`` method.

F is autonomous (it ignores t). When F contains BatchNorm, in training mode it is a function of the batch
statistics as well as of y, so the block is the scheme's step of a batch-dependent field; in eval mode F is
a fixed function and the identity with the scheme is exact. :func:`set_step_size` changes h of every block
of a model after construction (e.g. to evaluate a trained network at another h).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from torch import Tensor, nn

import stability


def check_step_size(step_size: float) -> float:
    """``step_size`` as a float; it must be finite and positive."""
    try:
        h = float(step_size)
    except (TypeError, ValueError):
        raise TypeError(f"step_size must be a real number, got {step_size!r}") from None
    if not (math.isfinite(h) and h > 0):
        raise ValueError(f"step_size must be finite and > 0, got {step_size!r}")
    return h


def autonomous(residual: Callable[[Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """The vector field (t, y) ↦ F(y) that ``stability`` integrates, for a t-independent F."""

    def field(t: Tensor, y: Tensor) -> Tensor:
        return residual(y)

    return field


class SchemeBlock(nn.Module):
    """Base of the blocks whose forward is one step with step size ``step_size`` of a scheme for F."""

    def __init__(self, residual: nn.Module, step_size: float = 1.0) -> None:
        super().__init__()
        self.residual = residual
        self.step_size = check_step_size(step_size)

    def extra_repr(self) -> str:
        return f"step_size={self.step_size:g}"


class SchemeStep(SchemeBlock):
    """One step of the explicit ``stability`` scheme ``method`` for dy/dt = F(y): euler = the ResNet block."""

    def __init__(self, residual: nn.Module, step_size: float = 1.0, method: str = "euler") -> None:
        super().__init__(residual, step_size)
        stability.solver.solver_class(method)  # unknown names fail here, listing the known ones
        self.method = method

    def forward(self, y: Tensor) -> Tensor:
        return stability.step(autonomous(self.residual), 0.0, y, self.step_size, method=self.method)

    def extra_repr(self) -> str:
        return f"method={self.method!r}, step_size={self.step_size:g}"


class PolyStep(SchemeBlock):
    """PolyNet poly-2 block y + hF(y) + hF(hF(y)) = (I + hF + (hF)²)(y), F's parameters shared by both uses.

    For linear F = A this is (I + hA + h²A²)y, which differs from the backward-Euler step (I − hA)⁻¹y by
    h³A³y + O(h⁴). For nonlinear F it agrees with backward Euler only to O(h) when F(0) ≠ 0 (hF(hF(y)) →
    hF(0)), and to O(h²) when F(0) = 0 (h²F'(0)F(y) against h²F'(y)F(y)); see tests/nets/test_nets_schemes.py.
    """

    def forward(self, y: Tensor) -> Tensor:
        increment = self.residual(y) * self.step_size
        return y + increment + self.residual(increment) * self.step_size


class BackwardEulerStep(SchemeBlock):
    """The implicit (backward) Euler step y_{n+1} = y + h·F(y_{n+1}) solved by ``stability``.

    Order 1 and A-stable; its gradients are those of the ``backward_euler`` method of ``stability``
    (implicit-function theorem). The block fails at construction if that method is not available.
    """

    method = "backward_euler"

    def __init__(self, residual: nn.Module, step_size: float = 1.0) -> None:
        super().__init__(residual, step_size)
        if self.method not in stability.SOLVERS:
            known = ", ".join(sorted(stability.SOLVERS))
            raise NotImplementedError(f"stability has no {self.method!r} method yet (available: {known})")

    def forward(self, y: Tensor) -> Tensor:
        return stability.step(autonomous(self.residual), 0.0, y, self.step_size, method=self.method)


def set_step_size(model: nn.Module, step_size: float) -> int:
    """Set h of every scheme block (and every module with a ``step_size`` attribute it declares settable)
    in ``model``; returns how many blocks were changed."""
    h = check_step_size(step_size)
    changed = 0
    for module in model.modules():
        if isinstance(module, SchemeBlock) or getattr(module, "settable_step_size", False):
            module.step_size = h
            changed += 1
    return changed


def step_sizes(model: nn.Module) -> list[float]:
    """h of every scheme block of ``model``, in module order."""
    return [
        m.step_size
        for m in model.modules()
        if isinstance(m, SchemeBlock) or getattr(m, "settable_step_size", False)
    ]
