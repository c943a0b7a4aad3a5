"""Adversarial-training objectives as ``loss_fn(model, x, y) -> scalar`` callables for ``nets.training``.

The loop calls ``loss = loss_fn(model, x, y); loss.backward(); optimizer.step()`` with the model in train
mode. The inner maximization runs with the model in eval mode (restored afterwards) and never touches the
parameters' ``.grad``; the returned loss is computed in train mode. Under DistributedDataParallel the attack
runs on the wrapped module and the loss goes through the wrapper, so gradients are averaged across processes.

* :class:`PGDAdversarialLoss` (Madry et al., 2018): ``CE(f(x_adv), y)``, ``x_adv`` = L-inf PGD on the CE.
* :class:`TRADESLoss` (Zhang et al., 2019b): ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_adv))``,
  ``x_adv`` maximizes the KL term by L-inf PGD started at ``x + 0.001 N(0, I)`` (the reference code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_inputs, eval_mode, require_count, require_nonnegative
from .pgd import PGD, linf_box, signed_gradient_ascent

__all__ = ["LinearEpsWarmup", "PGDAdversarialLoss", "TRADESLoss", "unwrap_model"]


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a (Distributed)DataParallel wrapper, else ``model`` itself."""
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        return model.module
    return model


class PGDAdversarialLoss:
    """Madry et al. PGD adversarial training: ``loss = CE(model(PGD(x)), y)``.

    The attack is :class:`attacks.PGD` (``eps``, ``alpha``, ``steps``, uniform random start) with a persistent
    generator, so successive batches get fresh random starts.
    """

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, random_start: bool = True,
                 seed: int | None = 0) -> None:
        self.attack = PGD(eps, alpha, steps, restarts=1, random_start=random_start, seed=seed)
        self._ratio = self.attack.alpha / self.attack.eps if self.attack.eps > 0 else None

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        x_adv = self.attack(unwrap_model(model), x, y)
        return F.cross_entropy(model(x_adv), y)

    @property
    def eps(self) -> float:
        return self.attack.eps

    def set_eps(self, eps: float) -> None:
        """Change ``eps`` (e.g. a warm-up), keeping ``alpha / eps`` fixed."""
        self.attack.eps, self.attack.alpha = _rescaled(self.attack.eps, self.attack.alpha, eps, self._ratio)

    def __repr__(self) -> str:
        a = self.attack
        return (f"PGDAdversarialLoss(eps={a.eps}, alpha={a.alpha}, steps={a.steps}, "
                f"random_start={a.random_start})")


class TRADESLoss:
    """TRADES: ``CE(f(x), y) + beta * (1/B) sum_i KL(p(x_i) || p(x_adv_i))`` with ``p = softmax(f)``.

    Inner maximization of ``KL(p(x) || p(x'))`` over ``B_inf(x, eps) cap [0,1]``: ``steps`` signed-gradient
    steps of size ``alpha`` (default ``2.5 eps / steps``) from ``x + 0.001 N(0, I)``. In the outer loss the
    gradient flows through both ``p(x)`` and ``p(x_adv)``, as in the reference implementation.
    """

    def __init__(self, eps: float, alpha: float | None = None, steps: int = 10, beta: float = 6.0,
                 seed: int | None = 0) -> None:
        self.eps = require_nonnegative("eps", eps)
        self.steps = require_count("steps", steps)
        self.alpha = 2.5 * self.eps / self.steps if alpha is None else require_nonnegative("alpha", alpha)
        self.beta = require_nonnegative("beta", beta)
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}
        self._ratio = self.alpha / self.eps if self.eps > 0 else None

    def set_eps(self, eps: float) -> None:
        """Change ``eps`` (e.g. a warm-up), keeping ``alpha / eps`` fixed."""
        self.eps, self.alpha = _rescaled(self.eps, self.alpha, eps, self._ratio)

    def _generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**62, (1,))))
            self._generators[device] = generator
        return self._generators[device]

    def adversarial_examples(self, model: nn.Module, x: Tensor) -> Tensor:
        """``argmax_{x' in B_inf(x, eps) cap [0,1]} KL(p(x) || p(x'))`` by signed-gradient ascent."""
        lower, upper = linf_box(x, self.eps)
        with eval_mode(model), torch.no_grad():
            target = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        start = torch.clamp(x + 0.001 * noise, min=lower, max=upper)

        def objective_and_grad(x_adv: Tensor) -> tuple[Tensor, Tensor]:
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                log_p = F.log_softmax(model(x_adv), dim=1)
                kl = F.kl_div(log_p, target, reduction="none").sum(dim=1)
                (gradient,) = torch.autograd.grad(kl.sum(), x_adv)
            return kl.detach(), torch.nan_to_num(gradient, nan=0.0)

        with eval_mode(model):
            return signed_gradient_ascent(objective_and_grad, start, lower, upper, self.alpha, self.steps)

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_inputs(x, y)
        x_adv = self.adversarial_examples(unwrap_model(model), x.detach()).detach()
        # two separate forward passes, as in the reference: batch norm and adaptive-step ODE solves (whose
        # step sizes depend on the whole batch) would otherwise mix clean and adversarial samples
        natural_logits, adversarial_logits = model(x), model(x_adv)
        natural = F.cross_entropy(natural_logits, y)
        robust = F.kl_div(
            F.log_softmax(adversarial_logits, dim=1), F.softmax(natural_logits, dim=1), reduction="batchmean"
        )
        return natural + self.beta * robust

    def __repr__(self) -> str:
        return f"TRADESLoss(eps={self.eps}, alpha={self.alpha}, steps={self.steps}, beta={self.beta})"



def _rescaled(old_eps: float, old_alpha: float, eps: float, ratio: float | None) -> tuple[float, float]:
    eps = require_nonnegative("eps", eps)
    if ratio is None:
        if old_eps == 0 and old_alpha == 0 and eps > 0:
            raise ValueError("cannot rescale a step size of 0: construct the loss with eps > 0 or an alpha")
        return eps, old_alpha
    return eps, ratio * eps


class LinearEpsWarmup:
    """``on_batch_end`` callback for ``nets.training.train``: ``eps_t = eps * min(1, (t + 1) / warmup_steps)``
    for the batch after ``t`` optimizer steps (a common remedy for adversarial training stuck at chance at
    large eps, e.g. MNIST at 0.3). ``loss`` is any loss here with ``set_eps``; after a resume, call
    :meth:`start_at` with the number of steps already taken.
    """

    def __init__(self, loss, eps: float, warmup_steps: int, steps_per_epoch: int) -> None:
        self.loss = loss
        self.eps = require_nonnegative("eps", eps)
        self.warmup_steps = require_count("warmup_steps", warmup_steps)
        self.steps_per_epoch = require_count("steps_per_epoch", steps_per_epoch)
        self.start_at(0)

    def start_at(self, steps_taken: int) -> None:
        self.loss.set_eps(self.eps * min(1.0, (steps_taken + 1) / self.warmup_steps))

    def __call__(self, info) -> None:
        self.start_at((info.epoch - 1) * self.steps_per_epoch + info.step + 1)
