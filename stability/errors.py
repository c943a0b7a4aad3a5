"""Exceptions raised by the solvers: bad input is a ``ValueError``, a failed integration a ``SolverError``."""

from __future__ import annotations


class ODEInputError(ValueError):
    """The problem handed to a solver is malformed (shape, dtype, non-finite values, bad options)."""


class SolverError(RuntimeError):
    """An integration could not be completed; ``t`` and ``h`` say where it stopped."""

    def __init__(self, message: str, *, t: float | None = None, h: float | None = None) -> None:
        super().__init__(message)
        self.t, self.h = t, h


class StepSizeUnderflowError(SolverError):
    """The adaptive step size fell below the floating-point resolution of ``t``."""


class MaxStepsExceededError(SolverError):
    """The solver needed more than ``max_steps`` steps."""


class NonFiniteValueError(SolverError):
    """The vector field or the solution became NaN or infinite."""


class NonConvergenceError(SolverError):
    """An implicit stage equation could not be solved to the requested tolerance."""
