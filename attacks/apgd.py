"""Auto-PGD (Croce & Hein, ICML 2020): step-size-free PGD with momentum, in L-inf and L2.

One run of ``steps`` iterations, per sample:

* start ``x_0 = x + eps * u / ||u||`` (``u`` uniform in [-1, 1]^d for L-inf, Gaussian for L2), clipped to
  [0, 1]; step size ``eta_0 = 2 eps``;
* ``z_{k+1} = P(x_k + eta_k * s(grad L(x_k)))`` with ``s = sign`` (L-inf) or ``g / ||g||_2`` (L2), and the
  momentum step ``x_{k+1} = P(x_k + a (z_{k+1} - x_k) + (1 - a)(x_k - x_{k-1}))``, ``a = 0.75`` (1 at k = 0),
  where ``P`` projects onto ``B(x, eps) cap [0, 1]^d``;
* at the checkpoints ``w_j = ceil(p_j N)``, ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
  0.06)``, the step size is halved (and the iterate reset to the best point so far) when the loss rose in
  fewer than ``rho = 0.75`` of the steps since the last checkpoint, or when the step size was not halved at
  the last checkpoint and the best loss has not improved since.

Losses: ``"ce"`` (cross-entropy) and ``"dlr"`` (difference of logits ratio, shift- and scale-invariant:
``-(z_y - max_{i != y} z_i) / (z_{pi_1} - z_{pi_3})``). :class:`APGDT` is the targeted DLR variant run against
each of the top-k other classes: ``-(z_y - z_t) / (z_{pi_1} - (z_{pi_3} + z_{pi_4}) / 2)``. Restarts (and
targets) only touch samples not yet fooled. Defaults are AutoAttack "standard": 100 iterations, one restart
(APGD-CE), nine target classes (APGD-T).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Attack,
    AttackResult,
    check_finite_logits,
    check_labels_in_range,
    require_count,
    require_nonnegative,
    require_norm,
)
from .gradients import GradientMonitor

__all__ = ["APGD", "APGDT", "apgd_checkpoints", "dlr_loss", "dlr_loss_targeted"]

LOSSES = ("ce", "dlr")
_TINY = 1e-12


def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD may halve its step size.

    The paper's ``w_j = ceil(p_j N)`` with ``p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06)``, in the integer form of the reference code: windows of ``max(int(0.22 N), 1)`` iterations, each
    ``max(int(0.03 N), 1)`` shorter than the last, never shorter than ``max(int(0.06 N), 1)`` (for N = 100:
    22, 41, 57, 70, 80, 87, 93, 99).
    """
    require_count("steps", steps)
    window = max(int(0.22 * steps), 1)
    shrink, shortest = max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at = [], window
    while at <= steps:
        points.append(at)
        window = max(window - shrink, shortest)
        at += window
    return points


def dlr_loss(logits: Tensor, y: Tensor) -> Tensor:
    """Per-sample DLR loss ``-(z_y - max_{i != y} z_i) / (z_{pi_1} - z_{pi_3} + 1e-12)`` (>= 3 classes)."""
    if logits.shape[1] < 3:
        raise ValueError(f"the DLR loss needs >= 3 classes, the model returns {logits.shape[1]}")
    ordered, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], -torch.inf).amax(dim=1)
    return -(z_y - others) / (ordered[:, 0] - ordered[:, 2] + _TINY)


def dlr_loss_targeted(logits: Tensor, y: Tensor, target: Tensor) -> Tensor:
    """Per-sample targeted DLR ``-(z_y - z_t) / (z_{pi_1} - (z_{pi_3} + z_{pi_4}) / 2 + 1e-12)``."""
    if logits.shape[1] < 4:
        raise ValueError(f"the targeted DLR loss needs >= 4 classes, the model returns {logits.shape[1]}")
    ordered, _ = logits.sort(dim=1, descending=True)
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    z_t = logits.gather(1, target[:, None]).squeeze(1)
    return -(z_y - z_t) / (ordered[:, 0] - 0.5 * (ordered[:, 2] + ordered[:, 3]) + _TINY)


def _per_sample_norm(v: Tensor, norm: str) -> Tensor:
    flat = v.flatten(1)
    value = flat.abs().amax(dim=1) if norm == "linf" else torch.linalg.vector_norm(flat, dim=1)
    return value.view(-1, *([1] * (v.dim() - 1)))


def _projection(x: Tensor, eps: float, norm: str) -> Callable[[Tensor], Tensor]:
    """Projection onto ``B(x, eps) cap [0, 1]^d`` (exact for L-inf; AutoAttack's radial-then-clip for L2).

    L-inf: the box ``[max(x - eps, 0), min(x + eps, 1)]`` is formed once; clamping to it equals clamping to
    the ball and then to [0, 1] bit for bit (min / max are exact and the two intervals intersect)."""
    if norm == "linf":
        lower, upper = (x - eps).clamp_(min=0.0), (x + eps).clamp_(max=1.0)
        return lambda x_adv: torch.clamp(x_adv, lower, upper)

    def project_l2(x_adv: Tensor) -> Tensor:
        delta = x_adv - x
        scale = torch.clamp(eps / (_per_sample_norm(delta, "l2") + _TINY), max=1.0)
        return (x + delta * scale).clamp_(0.0, 1.0)

    return project_l2


class _Objective:
    """Loss to maximize, success test and gradient for one APGD run (one target per sample or none)."""

    def __init__(
        self,
        model: nn.Module,
        y: Tensor,
        loss: str,
        targeted: bool,
        target: Tensor | None,
        monitor: GradientMonitor,
    ) -> None:
        self.model, self.y, self.loss, self.targeted, self.target = model, y, loss, targeted, target
        self.monitor = monitor

    def loss_of(self, logits: Tensor) -> Tensor:
        if self.target is not None:
            return dlr_loss_targeted(logits, self.y, self.target)
        if self.loss == "dlr":
            return dlr_loss(logits, self.y)
        cross_entropy = F.cross_entropy(logits, self.y, reduction="none")
        return -cross_entropy if self.targeted else cross_entropy

    def fooled(self, logits: Tensor) -> Tensor:
        prediction = logits.argmax(dim=1)
        return prediction == self.y if self.targeted else prediction != self.y

    def __call__(self, x_adv: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, gradient, fooled)`` at ``x_adv``; non-finite gradients are recorded and zeroed."""
        x_adv = x_adv.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x_adv)
            check_finite_logits(logits)
            loss = self.loss_of(logits)
            (gradient,) = torch.autograd.grad(loss.sum(), x_adv)
        loss = loss.detach()
        gradient = self.monitor.record(loss, gradient)
        return loss, gradient, self.fooled(logits.detach())


def apgd_run(
    objective: Callable[[Tensor], tuple[Tensor, Tensor, Tensor]],
    x: Tensor,
    eps: float,
    norm: str,
    steps: int,
    generator: torch.Generator,
    rho: float = 0.75,
    momentum: float = 0.75,
) -> tuple[Tensor, Tensor, Tensor]:
    """One APGD run from a random start. Returns ``(x_out, fooled, best_loss)``: per sample the first
    adversarial point found if any, else the highest-loss point."""
    shape = (-1, *([1] * (x.dim() - 1)))
    if norm == "linf":
        u = 2.0 * torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) - 1.0
    else:
        u = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    x_adv = (x + eps * u / (_per_sample_norm(u, norm) + _TINY)).clamp(0.0, 1.0)
    loss, gradient, fooled = objective(x_adv)
    x_best, loss_best, gradient_best = x_adv.clone(), loss.clone(), gradient.clone()
    x_best_adv = torch.where(fooled.view(shape), x_adv, x)
    ever_fooled = fooled.clone()
    step_size = torch.full((x.shape[0],), 2.0 * eps, device=x.device, dtype=x.dtype)
    checkpoints = set(apgd_checkpoints(steps))
    last_checkpoint = 0
    increases = torch.zeros(x.shape[0], device=x.device)
    loss_previous = loss.clone()
    loss_best_at_check = loss_best.clone()
    halved_at_check = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    x_previous = x_adv.clone()
    project = _projection(x, eps, norm)
    for k in range(steps):
        a = 1.0 if k == 0 else momentum
        with torch.no_grad():
            # in place on fresh temporaries, in the order of the formulas (the same roundings)
            direction = (
                gradient.sign() if norm == "linf" else gradient / (_per_sample_norm(gradient, "l2") + _TINY)
            )
            z = project(direction.mul_(step_size.view(shape)).add_(x_adv))  # x + eta s(g)
            change = z.sub_(x_adv).mul_(a).add_(x_adv)  # x + a (z - x)
            change.add_((x_adv - x_previous).mul_(1.0 - a))  # ... + (1 - a)(x - x_prev)
            x_previous, x_adv = x_adv, project(change)
        loss, gradient, fooled = objective(x_adv)
        with torch.no_grad():
            new_adv = fooled & ~ever_fooled
            x_best_adv[new_adv] = x_adv[new_adv]
            ever_fooled |= fooled
            increases += (loss > loss_previous).float()
            loss_previous = loss
            improved = loss > loss_best
            torch.where(improved.view(shape), x_adv, x_best, out=x_best)  # in place, no gather / scatter
            torch.where(improved.view(shape), gradient, gradient_best, out=gradient_best)
            loss_best = torch.where(improved, loss, loss_best)
            if k + 1 in checkpoints:
                window = k + 1 - last_checkpoint
                oscillating = increases <= rho * window
                stalled = ~halved_at_check & (loss_best_at_check >= loss_best)
                halve = oscillating | stalled
                step_size = torch.where(halve, step_size / 2.0, step_size)
                x_adv[halve], gradient[halve] = x_best[halve], gradient_best[halve]
                halved_at_check, loss_best_at_check = halve, loss_best.clone()
                increases.zero_()
                last_checkpoint = k + 1
    x_out = torch.where(ever_fooled.view(shape), x_best_adv, x_best)
    return x_out, ever_fooled, loss_best


class APGD(Attack):
    """Auto-PGD with the cross-entropy (``loss="ce"``) or DLR (``"dlr"``) loss, L-inf or L2.

    ``restarts`` random restarts, each only on the samples not yet fooled. Result ``stats``: ``fooled`` per
    sample, the objective curve of the first run, zero / non-finite gradient fractions, gradient queries per
    sample (``queries``: forward+backward passes).
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce",
        norm: str = "linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        *,
        targeted: bool = False,
        seed: int | None = 0,
    ) -> None:
        super().__init__(targeted=targeted, seed=seed)
        self.eps = require_nonnegative("eps", eps)
        self.steps = require_count("steps", steps)
        self.restarts = require_count("restarts", restarts)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        require_norm(norm)
        if targeted and loss == "dlr":
            raise ValueError("targeted DLR is APGDT (top-k target classes); use loss='ce' with targeted=True")
        self.loss, self.norm = loss, norm
        self.rho = require_nonnegative("rho", rho)
        self.momentum = require_nonnegative("momentum", momentum)
        if self.momentum > 1:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")

    def _targets(self, logits: Tensor, y: Tensor) -> list[Tensor | None]:
        return [None] * self.restarts

    def _attack(self, model: nn.Module, x: Tensor, y: Tensor) -> AttackResult:
        with torch.no_grad():
            logits = model(x)
        check_labels_in_range(logits, y)
        check_finite_logits(logits)
        monitor = GradientMonitor()
        x_adv = x.clone()
        fooled = (logits.argmax(1) == y) if self.targeted else (logits.argmax(1) != y)
        queries = torch.ones(x.shape[0], dtype=torch.long, device=x.device)
        if self.eps > 0:
            generator = self.generator(x.device)
            targets = self._targets(logits, y)
            for run, target in enumerate(targets):
                todo = (~fooled).nonzero().squeeze(1)
                if todo.numel() == 0:
                    break
                objective = _Objective(
                    model,
                    y[todo],
                    self.loss,
                    self.targeted,
                    None if target is None else target[todo],
                    monitor,
                )
                candidate, success, _ = apgd_run(
                    objective, x[todo], self.eps, self.norm, self.steps, generator, self.rho, self.momentum
                )
                queries[todo] += self.steps + 1
                x_adv[todo[success]] = candidate[success]
                fooled[todo[success]] = True
                self._progress((run + 1) / len(targets))
        summary = monitor.summary()
        return AttackResult(x_adv, {**summary, "fooled": fooled.cpu(), "queries": queries.cpu()})

    @property
    def min_classes(self) -> int:
        return 3 if self.loss == "dlr" else 2  # DLR divides by z_π1 − z_π3

    def _config(self) -> dict[str, object]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "restarts": self.restarts,
            "loss": self.loss,
            "norm": self.norm,
            **super()._config(),
        }


class APGDT(APGD):
    """Targeted APGD with the targeted DLR loss against each of the ``target_classes`` highest-scoring other
    classes in turn (one run per target and restart, on the samples not yet fooled). Untargeted in effect:
    ``y`` holds the true labels and success means misclassification.
    """

    def __init__(
        self,
        eps: float,
        steps: int = 100,
        restarts: int = 1,
        target_classes: int = 9,
        norm: str = "linf",
        rho: float = 0.75,
        momentum: float = 0.75,
        *,
        seed: int | None = 0,
    ) -> None:
        super().__init__(eps, steps, restarts, "dlr", norm, rho, momentum, seed=seed)
        self.target_classes = require_count("target_classes", target_classes)

    @property
    def min_classes(self) -> int:
        return 4  # the targeted DLR loss divides by z_π1 − (z_π3 + z_π4)/2

    def _targets(self, logits: Tensor, y: Tensor) -> list[Tensor | None]:
        classes = logits.shape[1]
        if classes < 4:
            raise ValueError(f"APGDT's targeted DLR loss needs >= 4 classes, the model returns {classes}")
        ranked = logits.argsort(dim=1, descending=True)
        count = min(self.target_classes, classes - 1)
        # only correctly classified samples are attacked, so rank 0 is y and ranks 1..count are other classes
        return [ranked[:, k] for k in range(1, count + 1) for _ in range(self.restarts)]

    def _config(self) -> dict[str, object]:
        config = super()._config()
        config.pop("loss")
        return {**config, "target_classes": self.target_classes}
