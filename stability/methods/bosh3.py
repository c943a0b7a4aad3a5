"""Bogacki–Shampine 3(2) (Bogacki & Shampine 1989, "A 3(2) pair of Runge–Kutta formulas").

Order 3 propagated, order-2 embedded error estimate, 4 stages of which 3 are new per step (FSAL), and a
cubic Hermite-type dense output — the method of MATLAB's ode23, scipy's RK23 and torchdiffeq's bosh3.
Cheaper per step than DOPRI5; the better choice at loose tolerances (≈ 1e-3) and for non-smooth fields.
"""

from stability.tableau import ButcherTableau

_B = (2 / 9, 1 / 3, 4 / 9, 0.0)
_B_EMBEDDED = (7 / 24, 1 / 4, 1 / 3, 1 / 8)

BOSH3 = ButcherTableau(
    name="bosh3",
    order=3,
    c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((), (1 / 2,), (0.0, 3 / 4), _B[:3]),
    b=_B,
    b_error=tuple(b - e for b, e in zip(_B, _B_EMBEDDED)),
    error_order=2,
    fsal=True,
    # y(t + θh) = y + h Σ_i k_i (P_i1 θ + P_i2 θ² + P_i3 θ³): the cubic through y_n, f_n, y_{n+1}, f_{n+1}.
    dense=((1.0, -4 / 3, 5 / 9), (0.0, 1.0, -2 / 3), (0.0, 4 / 3, -8 / 9), (0.0, -1.0, 1.0)),
)
