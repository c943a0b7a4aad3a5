"""proofs_check.bounds: the per-scheme perturbation bounds, checked against closed forms and the tableaux."""

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from proofs_check.bounds import (
    amplification_bound,
    cumulative_bound,
    exponential_envelope,
    increment_lipschitz,
    revnet_bound,
    revnet_step_matrix,
    stage_lipschitz,
    step_factor,
    tableau_of,
)
from stability import SOLVERS, ButcherTableau
from stability.methods import DOPRI5

step_sizes = st.floats(1e-4, 3.0)
constants = st.floats(0.0, 20.0, allow_subnormal=False)
EXPLICIT = sorted(name for name, cls in SOLVERS.items()
                  if isinstance(getattr(cls, "tableau", None), ButcherTableau))


@given(h=step_sizes, k=constants)
def test_rk4_increment_constant_is_the_closed_form(h, k):
    z = h * k
    assert increment_lipschitz("rk4", h, k) == pytest.approx(
        k * (1 + z / 2 + z**2 / 6 + z**3 / 24), rel=1e-13
    )


@given(h=step_sizes, k=constants)
def test_euler_and_heun_closed_forms(h, k):
    z = h * k
    assert step_factor("euler", h, k) == pytest.approx(1 + z, rel=1e-14)
    assert step_factor("heun", h, k) == pytest.approx(1 + z + z**2 / 2, rel=1e-14)


@given(h=step_sizes, k=constants)
def test_factor_of_nonnegative_tableaux_is_the_taylor_polynomial_of_exp(h, k):
    """Euler, Heun, RK4 have s = p stages and a ≥ 0: 1 + hL_Φ = Σ_{j≤p} (hK)^j / j! ≤ e^{hK}."""
    z = h * k
    for name in ("euler", "heun", "rk4"):
        order = tableau_of(name).order
        taylor = sum(z**j / math.factorial(j) for j in range(order + 1))
        assert step_factor(name, h, k) == pytest.approx(taylor, rel=1e-13)
        assert step_factor(name, h, k) <= math.exp(z) * (1 + 1e-15)


@given(h=step_sizes, k=constants)
def test_stage_recursion_for_every_shipped_tableau(h, k):
    """κ_i = K(1 + h Σ_j |a_ij| κ_j) written out independently, for every tableau in stability.methods."""
    for name in EXPLICIT:
        tableau = tableau_of(name)
        a = np.abs(np.array([list(row) + [0.0] * (tableau.stages - len(row)) for row in tableau.a]))
        kappa = np.zeros(tableau.stages)
        for i in range(tableau.stages):
            kappa[i] = k * (1 + h * a[i] @ kappa)
        np.testing.assert_allclose(stage_lipschitz(tableau, h, k), kappa, rtol=1e-13)
        expected = np.abs(np.array(tableau.b)) @ kappa
        assert increment_lipschitz(name, h, k) == pytest.approx(expected, rel=1e-13)
        assert increment_lipschitz(name, h, k) >= k * (1 - 1e-15)  # Σ b_i = 1 and κ_i ≥ K


def test_dopri5_bound_exceeds_the_exponential():
    """Negative coefficients inflate Dormand–Prince's factor beyond e^{hK}: even as h → 0 it is
    1 + h·Σ|b_i|·K with Σ|b_i| ≈ 1.645 (b_5 < 0), so the envelope e^{K(t − t0)} is not implied."""
    weight = sum(abs(b) for b in DOPRI5.b)
    assert weight == pytest.approx(1.6447, abs=1e-4)
    assert step_factor(DOPRI5, 0.1, 2.0) > math.exp(0.2)
    assert step_factor(DOPRI5, 1e-6, 1.0) == pytest.approx(1 + 1e-6 * weight, rel=1e-10)


@given(h=st.floats(1e-4, 0.99), k=st.floats(0.0, 1.0))
def test_backward_euler_factor(h, k):
    assert step_factor("backward_euler", h, k) == pytest.approx(1 / (1 - h * k), rel=1e-14)


def test_backward_euler_needs_hk_below_one():
    with pytest.raises(ValueError, match="hK < 1"):
        step_factor("backward_euler", 0.5, 2.0)


@pytest.mark.parametrize("bad", [(float("nan"), 1.0), (0.1, -1.0), (0.1, float("inf"))])
def test_bad_arguments_raise(bad):
    with pytest.raises(ValueError):
        step_factor("euler", *bad)


def test_unknown_method_lists_known_tableaux():
    with pytest.raises(ValueError, match="rk4"):
        increment_lipschitz("midpoint", 0.1, 1.0)


@given(h=step_sizes, k=constants, n=st.integers(1, 60))
def test_amplification_is_the_product(h, k, n):
    bound = amplification_bound("euler", [h] * n, k)
    assert bound.shape == (n + 1,)
    assert bound[0] == 1.0
    np.testing.assert_allclose(bound, (1 + h * k) ** np.arange(n + 1), rtol=1e-12)
    envelope = exponential_envelope(k, np.arange(n + 1) * h)
    assert np.all(bound <= envelope * (1 + 1e-12))


def test_cumulative_bound_overflows_to_inf_not_nan():
    bound = cumulative_bound([1e200, 1e200])
    assert bound[1] == pytest.approx(1e200, rel=1e-12) and np.isinf(bound[2])


@given(
    h=step_sizes, kf=constants, kg=constants, parts=st.tuples(st.floats(0.01, 10.0), st.floats(0.01, 10.0))
)
def test_revnet_bound_dominates_the_scalar_worst_case(h, kf, kg, parts):
    """|M(|ε1|, |ε2|)| ≤ ‖M‖₂|ε| ≤ (1 + h max K)²|ε|: never looser than two plain Euler steps."""
    matrix = revnet_step_matrix(h, kf, kg)
    assert np.all(matrix >= 0)
    bound = revnet_bound([matrix], np.array([parts]))
    assert bound[1, 0] <= np.linalg.norm(matrix, 2) * (1 + 1e-12)
    assert np.linalg.norm(matrix, 2) <= (1 + h * max(kf, kg)) ** 2 * (1 + 1e-12)


def test_revnet_bound_checks_shapes():
    with pytest.raises(ValueError, match=r"\[B, 2\]"):
        revnet_bound([np.eye(2)], np.ones(3))
