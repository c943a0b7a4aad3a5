"""Fast Gradient Sign Method (Goodfellow et al., 2015).

``x_adv = clip_[0,1](x + eps * sign(grad_x J(x)))`` with ``J`` the cross-entropy (untargeted) or minus the
cross-entropy of the target class (targeted). For a locally linear model this is the exact maximizer of the
linearized loss over the L-inf ball of radius ``eps``.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import Attack, AttackResult, require_nonnegative
from .gradients import GradientMonitor, objective_and_gradient

__all__ = ["FGSM"]


class FGSM(Attack):
    """One signed-gradient step of size ``eps`` (L-inf), clipped to ``[0, 1]``."""

    def __init__(self, eps: float, *, targeted: bool = False, seed: int | None = 0) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.eps = require_nonnegative("eps", eps)

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        monitor = GradientMonitor()
        objective, gradient, _ = objective_and_gradient(
            model, x, y, targeted=self.targeted, check_labels=True
        )
        gradient = monitor.record(objective, gradient)
        x_adv = (x + self.eps * gradient.sign()).clamp_(0.0, 1.0)
        return AttackResult(x_adv, monitor.summary())

    def _config(self) -> dict[str, object]:
        return {"eps": self.eps, **super()._config()}
