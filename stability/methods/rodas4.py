"""Rodas4 (Hairer & Wanner, "Solving ODEs II", IV.7; the RODAS code's coefficient set 1).

Rosenbrock method: 6 stages, each one linear solve with the matrix I − hγJ (γ = 1/4), no Newton iteration;
order 4, embedded order 3 (the error estimate is the last stage u_6), stiffly accurate and L-stable, so it
also solves index-1 DAEs. J = ∂f/∂y and f_t = ∂f/∂t at the start of the step (the order needs the exact J).
Dense output: the RODAS code's continuous extension of order 3 from the stages (no extra evaluation).
"""

from stability.stiff_tableau import RosenbrockTableau

_A5 = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950)

RODAS4 = RosenbrockTableau(
    name="rodas4",
    order=4,
    error_order=3,
    gamma=0.25,
    alpha=(0.0, 0.386, 0.21, 0.63, 1.0, 1.0),
    gamma_t=(0.25, -0.1043, 0.1035, -0.0362, 0.0, 0.0),
    a=(
        (),
        (1.544,),
        (0.9466785280815826, 0.2557011698983284),
        (3.314825187068521, 2.896124015972201, 0.9986419139977817),
        _A5,
        (*_A5, 1.0),
    ),
    coupling=(
        (),
        (-5.6688,),
        (-2.430093356833875, -0.2063599157091915),
        (-0.1073529058151375, -9.594562251023355, -20.47028614809616),
        (7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160),
        (8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054),
    ),
    m=(*_A5, 1.0, 1.0),
    m_error=(0.0, 0.0, 0.0, 0.0, 0.0, 1.0),
    dense_weights=(
        (10.12623508344586, -7.487995877610167, -34.80091861555747, -7.992771707568823, 1.025137723295662,
         0.0),
        (-0.6762803392801253, 6.087714651680015, 16.43084320892478, 24.76722511418386, -6.594389125716872,
         0.0),
    ),
)
