"""Tsitouras 5(4) (Ch. Tsitouras 2011, "Runge–Kutta pairs of order 5(4) satisfying only the first column
simplifying assumption", Comput. Math. Appl. 62, 770–775).

Order 5 propagated, order-4 embedded error estimate, 7 stages of which 6 are new per step (FSAL), and the
paper's order-4 continuous extension. Its coefficients minimise the principal truncation error of the
5th-order formula without the usual simplifying assumptions, so at equal cost it is usually more accurate
than DOPRI5 (the default of diffrax and of Julia's DifferentialEquations.jl). Coefficients as printed in the
paper (Table 1), to double precision; ``tests/stability/test_solver_methods.py`` checks the order conditions.
"""

from stability.tableau import ButcherTableau

_C = (0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0)
_B = (
    0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742, -3.290069515436081,
    2.324710524099774, 0.0,
)
_B_EMBEDDED = (
    0.09468075576583945, 0.009183565540343254, 0.4877705284247616, 1.234297566930479, -2.7077123499835256,
    1.866628418170587, 1 / 66,
)


def _expanded(scale: float, *factors: tuple[float, ...]) -> tuple[float, ...]:
    """The coefficients of θ¹…θ⁴ of scale·Π factors (each factor a polynomial in θ, lowest power first)."""
    product = [scale]
    for factor in factors:
        out = [0.0] * (len(product) + len(factor) - 1)
        for i, p in enumerate(product):
            for j, f in enumerate(factor):
                out[i + j] += p * f
        product = out
    if product[0] != 0.0 or len(product) > 5:
        raise ValueError("a dense-output weight must be a polynomial of degree ≤ 4 without constant term")
    return tuple(product[1:]) + (0.0,) * (5 - len(product))


_THETA, _THETA2 = (0.0, 1.0), (0.0, 0.0, 1.0)
# The interpolation weights b_i(θ) of the paper, in its factored form; y(t + θh) = y + h Σ_i b_i(θ) k_i.
_DENSE = (
    _expanded(-1.0530884977290216, _THETA, (-1.3299890189751412, 1.0),
              (0.7139816917074209, -1.4364028541716351, 1.0)),
    _expanded(0.1017, _THETA2, (1.2949852507374631, -2.1966568338249754, 1.0)),
    _expanded(2.490627285651252793, _THETA2, (1.57803468208092486, -2.38535645472061657, 1.0)),
    _expanded(-16.54810288924490272, _THETA2, (-1.21712927295533244, 1.0), (-0.61620406037800089, 1.0)),
    _expanded(47.37952196281928122, _THETA2, (-1.203071208372362603, 1.0), (-0.658047292653547382, 1.0)),
    _expanded(-34.87065786149660974, _THETA2, (-1.2, 1.0), (-2 / 3, 1.0)),
    _expanded(2.5, _THETA2, (-1.0, 1.0), (-0.6, 1.0)),
)

TSIT5 = ButcherTableau(
    name="tsit5",
    order=5,
    c=_C,
    a=(
        (),
        (0.161,),
        (-0.008480655492356989, 0.335480655492357),
        (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
        (5.325864828439257, -11.748883564062828, 7.4955393428898365, -0.09249506636175525),
        (5.86145544294642, -12.92096931784711, 8.159367898576159, -0.071584973281401, -0.028269050394068383),
        _B[:6],
    ),
    b=_B,
    b_error=tuple(b - e for b, e in zip(_B, _B_EMBEDDED)),
    error_order=4,
    fsal=True,
    dense=_DENSE,
)
