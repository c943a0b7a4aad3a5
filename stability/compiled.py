"""The opt-in compiled step (``compile=True``): one explicit Runge–Kutta step — its stage evaluations with
``func`` traced in, stage sums, error estimate and error ratio — as one ``torch.compile`` graph.

Rounds differently from the eager step (fused kernels, t + c·h and the stage weights applied in one pass), so
results agree with ``compile=False`` to rounding, not bitwise, and the step sequence may differ: where the
error estimate is itself at the rounding level (float32 at rtol ≈ 1e-6) the two error ratios of one step can
differ by a factor of a few, enough to flip an accept/reject decision (``bench/compile_rounding.py``).
Compiled once per (func, method, rtol, atol)
and kept while that func object lives (pass the same module or function: a fresh lambda or bound method per
solve compiles again); torch recompiles per shape, dtype and grad mode, and a Python side effect in func
(e.g. an evaluation counter on the module) recompiles at every call until torch's recompile limit, after
which the step runs eagerly (slower, the same result) and a warning says so.
"""

from __future__ import annotations

import types
import warnings
import weakref
from collections.abc import Callable

import torch
from torch import Tensor

from stability import checks
from stability.checks import LOW_PRECISION, check_output
from stability.runge_kutta import RKStep
from stability.tableau import ButcherTableau

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # func -> {(method, rtol, atol): step}


def compiled_step(func: Callable, tableau: ButcherTableau, rtol: float, atol: float,
                  time_dtype: torch.dtype | None = None) -> Callable:
    """``step(t_h, y, first_stage) -> (RKStep, ratio)``, t_h = tensor([t, h]) in float64; ratio: the mixed
    RMS error ratio as a 0-d tensor (None for fixed-step tableaux)."""
    try:
        steps = _CACHE.setdefault(func, {})
    except TypeError:  # func cannot be weakly referenced: compile for this solve only
        steps = {}
    key = (tableau.name, rtol, atol, time_dtype)
    if key not in steps:
        steps[key] = _compile(func, tableau, rtol, atol, time_dtype)
    return steps[key]


def _compile(func: Callable, tableau: ButcherTableau, rtol: float, atol: float,
             time_dtype: torch.dtype | None) -> Callable:
    stage_plan, b_plan, error_plan = tableau.stage_plan, tableau.b_plan, tableau.error_plan
    func = _weak(func)  # the cache's value must not keep its key alive

    def combination(y: Tensor | None, stages: list[Tensor], weights, h: Tensor) -> Tensor:
        total = sum(stages[j] * w for j, w in weights) * h
        return total if y is None else y + total

    def evaluate(t: Tensor, y: Tensor) -> Tensor:
        f = func()(t.to(checks.time_dtype(y, time_dtype)), y)
        if not isinstance(f, Tensor) or f.shape != y.shape or f.dtype != y.dtype:  # decided while tracing
            check_output(f, y, "a stage of the compiled step (compile=True: t is traced, not known)")
        return f

    def step(t_h: Tensor, y: Tensor, first_stage: Tensor | None):
        t, h = t_h[0], t_h[1]
        hy = h.to(y.dtype)
        stages = [evaluate(t, y) if first_stage is None else first_stage]
        stage_input = y
        for c, row in stage_plan:
            stage_input = combination(y, stages, row, hy)
            stages.append(evaluate(t + c * h, stage_input))
        y_new = stage_input if tableau.fsal else combination(y, stages, b_plan, hy)
        if not tableau.adaptive:
            return RKStep(y_new, None, stages), None
        with torch.no_grad():
            error = combination(None, stages, error_plan, hy)
            low = y.dtype in LOW_PRECISION  # measured in float32, as the eager error_ratio does
            e, a, b = (x.float() if low else x for x in (error, y, y_new))
            scale = torch.maximum(a.abs(), b.abs()) * rtol + atol
            ratio = torch.linalg.vector_norm(e / scale) / e.numel() ** 0.5
        return RKStep(y_new, error, stages), ratio

    # A code object of its own: torch's compile cache and recompile limit are per code object, so each
    # (func, method, tolerances) gets its own instead of sharing one.
    fresh = types.FunctionType(step.__code__.replace(), step.__globals__, "compiled_rk_step", None,
                               step.__closure__)
    return _watched(torch.compile(fresh, dynamic=False), fresh.__code__)


def _watched(compiled: Callable, code: types.CodeType) -> Callable:
    """``compiled``, watched over its first calls for a recompile at every call (a Python side effect in
    func): once torch's recompile limit is reached it runs eagerly, which is worth a warning."""
    watch = {"calls": 0}
    entries = getattr(torch._dynamo.eval_frame, "_debug_get_cache_entry_list", None)  # private: may go away
    if entries is None or not hasattr(torch._dynamo.config, "recompile_limit"):
        return compiled

    def step(*args):
        out = compiled(*args)
        if watch["calls"] <= _WATCHED_CALLS:
            watch["calls"] += 1
            limit = torch._dynamo.config.recompile_limit
            if len(entries(code)) >= limit:
                watch["calls"] = _WATCHED_CALLS + 1
                warnings.warn(
                    f"compile=True: torch compiled the step {limit} times (its recompile limit) and now runs "
                    f"it eagerly — the same results at eager speed. func probably has a Python side effect "
                    f"or reads a changing Python value (e.g. an evaluation counter); remove it, or use "
                    f"compile=False", RuntimeWarning, stacklevel=2)
        return out

    return step


_WATCHED_CALLS = 64  # shape, dtype and grad-mode recompiles are few; side-effect ones come at every call


def _weak(func: Callable) -> Callable[[], Callable]:
    try:
        return weakref.ref(func)
    except TypeError:  # not weakly referenceable (then not cached either)
        return lambda: func
