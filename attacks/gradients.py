"""Input gradients of the attack objective, with the health checks that expose gradient masking.

The white-box attacks ascend ``J(x') = CE(f(x'), y)`` (untargeted) or ``J(x') = -CE(f(x'), t)``
(targeted). Gradients are taken of the *sum* of per-sample losses, so each sample's gradient is its own
``dJ_i/dx'_i`` (samples do not interact in eval mode) and no ``1/N`` factor can underflow.

Gradient masking -- e.g. an adaptive ODE solve whose gradient is zero, NaN or uninformative -- shows up as
identically-zero or non-finite per-sample gradients and as loss curves that do not rise;
:class:`GradientMonitor` records both without synchronizing the device inside the attack loop.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import check_finite_logits, check_labels_in_range

__all__ = ["GradientMonitor", "objective_and_gradient"]


def objective_and_gradient(
    model: Callable[[Tensor], Tensor],
    x_adv: Tensor,
    y: Tensor,
    *,
    targeted: bool,
    transform: Callable[[Tensor], Tensor] | None = None,
    check_labels: bool = False,
) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(objective, gradient, logits)``: per-sample ``J`` (detached), ``dJ/dx_adv`` and the logits.

    ``transform`` (e.g. input diversity) is applied inside the differentiated function, so the gradient is
    taken through it.
    """
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv if transform is None else transform(x_adv))
        if check_labels:
            check_labels_in_range(logits, y)
        check_finite_logits(logits)
        cross_entropy = F.cross_entropy(logits, y, reduction="none")
        objective = -cross_entropy if targeted else cross_entropy
        (gradient,) = torch.autograd.grad(objective.sum(), x_adv)
    return objective.detach(), gradient, logits.detach()


class GradientMonitor:
    """Accumulates the mean objective per step and the per-sample gradient health over an attack run.

    ``zero_gradient_fraction``: fraction of (sample, step) pairs whose input gradient is identically zero.
    ``nonfinite_gradient_fraction``: fraction whose gradient contains NaN/inf (NaNs are then replaced by 0 so
    the attack never emits NaN inputs).
    """

    def __init__(self) -> None:
        self._objective_means: list[Tensor] = []
        self._zero: Tensor | None = None
        self._nonfinite: Tensor | None = None
        self._count = 0

    def record(self, objective: Tensor, gradient: Tensor) -> Tensor:
        """Record one step and return the gradient with NaNs replaced by zeros."""
        l1 = gradient.flatten(1).abs().sum(dim=1)  # NaN / inf propagate
        zero = (l1 == 0).sum()
        nonfinite = (~torch.isfinite(l1)).sum()
        self._zero = zero if self._zero is None else self._zero + zero
        self._nonfinite = nonfinite if self._nonfinite is None else self._nonfinite + nonfinite
        self._count += gradient.shape[0]
        self._objective_means.append(objective.mean())
        return torch.nan_to_num(gradient, nan=0.0)

    def summary(self) -> dict[str, object]:
        if self._count == 0:
            return {"objective_curve": [], "zero_gradient_fraction": 0.0, "nonfinite_gradient_fraction": 0.0}
        return {
            "objective_curve": torch.stack(self._objective_means).tolist(),
            "zero_gradient_fraction": float(self._zero) / self._count,
            "nonfinite_gradient_fraction": float(self._nonfinite) / self._count,
        }
