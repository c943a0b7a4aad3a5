"""Indicators of attack failure that only models with ODE blocks have (``nets.odenet.ODEBlock``).

* ``nfe-spread``: the solver's work (function evaluations of the adaptive solve, each sample solved alone)
  changes by more than ``threshold`` of its median under uniform noise of size eps, for more than
  ``tolerance`` of the samples. The discretization then depends on where in the ball the attack stands, and
  gradients through the solve ignore that dependence.
* ``gradient-agreement``: the directional derivative ``dL/dx . v`` of the cross-entropy along a random unit
  direction ``v``, by backprop through the solver, by the adjoint method and by central finite differences
  ``(L(x + h v) - L(x - h v)) / 2h`` of the deployed model, disagree by more than ``threshold`` (relative,
  median over samples) for some pair: the gradient the attack follows is not the model's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from nets.odenet import ODEBlock

from .base import eval_mode, model_device, perturbation_size
from .flags import Flag

__all__ = ["gradient_agreement", "nfe_spread", "ode_blocks", "solver_flags"]


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    return [module for module in model.modules() if isinstance(module, ODEBlock)]


@contextlib.contextmanager
def _override(model: nn.Module, **changes: object) -> Iterator[None]:
    with contextlib.ExitStack() as stack:
        for block in ode_blocks(model):
            stack.enter_context(block.solver_override(**changes))
        yield


def _nfe(model: nn.Module, z: Tensor) -> int:
    blocks = ode_blocks(model)
    for block in blocks:
        block.pop_solver_stats()
    model(z)
    return sum(int(block.pop_solver_stats()["nfe"]) for block in blocks)


@torch.no_grad()
def nfe_spread(
    model: nn.Module,
    x: Tensor,
    eps: float,
    norm: str = "linf",
    *,
    draws: int = 4,
    threshold: float = 0.5,
    tolerance: float = 0.01,
    seed: int = 0,
) -> Flag:
    """Per sample, ``(max - min) / median`` of the NFE at ``x`` and at ``draws`` uniform points of its
    eps-ball."""
    if not ode_blocks(model):
        return Flag("nfe-spread", False, "not tested: the model has no ODE block")
    device = model_device(model)
    generator = torch.Generator(device=device).manual_seed(seed)
    spreads, counts = [], []
    with eval_mode(model):
        for sample in x.detach().to(device):
            points = [sample]
            for _ in range(draws):
                u = 2 * torch.rand(sample.shape, generator=generator, device=device, dtype=sample.dtype) - 1
                if norm == "l2":
                    u = u / perturbation_size(u[None], "l2")
                points.append((sample + eps * u).clamp(0, 1))
            nfe = torch.tensor([_nfe(model, p[None]) for p in points], dtype=torch.float64)
            counts.append(nfe.tolist())
            spreads.append(float((nfe.max() - nfe.min()) / nfe.median().clamp_min(1)))
    spread = torch.tensor(spreads)
    fraction = float((spread > threshold).float().mean())
    numbers = {
        "samples": len(spreads),
        "draws": draws,
        "eps": eps,
        "median_spread": float(spread.median()),
        "max_spread": float(spread.max()),
        "fraction_above": fraction,
        "nfe_first_samples": counts[:5],
    }
    if fraction > tolerance:
        return Flag(
            "nfe-spread",
            True,
            f"the solver's work changes by more than {100 * threshold:g}% inside the ball for "
            f"{100 * fraction:.1f}% of the samples (max {float(spread.max()):.2f}): the discretization "
            "moves with the attack; check the fixed-step and tight-tolerance surrogates",
            numbers,
        )
    return Flag(
        "nfe-spread",
        False,
        f"the solver's work is steady inside the ball (median spread {float(spread.median()):.2f})",
        numbers,
    )


def _directional(model: nn.Module, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
    z = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(z), y, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, z)
    return (gradient * v).flatten(1).sum(dim=1)


def gradient_agreement(
    model: nn.Module, x: Tensor, y: Tensor, *, step: float = 1e-3, threshold: float = 0.1, seed: int = 0
) -> Flag:
    """Backprop, adjoint and central finite-difference directional derivatives of the cross-entropy along a
    random unit direction; fires when some pair disagrees by more than ``threshold`` (median relative)."""
    if not ode_blocks(model):
        return Flag("gradient-agreement", False, "not tested: the model has no ODE block")
    device = model_device(model)
    x, y = x.detach().to(device), y.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    v = torch.randn(x.shape, generator=generator, device=device, dtype=x.dtype)
    v = v / perturbation_size(v, "l2").view(-1, *([1] * (x.dim() - 1)))
    with eval_mode(model):
        with _override(model, gradient="backprop"):
            backprop = _directional(model, x, y, v)
        with _override(model, gradient="adjoint"):
            adjoint = _directional(model, x, y, v)
        with torch.no_grad():
            up = F.cross_entropy(model(x + step * v), y, reduction="none")
            down = F.cross_entropy(model(x - step * v), y, reduction="none")
    finite = (up - down) / (2 * step)
    values = {"backprop": backprop, "adjoint": adjoint, "finite-difference": finite}
    disagreement = {}
    names = list(values)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            scale = torch.maximum(values[a].abs(), values[b].abs()).clamp_min(1e-6)
            disagreement[f"{a} vs {b}"] = float(((values[a] - values[b]).abs() / scale).median())
    worst = max(disagreement, key=disagreement.get)
    numbers = {"samples": int(x.shape[0]), "step": step, "median_relative_disagreement": disagreement}
    if disagreement[worst] > threshold:
        return Flag(
            "gradient-agreement",
            True,
            f"input gradients disagree: {worst} differ by {100 * disagreement[worst]:.0f}% (median): the "
            "attack follows a gradient that is not the model's",
            numbers,
        )
    return Flag(
        "gradient-agreement",
        False,
        f"backprop, adjoint and finite differences agree within {100 * disagreement[worst]:.1f}% (median)",
        numbers,
    )


def solver_flags(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    norm: str = "linf",
    tolerance: float = 0.01,
    seed: int = 0,
) -> list[Flag]:
    """``nfe-spread`` and ``gradient-agreement`` (both "not tested" without ODE blocks)."""
    return [
        nfe_spread(model, x, eps, norm, tolerance=tolerance, seed=seed),
        gradient_agreement(model, x, y, seed=seed),
    ]
