"""Explicit (forward) Euler: y_{n+1} = y_n + h f(t_n, y_n). Order 1, one stage.

A residual block y + h·f(y) is exactly one step of this scheme; a perturbation grows at most as (1 + hK)^n.
"""

from stability.tableau import ButcherTableau

EULER = ButcherTableau(name="euler", order=1, c=(0.0,), a=((),), b=(1.0,))
