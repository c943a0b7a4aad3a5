"""The explicit Runge–Kutta methods shipped with ``stability``: each module is its tableau, nothing else."""

from stability.methods.dopri5 import DOPRI5
from stability.methods.euler import EULER
from stability.methods.heun import HEUN
from stability.methods.rk4 import RK4

__all__ = ["DOPRI5", "EULER", "HEUN", "RK4"]
