"""Projected Gradient Descent in L-inf (Madry et al., 2018).

Iterates ``x_{k+1} = Proj_{B_inf(x, eps) cap [0,1]^d}(x_k + alpha * sign(grad J(x_k)))`` for ``steps``
steps, from ``x_0 = x + U(-eps, eps)`` (``random_start``) or ``x_0 = x``. With ``restarts > 1`` the attack is
rerun from fresh random starts on the samples not yet fooled, and each sample keeps its best result
(fooled first, then highest objective).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .base import Attack, AttackResult, require_count, require_nonnegative, require_positive
from .gradients import GradientMonitor, objective_and_gradient

__all__ = ["PGD", "linf_box", "signed_gradient_ascent"]


def linf_box(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Bounds of ``B_inf(x, eps) cap [0, 1]^d`` as two tensors, so projection is a single ``clamp``."""
    return (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)


def signed_gradient_ascent(
    objective_and_grad: Callable[[Tensor], tuple[Tensor, Tensor]],
    start: Tensor,
    lower: Tensor,
    upper: Tensor,
    alpha: float,
    steps: int,
    monitor: GradientMonitor | None = None,
) -> Tensor:
    """``steps`` iterations of ``x <- clamp(x + alpha * sign(g(x)), lower, upper)``; returns the last iterate.

    ``objective_and_grad(x) -> (per-sample objective, gradient)`` is the only model-dependent part, so the
    same loop serves PGD, DI2-FGSM and the TRADES inner maximization.
    """
    x_adv = start
    for _ in range(steps):
        objective, gradient = objective_and_grad(x_adv)
        if monitor is not None:
            gradient = monitor.record(objective, gradient)
        x_adv = torch.clamp(x_adv + alpha * gradient.sign(), min=lower, max=upper)
    return x_adv


class PGD(Attack):
    """L-inf PGD with uniform random start, step ``alpha``, ``steps`` iterations and ``restarts`` restarts.

    ``alpha`` defaults to ``2.5 * eps / steps`` (Madry et al.). The result's ``stats`` hold, per restart, the
    mean objective before each step, and the fractions of zero / non-finite input gradients.
    """

    def __init__(
        self,
        eps: float,
        alpha: float | None = None,
        steps: int = 10,
        restarts: int = 1,
        random_start: bool = True,
        *,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.eps = require_nonnegative("eps", eps)
        self.steps = require_count("steps", steps)
        self.restarts = require_count("restarts", restarts)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else require_nonnegative("alpha", alpha)
        if self.eps > 0 and alpha is not None:
            require_positive("alpha", alpha)
        self.random_start = bool(random_start)

    def _start(self, x: Tensor, lower: Tensor, upper: Tensor) -> Tensor:
        if not self.random_start or self.eps == 0:
            return x.clone()
        noise = torch.rand(x.shape, generator=self.generator(x.device), device=x.device, dtype=x.dtype)
        return torch.clamp(x + (2.0 * noise - 1.0) * self.eps, min=lower, max=upper)

    def _run_once(self, model: nn.Module, x: Tensor, y: Tensor,
                  first: bool) -> tuple[Tensor, GradientMonitor]:
        lower, upper = linf_box(x, self.eps)
        monitor = GradientMonitor()
        checked = [not first]

        def objective_and_grad(x_adv: Tensor) -> tuple[Tensor, Tensor]:
            objective, gradient, _ = objective_and_gradient(
                model, x_adv, y, targeted=self.targeted, check_labels=not checked[0]
            )
            checked[0] = True
            return objective, gradient

        x_adv = signed_gradient_ascent(
            objective_and_grad, self._start(x, lower, upper), lower, upper, self.alpha, self.steps, monitor
        )
        return x_adv, monitor

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        x_adv, monitor = self._run_once(model, x, y, first=True)
        monitors = [monitor]
        if self.restarts > 1:
            x_adv = self._restarts(model, x, y, x_adv, monitors)
        summaries = [m.summary() for m in monitors]
        total = sum(len(s["objective_curve"]) for s in summaries) or 1
        stats = {
            "objective_curve": [s["objective_curve"] for s in summaries],
            "zero_gradient_fraction": sum(
                s["zero_gradient_fraction"] * len(s["objective_curve"]) for s in summaries
            ) / total,
            "nonfinite_gradient_fraction": sum(
                s["nonfinite_gradient_fraction"] * len(s["objective_curve"]) for s in summaries
            ) / total,
        }
        return AttackResult(x_adv, stats)

    @torch.no_grad()
    def _score(self, model: nn.Module, x_adv: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x_adv)
        cross_entropy = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        objective = -cross_entropy if self.targeted else cross_entropy
        return self.is_adversarial(logits, y), torch.nan_to_num(objective, nan=-torch.inf)

    def _restarts(
        self, model: nn.Module, x: Tensor, y: Tensor, best: Tensor, monitors: list[GradientMonitor]
    ) -> Tensor:
        best = best.clone()
        best_fooled, best_objective = self._score(model, best, y)
        for _ in range(self.restarts - 1):
            todo = (~best_fooled).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            candidate, monitor = self._run_once(model, x[todo], y[todo], first=False)
            monitors.append(monitor)
            fooled, objective = self._score(model, candidate, y[todo])
            better = fooled | (objective > best_objective[todo])
            keep = todo[better]
            best[keep] = candidate[better]
            best_fooled[keep] = fooled[better]
            best_objective[keep] = objective[better]
        return best

    def _config(self) -> dict[str, object]:
        return {
            "eps": self.eps, "alpha": self.alpha, "steps": self.steps, "restarts": self.restarts,
            "random_start": self.random_start, **super()._config(),
        }
