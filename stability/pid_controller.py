"""The PID step-size controller (Söderlind 2003) in diffrax's parameterisation, and its presets.

With k = q + 1 (q the embedded order, so the local error estimate is O(h^k)) and r_n the error ratio of
step n (accepted when r_n ≤ 1), the next step is h_{n+1} = h_n · safety · r_n^{−(i+p+d)/k} ·
r_{n−1}^{(p+2d)/k} · r_{n−2}^{−d/k}, clipped to [min_factor, max_factor] (diffrax's formula, its defaults
p = 0, i = 1, d = 0: the I controller, scipy's and ``PIController(beta=0)``'s steps exactly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Error ratios remembered for the P and D terms are floored here, as ``PIController`` floors its own: an
# accepted step with a negligible error would otherwise shrink the next steps through r_{n−1}^{(p+2d)/k}.
MEMORY_FLOOR = 1e-4

# diffrax's suggested coefficients (pcoeff, icoeff, dcoeff), from its PIDController documentation.
PRESETS = {
    "I": (0.0, 1.0, 0.0),  # the default: smooth problems
    "PI-smooth": (0.4, 1.0, 0.0),  # smooth problems
    "PI-0.4-0.3": (0.4, 0.3, 0.0),  # moderately difficult problems, error estimates that vary unsmoothly
    "PI-0.3-0.3": (0.3, 0.3, 0.0),
    "PI-0.2-0.4": (0.2, 0.4, 0.0),
    "PI-insensitive": (0.1, 0.3, 0.0),  # rough problems (diffrax: SDEs)
}


@dataclass(frozen=True)
class PIDController:
    """PID control of the step size; see the module docstring for the formula. After a rejection the next
    accepted step may not grow, and a rejected step never grows (as ``PIController``); remembered ratios are
    those of accepted steps, floored at 1e-4. ``PIDController.preset(name)``: one of ``PRESETS``."""

    pcoeff: float = 0.0
    icoeff: float = 1.0
    dcoeff: float = 0.0
    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0

    def __post_init__(self) -> None:
        coefficients = (self.pcoeff, self.icoeff, self.dcoeff, self.safety, self.min_factor, self.max_factor)
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
                   for x in coefficients):
            raise ValueError(f"invalid controller settings (finite numbers needed): {self}")
        if not (0 < self.safety <= 1 and 0 < self.min_factor < 1 < self.max_factor):
            raise ValueError(f"invalid controller settings (0 < safety ≤ 1, 0 < min_factor < 1 < "
                             f"max_factor): {self}")
        if self.pcoeff + self.icoeff + self.dcoeff <= 0:
            raise ValueError(f"pcoeff + icoeff + dcoeff must be positive (the step must shrink as the error "
                             f"grows): {self}")

    @classmethod
    def preset(cls, name: str, **settings) -> PIDController:
        """The controller with diffrax's suggested coefficients ``PRESETS[name]`` (and ``settings``)."""
        if name not in PRESETS:
            raise ValueError(f"unknown PID preset {name!r}; available: {', '.join(PRESETS)}")
        p, i, d = PRESETS[name]
        return cls(pcoeff=p, icoeff=i, dcoeff=d, **settings)

    def _exponents(self, error_order: int) -> tuple[float, float, float]:
        k = error_order + 1
        return (-(self.icoeff + self.pcoeff + self.dcoeff) / k, (self.pcoeff + 2 * self.dcoeff) / k,
                -self.dcoeff / k)

    def initial_memory(self) -> tuple[float, float]:
        """(r_{n−1}, r_{n−2}) before the first step."""
        return 1.0, 1.0

    def remember(self, memory: tuple[float, float], ratio: float) -> tuple[float, float]:
        """The memory after an accepted step with error ratio ``ratio``."""
        return max(ratio, MEMORY_FLOOR), memory[0]

    def _raw(self, ratio: float, memory: tuple[float, float], error_order: int) -> float:
        e0, e1, e2 = self._exponents(error_order)
        factor = self.safety * ratio**e0
        if e1:
            factor *= memory[0] ** e1
        if e2:
            factor *= memory[1] ** e2
        return factor

    def accept_factor(self, ratio: float, memory: tuple[float, float], error_order: int,
                      after_reject: bool) -> float:
        factor = self.max_factor if ratio == 0.0 else min(self.max_factor,
                                                          max(self.min_factor, self._raw(ratio, memory,
                                                                                         error_order)))
        return min(factor, 1.0) if after_reject else factor

    def reject_factor(self, ratio: float, error_order: int,
                      memory: tuple[float, float] = (1.0, 1.0)) -> float:
        if not math.isfinite(ratio):
            return self.min_factor
        return min(1.0, max(self.min_factor, self._raw(ratio, memory, error_order)))

    # --- per-sample control: the same formulas on tensors [B] ------------------------------------------
    def initial_memory_tensor(self, like: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(like), torch.ones_like(like)

    def remember_where(self, accept: Tensor, memory: tuple[Tensor, Tensor], ratio: Tensor):
        return (torch.where(accept, ratio.clamp(min=MEMORY_FLOOR), memory[0]),
                torch.where(accept, memory[0], memory[1]))

    def factors(self, ratio: Tensor, memory: tuple[Tensor, Tensor], error_order: int, after_reject: Tensor):
        """``accept_factor`` where ratio ≤ 1 and ``reject_factor`` elsewhere, for per-sample ratios [B]."""
        e0, e1, e2 = self._exponents(error_order)
        raw = self.safety * ratio.pow(e0)
        if e1:
            raw = raw * memory[0].pow(e1)
        if e2:
            raw = raw * memory[1].pow(e2)
        grow = raw.clamp(self.min_factor, self.max_factor)
        grow = torch.where(ratio == 0, torch.full_like(grow, self.max_factor), grow)
        grow = torch.where(after_reject, grow.clamp(max=1.0), grow)
        shrink = raw.clamp(self.min_factor, 1.0)
        shrink = torch.where(torch.isfinite(ratio), shrink, torch.full_like(shrink, self.min_factor))
        return torch.where(ratio <= 1.0, grow, shrink)
