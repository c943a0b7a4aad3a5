"""One step of a named scheme: how ``nets`` writes a residual block as a numerical method."""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from stability.solver import solver_class


def step(
    func: Callable[[Tensor, Tensor], Tensor], t: float, y: Tensor, h: float, method: str = "euler"
) -> Tensor:
    """y_{n+1} after one step of ``method`` with step h from (t, y); e.g. euler: y + h·func(t, y).

    No validation and no statistics: this is the hot path of a network's forward pass.
    """
    return solver_class(method).single_step(func, t, y, h)
