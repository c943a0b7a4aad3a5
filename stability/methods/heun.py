"""Heun's method (explicit trapezoid, RK2): y_{n+1} = y_n + h/2 (k1 + k2), k2 = f(t_n + h, y_n + h k1).

Order 2, two stages; the embedded Euler step gives an order-1 error estimate, so it also runs adaptively.
"""

from stability.tableau import ButcherTableau

HEUN = ButcherTableau(
    name="heun",
    order=2,
    c=(0.0, 1.0),
    a=((), (1.0,)),
    b=(0.5, 0.5),
    b_error=(0.5 - 1.0, 0.5 - 0.0),
    error_order=1,
)
