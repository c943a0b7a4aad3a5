"""Print the empirical convergence orders quoted in README: python -m bench.convergence_orders."""

import numpy as np
import torch

from stability import odeint
from tests.problems import (
    LINEAR_MATRIX,
    forced_duffing,
    linear_exact,
    linear_field,
    observed_order,
    scipy_reference,
)
from tests.test_solver_convergence import NONLINEAR_STEP_COUNTS, ORDERS, STEP_COUNTS

for method in ORDERS:
    y0 = np.array([1.0, -0.5, 0.25])
    ex = linear_exact(LINEAR_MATRIX, y0, 2.0)
    hs = [2.0 / n for n in STEP_COUNTS[method]]
    e1 = [
        np.abs(
            odeint(linear_field(LINEAR_MATRIX), torch.tensor(y0), [0.0, 2.0], method=method, step_size=h)[
                -1
            ].numpy()
            - ex
        ).max()
        for h in hs
    ]
    ref = scipy_reference(forced_duffing, [1.0, 0.0], [0.0, 4.0])[-1]
    hs2 = [4.0 / n for n in NONLINEAR_STEP_COUNTS[method]]
    e2 = [
        np.abs(
            odeint(
                forced_duffing,
                torch.tensor([1.0, 0.0], dtype=torch.float64),
                [0.0, 4.0],
                method=method,
                step_size=h,
            )[-1].numpy()
            - ref
        ).max()
        for h in hs2
    ]
    print(f"{method}: linear {observed_order(hs, e1):.3f}  duffing {observed_order(hs2, e2):.3f}")
