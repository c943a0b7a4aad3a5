"""Failure as a value: why each sample's integration ended, as a code, when ``throw=False``.

With ``throw=True`` (the default) a failed integration raises its ``SolverError``; with ``throw=False`` the
solve returns what it computed up to the failure: ``status`` (a ``Status`` per sample), ``t_reached`` (the
last time each sample's solution is known at) and ``messages`` (the error each failed sample would have
raised), output times past ``t_reached`` holding NaN.
"""

from __future__ import annotations

from enum import IntEnum

from stability.errors import MaxStepsExceededError, NonFiniteValueError, SolverError, StepSizeUnderflowError


class Status(IntEnum):
    """How a sample's integration ended (the codes of ``Solution.status``)."""

    SUCCESS = 0  # reached the last output time
    MAX_STEPS = 1  # needed more than max_steps steps
    STEP_UNDERFLOW = 2  # the step size fell below the resolution of t
    NON_FINITE = 3  # func or the solution became NaN or infinite
    STIFF = 4  # max_steps exceeded with the step size held at the stability limit: the problem looks stiff
    EVENT = 5  # stopped by a terminal event (a success: the solution is valid up to the event time)
    FAILED = 6  # another SolverError (e.g. an implicit stage equation that did not converge)


def status_of(error: SolverError) -> Status:
    """The code of a ``SolverError`` (``MaxStepsExceededError`` with its stiffness hint: ``STIFF``)."""
    if isinstance(error, MaxStepsExceededError):
        return Status.STIFF if getattr(error, "stiff_suspected", False) else Status.MAX_STEPS
    if isinstance(error, StepSizeUnderflowError):
        return Status.STEP_UNDERFLOW
    if isinstance(error, NonFiniteValueError):
        return Status.NON_FINITE
    return Status.FAILED
