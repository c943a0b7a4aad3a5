"""The shipped tableaux satisfy the Runge–Kutta order conditions (Butcher's rooted trees up to order 5) for
their propagated and embedded weights; bosh3 is scipy's RK23 step for step; tsit5 is a 5th-order pair."""

import itertools

import numpy as np
import pytest

from bench.nfe_suite import PROBLEMS, run
from stability.methods import TABLEAUX


def order_conditions(a: np.ndarray, c: np.ndarray):
    """(order, name, Φ(t), 1/γ(t)) for the 17 rooted trees t of order ≤ 5: the method has order p when
    b·Φ(t) = 1/γ(t) for every tree of order ≤ p (Hairer–Nørsett–Wanner I, Table II.2.2)."""
    one = np.ones_like(c)
    ac, ac2, ac3 = a @ c, a @ c**2, a @ c**3
    aac = a @ ac
    return [
        (1, "•", one, 1.0),
        (2, "[•]", c, 1 / 2),
        (3, "[••]", c**2, 1 / 3), (3, "[[•]]", ac, 1 / 6),
        (4, "[•••]", c**3, 1 / 4), (4, "[•[•]]", c * ac, 1 / 8), (4, "[[••]]", ac2, 1 / 12),
        (4, "[[[•]]]", aac, 1 / 24),
        (5, "[••••]", c**4, 1 / 5), (5, "[••[•]]", c**2 * ac, 1 / 10), (5, "[[•][•]]", ac**2, 1 / 20),
        (5, "[•[••]]", c * ac2, 1 / 15), (5, "[•[[•]]]", c * aac, 1 / 30), (5, "[[•••]]", ac3, 1 / 20),
        (5, "[[•[•]]]", a @ (c * ac), 1 / 40), (5, "[[[••]]]", a @ ac2, 1 / 60),
        (5, "[[[[•]]]]", a @ aac, 1 / 120),
    ]


def matrices(tableau):
    s = tableau.stages
    a = np.zeros((s, s))
    for i, row in enumerate(tableau.a):
        a[i, : len(row)] = row
    return a, np.array(tableau.c), np.array(tableau.b)


@pytest.mark.parametrize("name", TABLEAUX)
def test_weights_satisfy_the_order_conditions_of_the_stated_order_and_not_the_next(name):
    tableau = TABLEAUX[name]
    a, c, b = matrices(tableau)
    conditions = order_conditions(a, c)
    for order, tree, phi, target in conditions:
        if order <= tableau.order:
            assert b @ phi == pytest.approx(target, abs=1e-14), (name, tree)
    if tableau.order < 5:  # the stated order is the order: some condition of the next one fails
        assert any(abs(b @ phi - target) > 1e-6 for order, _, phi, target in conditions
                   if order == tableau.order + 1)


@pytest.mark.parametrize("name", [name for name, t in TABLEAUX.items() if t.adaptive])
def test_embedded_weights_have_the_error_order(name):
    tableau = TABLEAUX[name]
    a, c, b = matrices(tableau)
    embedded = b - np.array(tableau.b_error)
    conditions = order_conditions(a, c)
    for order, tree, phi, target in conditions:
        if order <= tableau.error_order:
            assert embedded @ phi == pytest.approx(target, abs=1e-14), (name, tree)
    assert any(abs(embedded @ phi - target) > 1e-6 for order, _, phi, target in conditions
               if order == tableau.error_order + 1)


# Order of each method's continuous extension (its own dense output; the others use cubic Hermite).
DENSE_ORDER = {"bosh3": 3, "dopri5": 4, "tsit5": 4}


def test_every_dense_output_has_a_stated_order():
    assert set(DENSE_ORDER) == {name for name, t in TABLEAUX.items() if t.dense is not None}


@pytest.mark.parametrize("name", DENSE_ORDER)
def test_dense_output_weights_reach_b_at_the_step_end_and_have_their_order_inside(name):
    # b_i(θ) = Σ_j P_ij θ^{j+1}: b_i(1) = b_i, and a continuous extension of order q satisfies
    # b(θ)·Φ(t) = θ^|t|/γ(t) for every tree of order |t| ≤ q and every θ (Hairer–Nørsett–Wanner II.6).
    tableau = TABLEAUX[name]
    a, c, b = matrices(tableau)
    p = np.array(tableau.dense)
    np.testing.assert_allclose(p.sum(axis=1), b, atol=1e-13)
    misses = []
    for theta in (0.1, 0.37, 0.5, 0.83):
        weights = p @ theta ** np.arange(1, p.shape[1] + 1)
        for order, tree, phi, target in order_conditions(a, c):
            if order <= DENSE_ORDER[name]:
                assert weights @ phi == pytest.approx(theta**order * target, abs=1e-13), (name, tree, theta)
            elif order == DENSE_ORDER[name] + 1:
                misses.append(abs(weights @ phi - theta**order * target))
    assert max(misses) > 1e-4  # and not the next order


@pytest.mark.parametrize("problem, tol", list(itertools.product(PROBLEMS, [1e-3, 1e-6])))
def test_bosh3_is_scipys_rk23_step_for_step(problem, tol):
    row = run(problem, tol, method="bosh3")  # against scipy's RK23: the same pair, estimate and control
    assert row.nfe <= 1.10 * row.nfe_rk45
    assert row.error <= 1.01 * row.error_rk45 + 1e-12


@pytest.mark.parametrize("problem", PROBLEMS)
def test_tsit5_costs_and_errors_like_rk45(problem):
    # Another 5(4) pair: not step-for-step equal to RK45, but within 15% of its NFE and within 5x its error
    # at 1e-6 (measured: NFE 0.94-1.11x, error 0.55-1.24x); a wrong coefficient costs orders of magnitude.
    row = run(problem, 1e-6, method="tsit5")
    assert 0.8 * row.nfe_rk45 <= row.nfe <= 1.15 * row.nfe_rk45
    assert row.error <= 5 * row.error_rk45
