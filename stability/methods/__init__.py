"""The explicit Runge–Kutta methods shipped with ``stability``: each module is its tableau, nothing else."""

from stability.methods.bosh3 import BOSH3
from stability.methods.dopri5 import DOPRI5
from stability.methods.euler import EULER
from stability.methods.heun import HEUN
from stability.methods.rk4 import RK4
from stability.methods.tsit5 import TSIT5

# Every method name ``stability`` knows: explicit ones by their tableau, implicit ones by name (their solver
# classes live in ``stability.backward_euler``; ``stability.solver.SOLVERS`` maps every name to its class).
TABLEAUX = {"euler": EULER, "heun": HEUN, "rk4": RK4, "bosh3": BOSH3, "dopri5": DOPRI5, "tsit5": TSIT5}
IMPLICIT = ("backward_euler",)
METHOD_NAMES = (*TABLEAUX, *IMPLICIT)

__all__ = ["BOSH3", "DOPRI5", "EULER", "HEUN", "IMPLICIT", "METHOD_NAMES", "RK4", "TABLEAUX", "TSIT5"]
