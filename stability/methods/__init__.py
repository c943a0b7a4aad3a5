"""The Runge–Kutta methods shipped with ``stability``: each module is its tableau, nothing else (explicit ones
as ``ButcherTableau``; the adaptive stiff ones as ``stiff_tableau.ESDIRKTableau`` / ``RosenbrockTableau``)."""

from stability.methods.bosh3 import BOSH3
from stability.methods.dopri5 import DOPRI5
from stability.methods.euler import EULER
from stability.methods.heun import HEUN
from stability.methods.kvaerno5 import KVAERNO5
from stability.methods.rk4 import RK4
from stability.methods.rodas4 import RODAS4
from stability.methods.tsit5 import TSIT5

# Every method name ``stability`` knows: explicit ones by their tableau, implicit ones by name (their solver
# classes live in ``stability.backward_euler``; ``stability.solver.SOLVERS`` maps every name to its class).
TABLEAUX = {"euler": EULER, "heun": HEUN, "rk4": RK4, "bosh3": BOSH3, "dopri5": DOPRI5, "tsit5": TSIT5}
IMPLICIT = ("backward_euler",)
# The adaptive stiff methods (``stability.stiff_solvers``): an ESDIRK and a Rosenbrock method.
STIFF = {"kvaerno5": KVAERNO5, "rodas4": RODAS4}
METHOD_NAMES = (*TABLEAUX, *IMPLICIT, *STIFF)

__all__ = ["BOSH3", "DOPRI5", "EULER", "HEUN", "IMPLICIT", "KVAERNO5", "METHOD_NAMES", "RK4", "RODAS4",
           "STIFF", "TABLEAUX", "TSIT5"]
