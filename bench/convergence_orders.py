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
from tests.stability.test_solver_convergence import NONLINEAR_STEP_COUNTS, ORDERS, STEP_COUNTS


def final_error(field, y0, t_end, method, n, reference) -> float:
    y = odeint(field, torch.tensor(y0, dtype=torch.float64), [0.0, t_end], method=method, step_size=t_end / n)
    return float(np.abs(y[-1].numpy() - reference).max())


def main() -> None:
    linear_y0 = [1.0, -0.5, 0.25]
    linear_ref = linear_exact(LINEAR_MATRIX, np.array(linear_y0), 2.0)
    duffing_ref = scipy_reference(forced_duffing, [1.0, 0.0], [0.0, 4.0])[-1]
    for method, expected in ORDERS.items():
        linear = [final_error(linear_field(LINEAR_MATRIX), linear_y0, 2.0, method, n, linear_ref)
                  for n in STEP_COUNTS[method]]
        duffing = [final_error(forced_duffing, [1.0, 0.0], 4.0, method, n, duffing_ref)
                   for n in NONLINEAR_STEP_COUNTS[method]]
        linear_order = observed_order([2.0 / n for n in STEP_COUNTS[method]], linear)
        duffing_order = observed_order([4.0 / n for n in NONLINEAR_STEP_COUNTS[method]], duffing)
        print(f"{method:7s} expected {expected}  linear {linear_order:.3f}  Duffing {duffing_order:.3f}")


if __name__ == "__main__":
    main()
