"""The classical Runge–Kutta method (Kutta 1901): order 4, four stages, weights (1, 2, 2, 1)/6.

Its increment function is Lipschitz with constant K(1 + hK/2 + (hK)²/6 + (hK)³/24).
"""

from stability.tableau import ButcherTableau

RK4 = ButcherTableau(
    name="rk4",
    order=4,
    c=(0.0, 0.5, 0.5, 1.0),
    a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
    b=(1 / 6, 1 / 3, 1 / 3, 1 / 6),
)
