"""The binarization test (Zimmermann, Brendel, Tramèr & Carlini, NeurIPS 2022, "Increasing Confidence in
Adversarial Robustness Evaluations"): an attack unit test in which an adversarial example provably exists.

For a model ``f``, a sample ``x`` and a budget ``eps``:

1. take the model's features ``phi(z)`` (the input of its last linear layer);
2. draw ``boundary_points`` points on the surface of the eps-ball around ``x`` (L-inf: the vertices
   ``x +- eps``; L2: random directions of length eps; clipped to [0, 1]) and ``inner_points`` candidates
   inside it at radius ``inner_fraction * eps``;
3. fit a linear binary readout ``s(z) = w . phi(z) + b`` with ``s < 0`` on ``x`` and on every boundary point
   and ``s > 0`` on one inner candidate ``x_adv`` (logistic regression from the difference of means, with
   the threshold put halfway between ``x_adv`` and the highest-scoring negative);
4. the binarized classifier ``z -> [0, s(z)]`` classifies ``x`` as class 0 and ``x_adv`` as class 1, and
   ``||x_adv - x|| <= eps``: an adversarial example exists. An attack *passes* on this sample iff it finds
   one (any point of the ball with ``s > 0``).

A sample whose candidates cannot be separated from the negatives is reported as not applicable. The test
says nothing about the model's robustness; it says whether the attack can find an adversarial that is
known to exist, in the model's own feature geometry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Attack, eval_mode, model_device, perturbation_size

__all__ = ["BinarizedClassifier", "BinarizationResult", "binarize", "binarization_test", "readout_layer"]


def readout_layer(model: nn.Module) -> nn.Linear:
    """The model's last :class:`torch.nn.Linear` module (its input is the feature vector)."""
    linear = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linear:
        raise ValueError("the binarization test needs a model with a final nn.Linear readout (none found)")
    return linear[-1]


class BinarizedClassifier(nn.Module):
    """``z -> [0, w . phi(z) + b]``: the model's features with a new linear binary readout."""

    def __init__(self, model: nn.Module, weight: Tensor, bias: float) -> None:
        super().__init__()
        self.model, self.readout = model, readout_layer(model)
        self.register_buffer("weight", weight.detach().clone())
        self.bias = float(bias)

    def features(self, z: Tensor) -> Tensor:
        captured: list[Tensor] = []
        handle = self.readout.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
        try:
            self.model(z)
        finally:
            handle.remove()
        return captured[-1].flatten(1)

    def forward(self, z: Tensor) -> Tensor:
        score = self.features(z) @ self.weight + self.bias
        return torch.stack([torch.zeros_like(score), score], dim=1)


@dataclass(frozen=True)
class BinarizationResult:
    """Per sample: ``applicable`` (a separable readout was found), ``passed`` (the attack found an
    adversarial of the binarized classifier inside the ball). ``pass_rate`` is over applicable samples."""

    applicable: Tensor
    passed: Tensor

    @property
    def pass_rate(self) -> float:
        count = int(self.applicable.sum())
        return float(self.passed[self.applicable].float().mean()) if count else float("nan")

    def to_json(self) -> dict[str, object]:
        return {"samples": int(self.applicable.numel()), "applicable": int(self.applicable.sum()),
                "passed": int((self.passed & self.applicable).sum()), "pass_rate": self.pass_rate}


def _ball_points(x: Tensor, eps: float, norm: str, count: int, radius: float, surface: bool,
                 generator: torch.Generator) -> Tensor:
    shape = (count, *x.shape)
    if norm == "linf":
        if surface:
            u = torch.randint(0, 2, shape, generator=generator, device=x.device).to(x.dtype) * 2 - 1
        else:
            u = 2 * torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) - 1
    else:
        u = torch.randn(shape, generator=generator, device=x.device, dtype=x.dtype)
        u = u / perturbation_size(u, "l2").view(-1, *([1] * x.dim()))
    return (x + radius * u).clamp(0.0, 1.0)


def binarize(model: nn.Module, x: Tensor, eps: float, norm: str = "linf", *, boundary_points: int = 16,
             inner_points: int = 16, inner_fraction: float = 0.9, fit_steps: int = 200,
             seed: int = 0) -> tuple[BinarizedClassifier, Tensor] | None:
    """The binarized classifier of one sample ``x`` (no batch dimension) and its known adversarial
    ``x_adv`` (``||x_adv - x|| <= inner_fraction * eps``), or ``None`` when no inner candidate separates."""
    if not 0 < inner_fraction <= 1:
        raise ValueError(f"inner_fraction must be in (0, 1], got {inner_fraction}")
    device = model_device(model)
    x = x.detach().to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    boundary = _ball_points(x, eps, norm, boundary_points, eps, True, generator)
    inner = _ball_points(x, eps, norm, inner_points, inner_fraction * eps, False, generator)
    probe = BinarizedClassifier(model, torch.zeros(readout_layer(model).in_features, device=device), 0.0)
    with eval_mode(model), torch.no_grad():
        negatives = probe.features(torch.cat([x[None], boundary]))
        candidates = probe.features(inner)
    scale = negatives.std(dim=0).clamp_min(1e-6)
    center = negatives.mean(dim=0)
    for index in range(inner_points):
        weight = _fit(((negatives - center) / scale), ((candidates[index] - center) / scale), fit_steps)
        weight = weight / scale
        negative_scores, positive = negatives @ weight, candidates[index] @ weight
        if float(positive) > float(negative_scores.max()):
            bias = -0.5 * (float(positive) + float(negative_scores.max()))
            return BinarizedClassifier(model, weight, bias), inner[index]
    return None


def _fit(negatives: Tensor, positive: Tensor, steps: int) -> Tensor:
    """Class-balanced logistic regression of one positive against the negatives (no bias: centred data),
    from the difference of means; returns the weight."""
    weight = (positive - negatives.mean(dim=0)).clone().requires_grad_(True)
    bias = torch.zeros((), device=negatives.device, requires_grad=True)
    optimizer = torch.optim.Adam([weight, bias], lr=0.05)
    with torch.enable_grad():
        for _ in range(steps):
            loss = F.softplus(negatives @ weight + bias).mean() + F.softplus(-(positive @ weight + bias))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return weight.detach()


def binarization_test(model: nn.Module, x: Tensor, eps: float, run_attack: Callable[[nn.Module, Tensor,
                      Tensor], Tensor] | Attack, norm: str = "linf", *, seed: int = 0,
                      **options: int | float) -> BinarizationResult:
    """The binarization test of ``run_attack(binarized, x_i[None], zeros(1)) -> x_adv`` on every sample of
    ``x``; each result is verified here (``s(x_adv) > 0``, inside the ball and the box)."""
    device = model_device(model)
    applicable = torch.zeros(x.shape[0], dtype=torch.bool)
    passed = torch.zeros(x.shape[0], dtype=torch.bool)
    for i in range(x.shape[0]):
        built = binarize(model, x[i], eps, norm, seed=seed + i, **options)  # type: ignore[arg-type]
        if built is None:
            continue
        binarized, _ = built
        applicable[i] = True
        xi = x[i : i + 1].to(device)
        label = torch.zeros(1, dtype=torch.long, device=device)
        x_adv = run_attack(binarized, xi, label)
        with eval_mode(model), torch.no_grad():
            fooled = binarized(x_adv).argmax(1) == 1
        inside = perturbation_size(x_adv - xi, norm) <= eps * (1 + 1e-5) + 1e-7
        in_box = bool(x_adv.min() >= 0) and bool(x_adv.max() <= 1)
        passed[i] = bool(fooled & inside) and in_box
    return BinarizationResult(applicable, passed)
