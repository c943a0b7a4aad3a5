"""The explicit Runge–Kutta methods shipped with ``stability``: each module is its tableau, nothing else."""

from stability.methods.dopri5 import DOPRI5
from stability.methods.euler import EULER
from stability.methods.heun import HEUN
from stability.methods.rk4 import RK4

# Every method name ``stability`` knows: explicit ones by their tableau, implicit ones by name (their solver
# classes live in ``stability.backward_euler``; ``stability.solver.SOLVERS`` maps every name to its class).
TABLEAUX = {"euler": EULER, "heun": HEUN, "rk4": RK4, "dopri5": DOPRI5}
IMPLICIT = ("backward_euler",)
METHOD_NAMES = (*TABLEAUX, *IMPLICIT)

__all__ = ["DOPRI5", "EULER", "HEUN", "IMPLICIT", "METHOD_NAMES", "RK4", "TABLEAUX"]
