"""The one generic explicit Runge–Kutta step that every tableau runs through, and its dense output (so that
output times never shorten a step)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from stability.tableau import ButcherTableau

VectorField = Callable[[float, Tensor], Tensor]


class RKStep(NamedTuple):
    """Result of one explicit RK step: the new state, the embedded error estimate (or None), the stages."""

    y: Tensor
    error: Tensor | None
    stages: list[Tensor]


def linear_combination(y: Tensor | None, stages: Sequence[Tensor], weights, h) -> Tensor:
    """y + h Σ_j w_j k_j for sparse ``weights`` given as (j, w_j) pairs; ``y=None`` means 0.

    ``h`` (and the w_j) are numbers, or float64 tensors of shape [B] with one value per sample along dim 0
    (per-sample step control). Accumulates into one fresh buffer (``add_``): one allocation per combination,
    and the in-place adds are safe for autograd because addition saves no inputs for its backward.
    """
    if not weights or not (isinstance(h, Tensor) or isinstance(weights[0][1], Tensor)):
        return _combine_numbers(y, stages, weights, h)
    rest = iter(weights)  # per sample: y + k·(h w) row by row, one pass a term
    j, w = next(rest)
    c = column(h * w, stages[j])
    out = stages[j] * c if y is None else torch.addcmul(y, stages[j], c)
    for j, w in rest:
        out.addcmul_(stages[j], column(h * w, stages[j]))
    return out


def column(values: Tensor, like: Tensor) -> Tensor:
    """Per-sample scalars [B] (float64) as a column of ``like``'s dtype broadcasting against [B, ...]."""
    return values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


def rk_step(
    func: VectorField,
    t: float | Tensor,
    y: Tensor,
    h: float | Tensor,
    tableau: ButcherTableau,
    first_stage: Tensor | None = None,
) -> RKStep:
    """One step of the explicit RK method ``tableau`` from (t, y) with step h (signed); t and h are numbers,
    or tensors [B] of per-sample times and steps.

    ``first_stage`` is f(t, y) when already known (FSAL or a previous interpolation), saving one evaluation.
    For an FSAL tableau the last stage is f(t + h, y_{n+1}): the next step's ``first_stage``.
    """
    if not isinstance(h, Tensor):
        return _rk_step_numbers(func, t, y, h, tableau, first_stage)
    stages = [func(t, y) if first_stage is None else first_stage]
    stage_input = y
    for c, row in tableau.stage_plan:
        stage_input = linear_combination(y, stages, row, h)
        stages.append(func(t + c * h, stage_input))
    y_new = stage_input if tableau.fsal else linear_combination(y, stages, tableau.b_plan, h)
    if not tableau.adaptive:
        return RKStep(y_new, None, stages)
    with torch.no_grad():  # the error estimate only steers step control: no graph for it
        return RKStep(y_new, linear_combination(None, stages, tableau.error_plan, h), stages)


def _rk_step_numbers(func: VectorField, t: float, y: Tensor, h: float, tableau: ButcherTableau,
                     first_stage: Tensor | None) -> RKStep:
    """``rk_step`` for a number h (shared step control): the hot path of an eager step. The stage sums are
    written out here (``_combine_numbers``' operations, in its order) instead of one call per sum."""
    stages = [func(t, y) if first_stage is None else first_stage]
    stage_input = y
    for c, row in tableau.stage_plan:
        if row:
            j, w = row[0]
            stage_input = torch.add(y, stages[j], alpha=h * w)
            for j, w in row[1:]:
                stage_input.add_(stages[j], alpha=h * w)
        else:
            stage_input = y.clone()
        stages.append(func(t + c * h, stage_input))
    y_new = stage_input if tableau.fsal else _combine_numbers(y, stages, tableau.b_plan, h)
    if not tableau.adaptive:
        return RKStep(y_new, None, stages)
    if not torch.is_grad_enabled():
        return RKStep(y_new, _combine_numbers(None, stages, tableau.error_plan, h), stages)
    with torch.no_grad():  # the error estimate only steers step control: no graph for it
        return RKStep(y_new, _combine_numbers(None, stages, tableau.error_plan, h), stages)


def _combine_numbers(y: Tensor | None, stages: Sequence[Tensor], weights, h: float) -> Tensor:
    """``linear_combination`` for a number h and numbers w_j (shared step control), without the per-call type
    dispatch."""
    if not weights:
        return y.clone() if y is not None else torch.zeros_like(stages[0])
    (j, w), *rest = weights
    out = torch.add(y, stages[j], alpha=h * w) if y is not None else stages[j] * (h * w)
    for j, w in rest:
        out.add_(stages[j], alpha=h * w)
    return out


def interpolant(
    tableau: ButcherTableau, t_old, h, y_old: Tensor, y_new: Tensor, stages: Sequence[Tensor],
    derivative_at_end: Callable[[], Tensor],
) -> Callable:
    """y(t) on the step [t_old, t_old + h]; t_old, h and t are numbers, or per-sample tensors [B].

    The method's own continuous extension when it has one, y_n + h Σ_i k_i Σ_j P_ij θ^{j+1} (DOPRI5:
    Shampine's, local error O(h^5)); otherwise cubic Hermite from y and f at both ends (local error O(h^4)),
    f(t_{n+1}, y_{n+1}) from ``derivative_at_end()`` (lazily: the caller keeps it as the next first stage).
    """
    if tableau.dense is not None:

        def extension(t) -> Tensor:
            theta = (t - t_old) / h
            weights = []
            for i, row in enumerate(tableau.dense):
                if not any(row):
                    continue
                w, power = 0.0, theta
                for coefficient in row:
                    w = w + coefficient * power
                    power = power * theta
                weights.append((i, w))
            return linear_combination(y_old, stages, weights, h)

        return extension

    def hermite(t) -> Tensor:
        s = (t - t_old) / h
        h00, h10 = 2 * s**3 - 3 * s**2 + 1, s**3 - 2 * s**2 + s
        h01, h11 = -2 * s**3 + 3 * s**2, s**3 - s**2
        weights = [(0, h00), (1, h01), (2, h * h10), (3, h * h11)]
        return linear_combination(None, [y_old, y_new, stages[0], derivative_at_end()], weights, 1.0)

    return hermite
