"""Step-size control: the mixed error norm, the PI controller, and the automatic initial step."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


def error_ratio(error: Tensor, y_old: Tensor, y_new: Tensor, rtol: float, atol: float) -> Tensor:
    """RMS(err / (atol + rtol·max(|y_n|, |y_{n+1}|))): the step is acceptable when this is ≤ 1."""
    with torch.no_grad():
        scale = torch.maximum(y_old.abs(), y_new.abs()).mul_(rtol).add_(atol)
        return _rms(error / scale)


def _rms(x: Tensor) -> Tensor:
    return torch.linalg.vector_norm(x) / math.sqrt(max(x.numel(), 1))


@dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size controller (Gustafsson 1991; Hairer–Wanner's DOPRI5 defaults).

    With q the embedded order and r_n the error ratio, the step grows by
    safety · r_n^{−(1/(q+1) − 0.75β)} · r_{n−1}^{β}, clipped to [min_factor, max_factor]; β = 0 is the
    classical I-controller. After a rejection the next accepted step may not grow.
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta: float = 0.04

    def __post_init__(self) -> None:
        if not (0 < self.safety <= 1 and 0 < self.min_factor < 1 < self.max_factor and 0 <= self.beta < 0.2):
            raise ValueError(f"invalid controller settings: {self}")

    def accept_factor(
        self, ratio: float, previous_ratio: float, error_order: int, after_reject: bool
    ) -> float:
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        if ratio == 0.0:
            factor = self.max_factor
        else:
            factor = self.safety * ratio ** (-alpha) * previous_ratio**self.beta
            factor = min(self.max_factor, max(self.min_factor, factor))
        return min(factor, 1.0) if after_reject else factor

    def reject_factor(self, ratio: float, error_order: int) -> float:
        if not math.isfinite(ratio):
            return self.min_factor
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        return min(1.0, max(self.min_factor, self.safety * ratio ** (-alpha)))


def initial_step(
    func: Callable[[float, Tensor], Tensor],
    t0: float,
    y0: Tensor,
    f0: Tensor,
    direction: float,
    order: int,
    rtol: float,
    atol: float,
    interval: float,
) -> float:
    """Unsigned first step by Hairer–Nørsett–Wanner I, II.4 (as scipy's ``select_initial_step``).

    h0 = 0.01·‖y0‖/‖f0‖, one explicit Euler trial step gives ‖f'‖ ≈ ‖f(t0+h0, y1) − f0‖/h0, and
    h = min(100·h0, (0.01 / max(‖f0‖, ‖f'‖))^{1/(order+1)}, |t1 − t0|). Costs one evaluation of f.
    """
    with torch.no_grad():
        scale = y0.abs().mul(rtol).add_(atol)
        d0, d1 = torch.stack([_rms(y0 / scale), _rms(f0 / scale)]).tolist()
        h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
        h0 = min(h0, interval)
        y1 = torch.add(y0, f0, alpha=direction * h0)
        f1 = func(t0 + direction * h0, y1)
        d2 = _rms((f1 - f0) / scale).item() / h0
        if not math.isfinite(d2):
            h1 = h0 * 1e-3
        elif d1 <= 1e-15 and d2 <= 1e-15:
            h1 = max(1e-6, h0 * 1e-3)
        else:
            h1 = (0.01 / max(d1, d2)) ** (1.0 / (order + 1))
    return min(100 * h0, h1, interval)
