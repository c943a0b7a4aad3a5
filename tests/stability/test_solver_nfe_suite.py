"""NFE at equal tolerance within +10% of scipy's RK45, error no worse, on the suite ``bench/nfe_suite.py``."""

import pytest

from bench.nfe_suite import PROBLEMS, TOLERANCES, run


@pytest.mark.parametrize("tol", TOLERANCES)
@pytest.mark.parametrize("problem", PROBLEMS)
def test_nfe_and_error_against_scipy_rk45(problem, tol):
    row = run(problem, tol)
    assert row.nfe <= 1.10 * row.nfe_rk45
    assert row.error <= 1.01 * row.error_rk45 + 1e-12  # 1%: round-off between two implementations
