"""Input checks shared by every entry point: the state, the tolerances, the output of ``func``, the time grid,
and the errors that name where a solve stopped."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from stability.errors import (
    MaxStepsExceededError,
    NonFiniteValueError,
    ODEInputError,
    SolverError,
    StepSizeUnderflowError,
)

# Relative resolution below which an adaptive rtol is refused for float16 / bfloat16 states.
LOW_PRECISION = {torch.float16: 1e-2, torch.bfloat16: 1e-1}


def time_dtype(y: Tensor, given: torch.dtype | None = None) -> torch.dtype:
    """The dtype in which ``func`` receives t: ``given`` (``SolverOptions.time_dtype``) when set, else y's for
    float32/float64 states and float32 below that."""
    if given is not None:
        return given
    return y.dtype if y.dtype in (torch.float32, torch.float64) else torch.float32


def describe_time(where) -> str:
    """How an error names the time of an evaluation: ``where`` is a float (one shared time), None (per-sample
    times) or a phrase already written (e.g. the compiled step, where t is traced)."""
    if isinstance(where, str):
        return where
    return "t=[per-sample times]" if where is None else f"t={where}"


def all_finite(x: Tensor) -> bool:
    """Whether every entry of the (non-empty) x is finite: max |x| propagates NaN; two passes, not five."""
    return math.isfinite(x.detach().abs().max())


def check_state(y0: Tensor) -> None:
    if not isinstance(y0, Tensor):
        raise ODEInputError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    if y0.is_meta:
        raise ODEInputError("y0 is on the meta device (a shape without values): a solve needs its values; "
                            "create it on 'cpu' or 'cuda'")
    if not y0.is_floating_point():
        raise ODEInputError(f"y0 must have a floating dtype, got {y0.dtype}")
    if y0.numel() == 0:
        raise ODEInputError("y0 is empty")
    if not all_finite(y0):
        raise ODEInputError("y0 contains NaN or infinite values")


def tolerance_value(name: str, value, per_sample: bool = False) -> float | Tensor:
    """A tolerance as the solver uses it: a float (also from a 0-d tensor), or with ``per_sample`` a 1-D
    float64 tensor [B] of per-sample values; anything else (a bool, a string, a tensor of another shape, a
    negative, NaN or infinite value) is an ``ODEInputError`` naming what is wrong."""
    if isinstance(value, Tensor):
        if value.is_meta or not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise ODEInputError(f"{name} must be a number or a floating tensor with values, got a tensor of "
                                f"dtype {value.dtype} on {value.device}")
        if value.dim() == 0:
            value = float(value)
        elif value.dim() == 1 and per_sample:
            value = value.detach().to(torch.float64)
            if not bool(torch.isfinite(value).all()) or bool((value < 0).any()):
                raise ODEInputError(f"{name} must hold finite non-negative values, got {value.tolist()}")
            return value
        else:
            shape = tuple(value.shape)
            raise ODEInputError(f"{name} must be a number, or a 1-D tensor of one value per sample with "
                                f"per_sample=True; got a tensor of shape {shape}"
                                + ("" if per_sample else " without per_sample"))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ODEInputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ODEInputError(f"{name} must be a finite non-negative number, got {value!r}")
    return value


def check_tolerances(rtol, atol, per_sample: bool = False) -> tuple[float | Tensor, float | Tensor]:
    """rtol and atol as ``tolerance_value`` returns them, refused where both are zero."""
    rtol, atol = tolerance_value("rtol", rtol, per_sample), tolerance_value("atol", atol, per_sample)
    if isinstance(rtol, Tensor) and isinstance(atol, Tensor) and rtol.shape != atol.shape:
        raise ODEInputError(f"per-sample rtol and atol must have the same length, got {rtol.numel()} and "
                            f"{atol.numel()}")
    if isinstance(rtol, Tensor) or isinstance(atol, Tensor):
        both_zero = bool(torch.as_tensor((rtol == 0) & (atol == 0)).any())
    else:
        both_zero = rtol == 0 and atol == 0
    if both_zero:
        raise ODEInputError("rtol and atol cannot both be zero")
    return rtol, atol


def check_output(f, y: Tensor, t, version: int | None = None) -> None:
    """Raise unless ``f`` is a tensor of y's shape and dtype and func left y as it was (``version``: y's
    version counter before the call); called on every evaluation that looks wrong."""
    where = describe_time(t)
    if version is not None and y._version != version:
        raise ODEInputError(
            f"func modified its input y in place at {where}: the solver keeps y and the stage inputs, so an "
            f"in-place operation on y changes the solution silently; use out-of-place operations "
            f"(y.clamp(...), not y.clamp_(...)). Your y0 is unchanged: the solver works on its own copy")
    if not isinstance(f, Tensor):
        raise ODEInputError(f"func must return a torch.Tensor, got {type(f).__name__}")
    if f.shape != y.shape:
        raise ODEInputError(
            f"func returned shape {tuple(f.shape)} at {where}, expected {tuple(y.shape)} like y0"
        )
    if f.dtype != y.dtype:
        raise ODEInputError(f"func returned dtype {f.dtype} at {where}, expected {y.dtype} like y0")


def reused_output_error(t) -> ODEInputError:
    """func wrote into and returned the memory of its previous output, which the solver still holds."""
    where = describe_time(t)
    return ODEInputError(
        f"func returned, at {where}, the memory it returned at its previous evaluation after writing to it "
        f"(a reused output buffer, e.g. torch.neg(y, out=buf)): the solver keeps every stage, so overwriting "
        f"one changes the solution silently; return a new tensor at each call")


def evaluate_checked(func, t, y: Tensor, where, last: tuple[Tensor | None, int]):
    """``(func(t, y), record)`` with the checks of every evaluation: func left y unchanged (its version
    counter), returned a tensor of y's shape and dtype, and did not overwrite and return its previous output
    ``last`` = (that tensor, its version when returned); ``record`` is the new ``last``. ``where`` names t in
    errors (a float, or None for per-sample times)."""
    version = y._version
    f = func(t, y)
    if y._version != version or not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:
        check_output(f, y, where, version)
    previous, previous_version = last
    if previous is not None and f.data_ptr() == previous.data_ptr() and previous._version != previous_version:
        raise reused_output_error(where)
    return f, (f, f._version)


def check_norm_value(ratio, error: Tensor, y_new: Tensor, t, sample: str = "") -> None:
    """A non-finite error ratio from the caller's ``norm`` for a finite error estimate and a finite step is
    the norm's fault, not func's: an ``ODEInputError`` naming it (instead of rejections blamed on func)."""
    if all_finite(error) and all_finite(y_new):
        raise ODEInputError(f"{sample}norm returned {ratio} at {describe_time(t)} for a finite error "
                            f"estimate and a finite step: the error norm (options.norm), not func, produced "
                            f"it; it must return a finite non-negative ratio")


def check_derivative(f: Tensor, y: Tensor, t: float) -> None:
    check_output(f, y, t)
    if not all_finite(f):
        raise NonFiniteValueError(
            f"func returned non-finite values at t={t} (the first evaluation, at the start)", t=t)


def check_first_step(first_step: float | None, span: float) -> float | None:
    if first_step is not None and not first_step <= span:
        raise ODEInputError(f"first_step must lie in (0, {span}], got {first_step}")
    return None if first_step is None else float(first_step)


def check_low_precision(dtype: torch.dtype, rtol: float) -> None:
    """Adaptive control in float16/bfloat16 needs rtol above the state's resolution (the error norm and the
    controller themselves run in float32)."""
    floor = LOW_PRECISION.get(dtype)
    if isinstance(rtol, Tensor):
        rtol = float(rtol.min())
    if floor is not None and rtol < floor:
        raise ODEInputError(
            f"rtol={rtol:g} is below what a {dtype} state resolves (eps = {torch.finfo(dtype).eps:.2g}): "
            f"use rtol >= {floor:g} for adaptive steps in {dtype}, fixed steps (step_size=...), or a "
            f"float32 state"
        )


def non_finite_step(t: float, h: float, stages, c) -> NonFiniteValueError:
    """The error for a fixed step whose result is non-finite, naming the first non-finite stage."""
    bad = next((i for i, k in enumerate(stages) if not all_finite(k)), None)
    if bad is None:
        what = f"the solution became non-finite in the step from t={t:.6g} with h={h:.3g}: the scheme blew up"
    else:
        what = (f"func returned non-finite values at t={t + c[bad] * h:.6g} (stage {bad + 1} of the step "
                f"from t={t:.6g} with h={h:.3g}): the solution blew up or func is undefined there")
    return NonFiniteValueError(f"{what}; a smaller step size may help", t=t, h=h)


def underflow_error(t: float, h: float, direction: float, nonfinite: bool, sample: str = "") -> SolverError:
    """The step shrank below the resolution of t: behind non-finite values of func, or a singularity."""
    if nonfinite:
        message = (f"func returned non-finite values at t={t + direction * h:.6g}: the step shrank to "
                   f"h={h:.3g} at t={t!r} without getting past them")
        return NonFiniteValueError(sample + message, t=t, h=h)
    message = (f"step size underflow: h={h:.3g} at t={t!r} is below the resolution of t (the problem is "
               f"probably stiff or singular there)")
    return StepSizeUnderflowError(sample + message, t=t, h=h)


def min_step_error(min_step: float, t: float, h: float, sample: str = "") -> StepSizeUnderflowError:
    """The controller proposed a step below ``min_step`` (without ``force_min_step``)."""
    return StepSizeUnderflowError(
        f"{sample}the step size fell to h={h:.3g} at t={t!r}, below min_step={min_step:g} (the problem is "
        f"probably stiff or singular there); lower min_step, or force_min_step=True to step on at min_step "
        f"without error control", t=t, h=h)


def nonfinite_rejections_error(t: float, h: float, sample: str = "") -> NonFiniteValueError:
    message = f"{sample}func returned non-finite values at t={t:.6g} even with the step shrunk to h={h:.3g}"
    return NonFiniteValueError(message, t=t, h=h)


def max_steps_error(max_steps: int, t0: float, t_bound: float, t: float, h: float, stiffness: float | None,
                    sample: str = "") -> MaxStepsExceededError:
    """``MaxStepsExceededError`` naming how far the solve got and, when the step size collapsed relative to
    the span while sitting at the stability limit (h·|λ| ≳ 1), that the problem looks stiff."""
    span = abs(t_bound - t0)
    message = (f"{sample}max_steps={max_steps} exceeded at t={t:.6g} ({100 * (abs(t - t0) / span):.1f}% of "
               f"[{t0:g}, {t_bound:g}]) with step size h={h:.3g}")
    stiff = h < 1e-3 * span and stiffness is not None and stiffness >= 1.0
    if stiff:
        message += (f"; the step size collapsed to {h / span:.2g} of the span with h·|∂f/∂y| ≈ "
                    f"{stiffness:.2g} (steps limited by stability, not accuracy): the problem looks stiff — "
                    f"method='backward_euler' with a step_size solves stiff problems")
    error = MaxStepsExceededError(message, t=t, h=h)
    error.stiff_suspected = stiff  # Status.STIFF when throw=False
    return error


def as_float_list(values: Tensor | Sequence[float], name: str) -> list[float]:
    if isinstance(values, Tensor):
        if values.is_meta:
            raise ODEInputError(f"{name} is on the meta device (a shape without values): pass its values")
        if values.dim() != 1:
            raise ODEInputError(f"{name} must be one-dimensional, got shape {tuple(values.shape)}")
        return values.detach().double().cpu().tolist()
    try:
        return [float(x) for x in values]
    except (TypeError, ValueError):
        raise ODEInputError(f"{name} must be a 1-D tensor or a sequence of numbers") from None


def check_times(t: Tensor | Sequence[float]) -> list[float]:
    if isinstance(t, Tensor) and t.requires_grad and torch.is_grad_enabled():
        raise ODEInputError("t requires grad, but solutions are not differentiated with respect to the "
                            "output times (t.grad would stay None): pass t.detach()")
    times = as_float_list(t, "t")
    if len(times) < 2:
        raise ODEInputError(f"t needs at least 2 points (start and end), got {len(times)}")
    if not all(math.isfinite(x) for x in times):
        raise ODEInputError("t contains NaN or infinite values")
    steps = [b - a for a, b in zip(times, times[1:])]
    if not (all(s > 0 for s in steps) or all(s < 0 for s in steps)):
        raise ODEInputError("t must be strictly increasing or strictly decreasing")
    return times
