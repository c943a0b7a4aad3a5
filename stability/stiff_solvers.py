"""The adaptive stiff solvers: ``Kvaerno5`` (ESDIRK 5(4)) and ``Rodas4`` (Rosenbrock 4(3)).

They are ``RungeKuttaSolver``s whose step is ``stiff_step.StiffStep``: the same adaptive loop, error norm,
controller, initial step, end-of-interval stretch and cubic Hermite dense output as the explicit methods; per-
sample control runs the same step in ``per_sample.PerSampleStepper``. Importing this module registers them in
``solver.SOLVERS`` (``stability`` imports it).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stability import methods
from stability.base import TimeVectorField
from stability.linearization import StiffStats
from stability.options import SolverOptions
from stability.runge_kutta import RKStep
from stability.solver import SOLVERS, RungeKuttaSolver
from stability.stiff_step import StiffStep


class StiffSolver(RungeKuttaSolver):
    """A ``RungeKuttaSolver`` whose step solves the stiff method's implicit stages (``options.implicit``: an
    ``ImplicitOptions``: dense or Krylov linear algebra, Newton and GMRES caps). ``stats`` is a
    ``StiffStats``: f evaluations, Jacobians, factorisations, linear solves, Jacobian-vector products."""

    def __init__(self, func: TimeVectorField, t0: float, y0: Tensor, t_bound: float, options=None,
                 **keywords) -> None:
        super().__init__(func, t0, y0, t_bound, options, **keywords)
        self.stats = StiffStats(**vars(self.stats))  # the counts so far (first evaluation, initial step)
        self._step = StiffStep(func, self.options, per_sample=False)

    def _rk_step(self, t: float, y: Tensor, h: float) -> tuple[RKStep, float]:
        result = self._step(self.fun, t, y, h, self.tableau, self._first_stage, self.stats)
        return result, float(self._norm(result.error, y, result.y, self.rtol, self.atol))

    @classmethod
    def single_step(cls, func: TimeVectorField, t: float, y: Tensor, h: float) -> Tensor:
        """y_{n+1} of one step of this method from (t, y) with step h; no error control, no statistics."""
        options = SolverOptions(method=cls.tableau.name)
        stepper = StiffStep(func, options, per_sample=False)
        fun = lambda s, state: func(torch.full((), s, dtype=state.dtype, device=state.device), state)  # noqa: E731
        return stepper(fun, float(t), y, float(h), cls.tableau, None, StiffStats()).y


class Kvaerno5(StiffSolver):
    """Kværnø 5(4) ESDIRK: L-stable, stiffly accurate, FSAL; simplified Newton per stage, IFT gradients."""

    tableau = methods.KVAERNO5


class Rodas4(StiffSolver):
    """Rodas4 Rosenbrock 4(3): L-stable, stiffly accurate; one linear solve per stage, no Newton."""

    tableau = methods.RODAS4


SOLVERS.update(kvaerno5=Kvaerno5, rodas4=Rodas4)
