"""ODE solvers in PyTorch written for the analysis of deep networks as numerical schemes: explicit Runge–Kutta
methods as Butcher tableaux run by one generic stepper, backward Euler by Newton–Krylov; ``solve``/``odeint``
run one integration loop (``stability.integrate``) with any step control × any gradient strategy; per-sample
events (``Event``, ``stability.event_loop``) and failure as a value (``throw=False``, ``Status``)."""

from stability.adjoint import AdjointSolution
from stability.backward_euler import BackwardEuler, ImplicitStats, backward_euler_step
from stability.base import OdeSolver
from stability.errors import (
    MaxStepsExceededError,
    NonConvergenceError,
    NonFiniteValueError,
    ODEInputError,
    SolverError,
    StepSizeUnderflowError,
)
from stability.events import Event
from stability.memory import peak_memory
from stability.odeint import (
    odeint,
    odeint_adjoint,
    odeint_checkpointed,
    odeint_per_sample,
    solve,
    solve_adjoint,
    solve_checkpointed,
    solve_per_sample,
)
from stability.options import ImplicitOptions, SolverOptions
from stability.pid_controller import PIDController
from stability.solution import EventSolution, PerSampleSolution, Solution, SolverStats
from stability.solver import RK4, SOLVERS, Bosh3, Dopri5, Euler, Heun, RungeKuttaSolver, Tsit5, step
from stability.status import Status
from stability.step_control import PIController
from stability.tableau import ButcherTableau

__all__ = [
    "RK4",
    "BackwardEuler",
    "ImplicitOptions",
    "ImplicitStats",
    "backward_euler_step",
    "AdjointSolution",
    "PerSampleSolution",
    "odeint_adjoint",
    "odeint_checkpointed",
    "odeint_per_sample",
    "peak_memory",
    "solve_adjoint",
    "solve_checkpointed",
    "solve_per_sample",
    "SOLVERS",
    "ButcherTableau",
    "Event",
    "EventSolution",
    "Status",
    "Bosh3",
    "Dopri5",
    "Tsit5",
    "Euler",
    "Heun",
    "MaxStepsExceededError",
    "NonConvergenceError",
    "NonFiniteValueError",
    "ODEInputError",
    "OdeSolver",
    "PIController",
    "PIDController",
    "RungeKuttaSolver",
    "Solution",
    "SolverOptions",
    "SolverError",
    "SolverStats",
    "StepSizeUnderflowError",
    "odeint",
    "solve",
    "step",
]
