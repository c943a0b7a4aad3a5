"""Step-size control: the mixed error norm, the PI controller, and the automatic initial step."""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from stability.checks import LOW_PRECISION
from stability.runge_kutta import column, linear_combination
from stability.tableau import ButcherTableau

# Consecutive rejections with a non-finite error estimate (each shrinks h by min_factor) before giving up.
MAX_NONFINITE_REJECTIONS = 12
# A proposed step ending within this fraction of h before the end of the interval is stretched to reach it,
# instead of leaving a sliver step (Hairer's DOPRI5 uses 1%; the controller's safety factor 0.9 covers 10%:
# the stretched step's error is still controlled, and on the NFE suite it is accepted with the same error).
STRETCH = 0.1
_FLOAT32 = struct.Struct("f")


def error_ratio(error: Tensor, y_old: Tensor, y_new: Tensor, rtol: float, atol: float,
                per_sample: bool = False) -> float | Tensor:
    """RMS(err / (atol + rtol·max(|y_n|, |y_{n+1}|))): the step is acceptable when this is ≤ 1. A number, or
    with ``per_sample`` one float64 ratio per sample along dim 0 (shape [B]). float16/bfloat16 states are
    measured in float32 (atol would underflow and the RMS overflow in them)."""
    if error.requires_grad or y_new.requires_grad:
        error, y_old, y_new = error.detach(), y_old.detach(), y_new.detach()
    if error.dtype in LOW_PRECISION:
        error, y_old, y_new = error.float(), y_old.float(), y_new.float()
    if isinstance(rtol, Tensor) or isinstance(atol, Tensor):  # per-sample tolerances [B]
        return rms(error / _scale(y_old, y_new, rtol, atol), True).double()
    scale = torch.maximum(y_old.abs(), y_new.abs())
    if rtol > 0:  # RMS(err / (atol + rtol·m)) = RMS(err / (atol/rtol + m)) / rtol: one memory pass fewer
        scaled, factor = error / scale.add_(atol / rtol), 1.0 / rtol
    else:
        scaled, factor = error / scale.mul_(rtol).add_(atol), 1.0
    if per_sample:
        return rms(scaled, True, factor).double()
    return _times(torch.linalg.vector_norm(scaled), factor / math.sqrt(max(scaled.numel(), 1)))


def max_error_ratio(error: Tensor, y_old: Tensor, y_new: Tensor, rtol: float | Tensor, atol: float | Tensor,
                    per_sample: bool = False) -> float | Tensor:
    """max |err| / (atol + rtol·max(|y_n|, |y_{n+1}|)) (``norm="max"``): every component within tolerance. A
    number, or with ``per_sample`` one float64 ratio per sample along dim 0."""
    error, y_old, y_new = (x.detach().float() if x.dtype in LOW_PRECISION else x.detach()
                           for x in (error, y_old, y_new))
    scaled = (error / _scale(y_old, y_new, rtol, atol)).abs()
    if per_sample:
        return scaled.reshape(scaled.shape[0], -1).amax(dim=1).double()
    return float(scaled.max())


def _scale(y_old: Tensor, y_new: Tensor, rtol: float | Tensor, atol: float | Tensor) -> Tensor:
    """atol + rtol·max(|y_n|, |y_{n+1}|), with per-sample tolerances [B] applied row by row."""
    if isinstance(rtol, Tensor):
        rtol = column(rtol, y_new)
    if isinstance(atol, Tensor):
        atol = column(atol, y_new)
    return torch.maximum(y_old.abs(), y_new.abs()) * rtol + atol


class SteppedErrorRatio:
    """``error_ratio`` for the steps of one shared solve, bit for bit, with |y_{n+1}| kept for the next call:
    after an accepted step y_n is that y_{n+1}, so the step costs one tensor operation fewer. Adding
    atol/rtol as alpha·1 with a kept 0-d one, not as a Python number, rounds the same (alpha·1 is exact) and
    spares torch wrapping the number in a tensor. Tolerance tensors, rtol = 0 and float16/bfloat16 states go
    to ``error_ratio`` itself."""

    def __init__(self) -> None:
        self._kept: tuple[Tensor, int, Tensor] | None = None  # the last y_{n+1}, its version, |y_{n+1}|
        self._one: Tensor | None = None

    def __call__(self, error: Tensor, y_old: Tensor, y_new: Tensor, rtol: float, atol: float) -> float:
        if (isinstance(rtol, Tensor) or isinstance(atol, Tensor) or not rtol > 0
                or error.dtype in LOW_PRECISION):
            return error_ratio(error, y_old, y_new, rtol, atol)
        kept, key = self._kept, y_new
        if error.requires_grad or y_new.requires_grad:
            error, y_new = error.detach(), y_new.detach()
        if kept is not None and kept[0] is y_old and kept[1] == y_old._version:
            old_abs = kept[2]
        else:
            old_abs = (y_old.detach() if y_old.requires_grad else y_old).abs()
        new_abs = y_new.abs()
        self._kept = (key, key._version, new_abs)
        # error_ratio's operations; m + atol/rtol as m + (atol/rtol)·1: a scalar operand would cost a tensor
        one = self._one
        if one is None or one.dtype != new_abs.dtype or one.device != new_abs.device:
            one = self._one = torch.ones((), dtype=new_abs.dtype, device=new_abs.device)
        scaled = error / torch.maximum(old_abs, new_abs).add_(one, alpha=atol / rtol)
        return _times(torch.linalg.vector_norm(scaled), (1.0 / rtol) / math.sqrt(max(scaled.numel(), 1)))


NAMED_NORMS = ("rms", "max")


def error_norm(norm, per_sample: bool = False) -> Callable:
    """The error norm ``norm`` names (``SolverOptions.norm``): None or "rms" the mixed RMS ``error_ratio``
    (for a shared solve a ``SteppedErrorRatio`` of its own), "max" ``max_error_ratio``, or the caller's
    function itself."""
    if norm is None or norm == "rms":
        return functools.partial(error_ratio, per_sample=True) if per_sample else SteppedErrorRatio()
    if norm == "max":
        return functools.partial(max_error_ratio, per_sample=per_sample)
    return norm


def _times(norm: Tensor, factor: float) -> float:
    """float(norm * factor) as torch computes it, without a tensor operation: in float64, or in float32,
    where a product of two float32 numbers is exact in float64 and rounding it to float32 gives torch's."""
    if norm.dtype == torch.float64:
        return norm.item() * factor
    try:
        return _float32(norm.item() * _float32(factor))
    except OverflowError:
        return math.inf


def _float32(x: float) -> float:
    return _FLOAT32.unpack(_FLOAT32.pack(x))[0]


def rms(x: Tensor, per_sample: bool = False, factor: float = 1.0) -> Tensor:
    """Root mean square of x (times ``factor``), or of each row x[b] (shape [B]) when ``per_sample``."""
    if per_sample:
        x = x.reshape(x.shape[0], -1)
        return torch.linalg.vector_norm(x, dim=1) * (factor / math.sqrt(max(x.shape[1], 1)))
    return torch.linalg.vector_norm(x) * (factor / math.sqrt(max(x.numel(), 1)))


@dataclass(frozen=True)
class PIController:
    """Proportional–integral step-size controller (Gustafsson 1991; Hairer–Wanner's DOPRI5 defaults).

    With q the embedded order and r_n the error ratio, the step grows by
    safety · r_n^{−(1/(q+1) − 0.75β)} · r_{n−1}^{β}, clipped to [min_factor, max_factor]; after a rejection
    the next accepted step may not grow. β = 0 (the I-controller, scipy's) is the default: on the NFE suite
    β = 0.04 cost up to +22% evaluations and up to 10× the error (README).
    """

    safety: float = 0.9
    min_factor: float = 0.2
    max_factor: float = 10.0
    beta: float = 0.0

    def __post_init__(self) -> None:
        if not (0 < self.safety <= 1 and 0 < self.min_factor < 1 < self.max_factor and 0 <= self.beta < 0.2):
            raise ValueError(f"invalid controller settings: {self}")

    def accept_factor(self, ratio: float, previous_ratio: float, error_order: int, after_reject: bool):
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        if ratio == 0.0:
            factor = self.max_factor
        else:
            factor = self.safety * ratio ** (-alpha) * previous_ratio**self.beta
            factor = min(self.max_factor, max(self.min_factor, factor))
        return min(factor, 1.0) if after_reject else factor

    def initial_memory(self) -> float:
        """r_{n−1} before the first step (the controllers' protocol: ``PIDController`` remembers two)."""
        return 1.0

    def remember(self, previous_ratio: float, ratio: float) -> float:
        """The memory after an accepted step with error ratio ``ratio`` (floored at 1e-4)."""
        return max(ratio, 1e-4)

    def initial_memory_tensor(self, like: Tensor) -> Tensor:
        return torch.ones_like(like)

    def remember_where(self, accept: Tensor, previous_ratio: Tensor, ratio: Tensor) -> Tensor:
        """``remember`` for per-sample ratios [B], where ``accept``."""
        return torch.where(accept, ratio.clamp(min=1e-4), previous_ratio)

    def reject_factor(self, ratio: float, error_order: int, previous_ratio: float | None = None) -> float:
        if not math.isfinite(ratio):
            return self.min_factor
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        return min(1.0, max(self.min_factor, self.safety * ratio ** (-alpha)))

    def factors(self, ratio: Tensor, previous_ratio: Tensor, error_order: int, after_reject: Tensor):
        """``accept_factor`` where ratio ≤ 1 and ``reject_factor`` elsewhere, for tensors of per-sample
        ratios (the same formulas as the scalar methods, which the shared loop calls to avoid tensor ops)."""
        alpha = 1.0 / (error_order + 1) - 0.75 * self.beta
        proposed = self.safety * ratio.pow(-alpha)
        grow = (proposed * previous_ratio.pow(self.beta)).clamp(self.min_factor, self.max_factor)
        grow = torch.where(ratio == 0, torch.full_like(grow, self.max_factor), grow)
        grow = torch.where(after_reject, grow.clamp(max=1.0), grow)
        shrink = proposed.clamp(self.min_factor, 1.0)
        shrink = torch.where(torch.isfinite(ratio), shrink, torch.full_like(shrink, self.min_factor))
        return torch.where(ratio <= 1.0, grow, shrink)


def initial_step(func: Callable[[float | Tensor, Tensor], Tensor], t0: float, y0: Tensor, f0: Tensor,
                 direction: float, order: int, rtol: float, atol: float, interval: float,
                 per_sample: bool = False) -> float | Tensor:
    """Unsigned first step by Hairer–Nørsett–Wanner I, II.4 (as scipy's ``select_initial_step``).

    h0 = 0.01·‖y0‖/‖f0‖, one explicit Euler trial step gives ‖f'‖ ≈ ‖f(t0+h0, y1) − f0‖/h0, and
    h = min(100·h0, (0.01 / max(‖f0‖, ‖f'‖))^{1/(order+1)}, |t1 − t0|). Costs one evaluation of f.
    ``per_sample``: one first step per sample along dim 0 (a float64 tensor [B]; func then receives t [B]).
    """
    dtype = y0.dtype
    with torch.no_grad():
        if dtype in LOW_PRECISION:  # the norms in float32; the probe step in the state's dtype
            y0, f0 = y0.float(), f0.float()
            probe = func
            func = lambda t, y: probe(t, y.to(dtype)).float()  # noqa: E731
        if isinstance(rtol, Tensor) or isinstance(atol, Tensor):  # per-sample tolerances [B]
            scale = _scale(y0, y0, rtol, atol)
        else:
            scale = y0.abs().mul(rtol).add_(atol)
        if not per_sample:
            return _shared_initial_step(func, t0, y0, f0, scale, direction, order, interval)
        d0 = rms(y0 / scale, per_sample).double()
        d1 = rms(f0 / scale, per_sample).double()
        small = (d0 < 1e-5) | (d1 < 1e-5)
        h0 = torch.where(small, torch.full_like(d0, 1e-6), 0.01 * d0 / torch.where(small, 1.0, d1))
        h0 = h0.clamp(max=interval)
        step = direction * h0
        f1 = func(t0 + step, y0 + column(step, y0) * f0)
        d2 = rms((f1 - f0) / scale, per_sample).double() / h0
        h1 = torch.where((d1 <= 1e-15) & (d2 <= 1e-15), torch.clamp(h0 * 1e-3, min=1e-6),
                         (0.01 / torch.maximum(d1, d2).clamp(min=1e-300)) ** (1.0 / (order + 1)))
        h1 = torch.where(~torch.isfinite(d2), h0 * 1e-3, h1)
        return torch.minimum(torch.minimum(100 * h0, h1), torch.full_like(h0, interval))


def _shared_initial_step(func, t0: float, y0: Tensor, f0: Tensor, scale: Tensor, direction: float,
                         order: int, interval: float) -> float:
    """``initial_step``'s formula for one shared step in Python floats: the float64 operations of the
    per-sample tensors, in the same order and with the same NaN results (bit for bit), without a tensor
    operation each. As torch computes them: ``rms`` rounds to the norm's dtype (``_times``), ``0.01 / x``
    is the reciprocal times 0.01 (``Tensor.__rtruediv__``), and the power runs in torch (its ``pow`` with
    exponent 1/2 is ``sqrt``, which may round unlike Python's)."""
    d0, d1 = _rms(y0 / scale), _rms(f0 / scale)
    h0 = _clamp(1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1, high=interval)
    step = direction * h0
    f1 = func(t0 + step, torch.add(y0, f0, alpha=step))
    d2 = _rms((f1 - f0) / scale) / h0
    if d1 <= 1e-15 and d2 <= 1e-15:
        h1 = _clamp(h0 * 1e-3, low=1e-6)
    else:
        base = (1.0 / _clamp(_maximum(d1, d2), low=1e-300)) * 0.01  # torch's 0.01 / x: reciprocal, then times
        h1 = float(torch.tensor(base, dtype=torch.float64) ** (1.0 / (order + 1)))
    if not math.isfinite(d2):
        h1 = h0 * 1e-3
    return _minimum(_minimum(100 * h0, h1), interval)


def _rms(x: Tensor) -> float:
    """float(rms(x)) without the tensor product: ``_times`` rounds as torch's would."""
    return _times(torch.linalg.vector_norm(x), 1.0 / math.sqrt(max(x.numel(), 1)))


def _clamp(x: float, low: float = -math.inf, high: float = math.inf) -> float:
    """``Tensor.clamp(min=low, max=high)`` of a number: a NaN x is returned as it is (its sign bit too)."""
    return x if math.isnan(x) else min(max(x, low), high)


def _minimum(a: float, b: float) -> float:
    """``torch.minimum`` of two numbers: a NaN operand gives the canonical NaN (Python's ``min`` may not)."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def _maximum(a: float, b: float) -> float:
    """``torch.maximum`` of two numbers: a NaN operand gives the canonical NaN."""
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def stiffness(y: Tensor | None, stages: Sequence[Tensor] | None, tableau: ButcherTableau, h: float):
    """h·‖k_j − k_i‖/‖Y_j − Y_i‖ for two stages of the step (y, h) at the same time (DOPRI5's 6th and 7th;
    otherwise the first and last): h·|λ| for the dominant eigenvalue λ of ∂f/∂y (Hairer–Wanner II.10's
    stiffness test). Near the stability boundary (≈ 3.3 for DOPRI5) stability, not accuracy, limits h."""
    if stages is None or y is None or len(stages) < 2 or not isinstance(tableau, ButcherTableau):
        return None  # no step yet, or a stiff method (no stiffness hint to give)
    j = len(stages) - 1
    i = j - 1 if tableau.c[j - 1] == tableau.c[j] else 0
    with torch.no_grad():
        inputs = [linear_combination(y, stages, tableau.stage_plan[k - 1][1], h) if k else y for k in (i, j)]
        dy = float(torch.linalg.vector_norm((inputs[1] - inputs[0]).float()))
        df = float(torch.linalg.vector_norm((stages[j] - stages[i]).float()))
    return abs(h) * df / dy if dy > 0 and math.isfinite(df) else None
