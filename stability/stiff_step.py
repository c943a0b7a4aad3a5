"""The step of an adaptive stiff method as the integration loops call it, for shared and per-sample control:
``StiffStep(func, options, per_sample)(evaluate, t, y, h, tableau, first_stage) -> RKStep``, the signature of
``runge_kutta.rk_step``. It keeps the linearization (J at (t, y), ``stability.linearization``) while the loop
retries the same (t, y) after a rejection, so a rejected step costs a new factorisation, not a new J."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from stability.checks import time_dtype
from stability.errors import NonConvergenceError
from stability.esdirk import NEWTON_FAILURE, esdirk_step
from stability.linearization import Linearization, StiffStats, linearize
from stability.options import ImplicitOptions, SolverOptions
from stability.rosenbrock import rosenbrock_step
from stability.runge_kutta import RKStep
from stability.stiff_tableau import ESDIRKTableau


class StiffStep:
    """One step of ``options.method`` (an ESDIRK or Rosenbrock tableau) from (t, y) with step h; ``func`` is
    the user's f (for Jacobians: it receives t as the loop's func does), ``evaluate`` the loop's counted f."""

    def __init__(self, func: Callable, options: SolverOptions, per_sample: bool) -> None:
        self.func, self.options, self.per_sample = func, options, per_sample
        self.implicit = options.implicit or ImplicitOptions()
        self.linearization: Linearization | None = None
        self._key: tuple | None = None

    def __call__(self, evaluate: Callable, t: float | Tensor, y: Tensor, h: float | Tensor, tableau,
                 first_stage: Tensor | None, stats: StiffStats) -> RKStep:
        """``stats`` receives the linear algebra's counts (``evaluate`` counts the f evaluations)."""
        linearization = self.linearize(t, y, stats)
        try:
            if isinstance(tableau, ESDIRKTableau):
                return esdirk_step(evaluate, self.func, t, y, h, tableau, first_stage, linearization,
                                   self.options.rtol, self.options.atol, self.implicit, self.per_sample)
            return rosenbrock_step(evaluate, t, y, h, tableau, first_stage, linearization)
        except NonConvergenceError:  # a Krylov solve fell short: reject the step, retry with a smaller h
            f0 = first_stage if first_stage is not None else evaluate(t, y)
            return RKStep(y, NEWTON_FAILURE * (1 + y.detach().abs()), [f0, f0])

    def linearize(self, t: float | Tensor, y: Tensor, stats: StiffStats) -> Linearization:
        """J at (t, y): reused while the loop retries the same state (after a rejection)."""
        key = (y._version, float(t) if not isinstance(t, Tensor) else tuple(t.tolist()))
        if self.linearization is None or self.linearization.y is not y or self._key != key:
            t_tensor = t.to(time_dtype(y)) if isinstance(t, Tensor) else _scalar_time(t, y)
            self.linearization = linearize(self.func, t_tensor, y, self.per_sample, self.implicit, stats)
            self._key = key
        self.linearization.stats = stats
        return self.linearization


def _scalar_time(t: float, y: Tensor) -> Tensor:
    return torch.full((), float(t), dtype=time_dtype(y), device=y.device)
