"""YOPO-m-n adversarial training (Zhang, Zhang, Lu, Zhu & Dong, 2019a, "You Only Propagate Once").

Write the network as ``f = g(f_0(x))`` with ``f_0`` the first layer. By the Pontryagin maximum principle the
adversary couples to the weights only through ``f_0``, so YOPO-m-n replaces most full forward/backward
passes of PGD by passes through ``f_0`` alone. For each batch, with ``eta ~ U(-eps, eps)``:

    repeat m times:
        one full forward/backward at x + eta: the weight gradient G_j (accumulated for the update) and the
        costate p = dL/dz at the first layer's output z = f_0(x + eta)
        repeat n times (first layer only, p frozen):
            eta <- Proj_{B_inf(0, eps), x + eta in [0,1]}(eta + alpha * sign(grad_eta <p, f_0(x + eta)>))
        first-layer weight gradient of the Hamiltonian <p, f_0(x + eta)> at the new eta

and the weights are updated once with the mean over the m passes of both gradients (the authors' code sums
them and divides the learning rate by m). Cost: m full forward/backward passes plus m*n first-layer ones.

The model protocol (:func:`split_first_layer`): a model exposes ``first_layer`` (an ``nn.Module``,
normalization included if the model normalizes its input) and ``forward_from_first_layer(z)`` such that
``model(x) == model.forward_from_first_layer(model.first_layer(x))``; a plain ``nn.Sequential`` is split as
``model[0]`` / ``model[1:]``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import check_inputs, require_count, require_nonnegative
from .pgd import linf_box
from .training_losses import _rescaled, unwrap_model

__all__ = ["YOPOLoss", "split_first_layer"]


def split_first_layer(model: nn.Module) -> tuple[nn.Module, Callable[[Tensor], Tensor]]:
    """``(first_layer, rest)`` with ``model(x) == rest(first_layer(x))``; see the module docstring."""
    model = unwrap_model(model)
    first = getattr(model, "first_layer", None)
    rest = getattr(model, "forward_from_first_layer", None)
    if isinstance(first, nn.Module) and callable(rest):
        return first, rest
    if isinstance(model, nn.Sequential) and len(model) >= 2:
        return model[0], model[1:]
    raise TypeError(
        f"YOPO needs the model's first layer: {type(model).__name__} must expose `first_layer` "
        "(nn.Module) and `forward_from_first_layer(z)` with "
        "model(x) == model.forward_from_first_layer(model.first_layer(x)), or be an nn.Sequential"
    )


class YOPOLoss:
    """YOPO-m-n as a ``loss_fn(model, x, y)`` for ``nets.training``.

    The m full passes and the first-layer Hamiltonian gradients are computed inside the call; the returned
    scalar has the value of the mean cross-entropy over the m passes and a gradient equal to the YOPO update
    direction, so the loop's ``loss.backward(); optimizer.step()`` applies it. (Not for
    DistributedDataParallel: the gradient does not flow through the wrapper's forward.)

    Args: ``eps`` L-inf radius, ``m`` full passes, ``n`` first-layer steps per pass, ``alpha`` step size of
    the first-layer steps (default ``2.5 eps / (m n)``, as ``eta`` carries over the m*n steps; the authors'
    MNIST YOPO-5-10 setting is eps=0.3, alpha=0.01).
    """

    def __init__(self, eps: float, m: int = 5, n: int = 3, alpha: float | None = None,
                 seed: int | None = 0) -> None:
        self.eps = require_nonnegative("eps", eps)
        self.m = require_count("m", m)
        self.n = require_count("n", n, minimum=0)
        default_alpha = 2.5 * self.eps / (self.m * max(self.n, 1))
        self.alpha = default_alpha if alpha is None else require_nonnegative("alpha", alpha)
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

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        check_inputs(x, y)
        if isinstance(model, nn.parallel.DistributedDataParallel):
            raise TypeError("YOPOLoss does not support DistributedDataParallel")
        first_layer, rest = split_first_layer(model)
        parameters = [p for p in unwrap_model(model).parameters() if p.requires_grad]
        first_ids = {id(p) for p in first_layer.parameters()}
        first_parameters = [p for p in parameters if id(p) in first_ids]

        x = x.detach()
        lower, upper = linf_box(x, self.eps)
        noise = torch.rand(x.shape, generator=self._generator(x.device), device=x.device, dtype=x.dtype)
        x_adv = torch.clamp(x + (2.0 * noise - 1.0) * self.eps, min=lower, max=upper)

        totals = [torch.zeros_like(p) for p in parameters]
        first_totals = [torch.zeros_like(p) for p in first_parameters]
        loss_sum = x.new_zeros(())
        for _ in range(self.m):
            with torch.enable_grad():
                z = first_layer(x_adv)
                loss = F.cross_entropy(rest(z), y)
                grads = torch.autograd.grad(loss, [z, *parameters], allow_unused=True)
            costate = grads[0].detach()  # p = dL/dz: the adjoint of the first layer's output
            for total, grad in zip(totals, grads[1:]):
                if grad is not None:
                    total += grad
            loss_sum = loss_sum + loss.detach()
            x_adv = self._first_layer_steps(first_layer, x_adv, costate, lower, upper)
            with torch.enable_grad():
                hamiltonian = (first_layer(x_adv) * costate).sum()
                first_grads = torch.autograd.grad(hamiltonian, first_parameters, allow_unused=True)
            for total, grad in zip(first_totals, first_grads):
                if grad is not None:
                    total += grad

        first_index = {id(p): i for i, p in enumerate(first_parameters)}
        surrogate = x.new_zeros(())
        for p, total in zip(parameters, totals):
            if id(p) in first_index:
                total = total + first_totals[first_index[id(p)]]
            surrogate = surrogate + (p * (total / self.m)).sum()
        # value: the mean cross-entropy of the m passes; gradient: the YOPO direction
        return surrogate - surrogate.detach() + loss_sum / self.m

    def _first_layer_steps(self, first_layer: nn.Module, x_adv: Tensor, costate: Tensor, lower: Tensor,
                           upper: Tensor) -> Tensor:
        """n signed-gradient ascent steps on the Hamiltonian ``<p, f_0(x + eta)>``, through f_0 only."""
        for _ in range(self.n):
            x_adv = x_adv.detach().requires_grad_(True)
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad((first_layer(x_adv) * costate).sum(), x_adv)
            x_adv = torch.clamp(x_adv + self.alpha * torch.nan_to_num(gradient, nan=0.0).sign(),
                                min=lower, max=upper)
        return x_adv.detach()

    def __repr__(self) -> str:
        return f"YOPOLoss(eps={self.eps}, m={self.m}, n={self.n}, alpha={self.alpha})"
