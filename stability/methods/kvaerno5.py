"""Kværnø 5(4) (Kværnø 2004, "Singly diagonally implicit Runge–Kutta methods with an explicit first stage",
BIT 44), the method of diffrax's ``Kvaerno5``.

ESDIRK: 7 stages, the first explicit, six implicit ones with the diagonal γ = 0.26; order 5, embedded order 4
(the sixth stage), stiffly accurate and L-stable (R(∞) = 0), so y_{n+1} is the last stage and f(y_{n+1}) the
next step's first (FSAL). Cubic Hermite dense output. The Newton predictors are OrdinaryDiffEq.jl's (as in
diffrax, with α21 = 1). Some stage times lie past the step (c_3 ≈ 1.23).
"""

from stability.stiff_tableau import ESDIRKTableau

_GAMMA = 0.26
_A6 = (0.13855640231268224, 0.0, -0.04245337201752043, 0.02446657898003141, 0.61943039072480676)
_A7 = (0.13659751177640291, 0.0, -0.05496908796538376, -0.04118626728321046, 0.62993304899016403,
       0.06962479448202728)
_B = (*_A7, _GAMMA)
_B_EMBEDDED = (*_A6, _GAMMA, 0.0)

KVAERNO5 = ESDIRKTableau(
    name="kvaerno5",
    order=5,
    error_order=4,
    gamma=_GAMMA,
    c=(0.0, 0.52, 1.230333209967908, 0.8957659843500759, 0.43639360985864756, 1.0, 1.0),
    a=(
        (),
        (_GAMMA,),
        (0.13, 0.84033320996790809),
        (0.22371961478320505, 0.47675532319799699, -0.06470895363112615),
        (0.16648564323248321, 0.10450018841591720, 0.03631482272098715, -0.13090704451073998),
        _A6,
        _A7,
    ),
    b=_B,
    b_error=tuple(b - e for b, e in zip(_B, _B_EMBEDDED)),
    predictor=(
        (),
        (1.0,),
        (-1.366025403784441, 2.3660254037844357),
        (-0.19650552613122207, 0.8113579546496623, 0.38514757148155954),
        (0.10375304369958693, 0.937994698066431, -0.04174774176601781, 0.0),
        (-0.17281112873898072, 0.6235784481025847, 0.5492326806363959, 0.0, 0.0),
        (*_A6, _GAMMA),
    ),
)
