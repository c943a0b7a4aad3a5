"""Property-based: random stable linear systems and tolerances — dopri5 tracks the matrix exponential."""

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from scipy.linalg import expm

from stability import odeint


@st.composite
def stable_linear_systems(draw):
    """A = −(S Sᵀ + cI)·scale + skew: eigenvalues with real parts < 0, plus rotation."""
    dim = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    s = rng.standard_normal((dim, dim))
    skew = rng.standard_normal((dim, dim))
    matrix = -(s @ s.T / dim + draw(st.floats(0.05, 2.0)) * np.eye(dim)) + (skew - skew.T)
    y0 = rng.standard_normal(dim)
    return matrix, y0


@given(system=stable_linear_systems(), log_tol=st.floats(-9, -4), t_end=st.floats(0.1, 5.0))
def test_dopri5_error_is_proportional_to_tolerance(system, log_tol, t_end):
    matrix, y0 = system
    tol = 10.0**log_tol
    a = torch.as_tensor(matrix)
    t_out = np.linspace(0.0, t_end, 4)
    ys = odeint(lambda t, y: a @ y, torch.as_tensor(y0), torch.as_tensor(t_out), rtol=tol, atol=tol)
    exact = np.stack([expm(matrix * s) @ y0 for s in t_out])
    # Local errors are held below tol per unit step; on a contractive system they do not amplify.
    scale = 1.0 + np.abs(exact).max()
    assert np.abs(ys.numpy() - exact).max() <= 50 * tol * scale * max(1.0, t_end)


@given(system=stable_linear_systems(), n=st.integers(1, 40), method=st.sampled_from(["euler", "heun", "rk4"]))
def test_fixed_step_equals_the_stability_polynomial(system, n, method):
    """On y' = Ay an explicit RK step is y ← R(hA) y with R the method's stability polynomial."""
    matrix, y0 = system
    h = 0.05
    hA = h * matrix
    eye = np.eye(len(y0))
    polynomial = {
        "euler": eye + hA,
        "heun": eye + hA + hA @ hA / 2,
        "rk4": eye + hA + hA @ hA / 2 + hA @ hA @ hA / 6 + hA @ hA @ hA @ hA / 24,
    }[method]
    a = torch.as_tensor(matrix)
    ys = odeint(lambda t, y: a @ y, torch.as_tensor(y0), [0.0, n * h], method=method, step_size=h)
    expected = np.linalg.matrix_power(polynomial, n) @ y0
    np.testing.assert_allclose(ys[-1].numpy(), expected, rtol=1e-10, atol=1e-12)
