"""The front door: ``solve(func, y0, t, options=None, **keywords)`` and torchdiffeq-compatible ``odeint``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from stability.adjoint import solve_with_adjoint
from stability.checkpointing import solve_checkpoint
from stability.integrate import solve_backprop
from stability.options import SolverOptions, as_options, option_keywords
from stability.solution import PerSampleSolution, Solution

# The gradient strategies, each a function (func, y0, t, options) -> Solution around ``integrate``'s loop.
GRADIENT_STRATEGIES = {
    "backprop": solve_backprop,
    "checkpoint": solve_checkpoint,
    "adjoint": solve_with_adjoint,
}


@option_keywords
def solve(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor | Sequence[float],
    options: SolverOptions | None = None,
    **keywords,
) -> Solution:
    """Solve dy/dt = func(t, y), y(t[0]) = y0, and return the solution at every time in ``t`` with statistics.

    Settings come as one ``SolverOptions`` value, as torchdiffeq-style keywords (``method``, ``rtol``,
    ``atol``, ``step_size``, ``grid``, ``first_step``, ``max_step``, ``max_steps``, ``controller``, ``norm``,
    ``per_sample``, ``implicit``, ``gradient`` and its options), or both (keywords override ``options``).

    ``t`` is strictly increasing or strictly decreasing (at least 2 points). Adaptive methods step with the
    mixed error norm RMS(err / (atol + rtol·max(|y_n|, |y_{n+1}|))) ≤ 1 and reach output times by dense
    output, never by shortening steps; ``step_size`` (or an explicit ``grid``) selects fixed-step mode.
    Gradients flow to ``y0`` and to parameters of ``func`` by backpropagation through the steps; step-size
    decisions are made on detached values and add no gradient paths.

    ``gradient="checkpoint"``: the same gradient with O(√steps) stored graph (option ``checkpoint_every``);
    ``"adjoint"``: adjoint-ODE gradients with memory flat in the steps (options ``adjoint_rtol``,
    ``adjoint_atol``, ``adjoint_method``, ``adjoint_params``, ``adjoint_norm``; see ``stability.adjoint``).
    ``per_sample=True``: independent step control for each sample along dim 0 (func then receives t of shape
    [B]; ``stats`` becomes a list per sample; see ``stability.per_sample``), with any ``gradient``.
    ``implicit``: ``ImplicitOptions`` for ``method="backward_euler"``.
    """
    options = as_options(options, keywords)
    return GRADIENT_STRATEGIES[options.gradient](func, y0, t, options)


@option_keywords
def odeint(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor | Sequence[float],
    options: SolverOptions | None = None,
    **keywords,
) -> Tensor:
    """The solution at every time in ``t``, shape ``[len(t), *y0.shape]`` (see ``solve`` for the options)."""
    return solve(func, y0, t, options, **keywords).ys


@option_keywords
def solve_per_sample(
    func: Callable[[Tensor, Tensor], Tensor],
    y0: Tensor,
    t: Tensor | Sequence[float],
    options: SolverOptions | None = None,
    **keywords,
) -> PerSampleSolution:
    """Solve the B problems y0[b] (B = y0.shape[0]), each with its own adaptive steps; options as ``solve``.

    Sample b's solution and statistics equal those of ``solve(func, y0[b:b+1], t, ...)`` up to round-off.
    ``max_steps`` applies to each sample. Gradients (any ``gradient``) flow to y0 and func's parameters.
    """
    return solve(func, y0, t, as_options(options, keywords, per_sample=True))


def odeint_per_sample(
    func: Callable[[Tensor, Tensor], Tensor], y0: Tensor, t: Tensor | Sequence[float], **keywords
) -> Tensor:
    """``odeint`` with independent step control per sample (leading dimension); see ``solve_per_sample``."""
    return solve_per_sample(func, y0, t, **keywords).ys
