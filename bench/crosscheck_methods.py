"""Our explicit tableaux against torchode's implementations of the same methods, step for step.

A forced Duffing oscillator (a batch of 4 initial states, float64) is integrated over [0, 4] with fixed steps
by ours and by torchode (``FixedStepController``): the same tableau must give the same numbers up to
rounding, whatever the step. The order conditions (``tests/stability/test_solver_methods.py``) prove each
method's order; this shows the coefficients are those of the published method the peers ship.

Run:  bash bench/setup.sh && python -m bench.crosscheck_methods
"""

from __future__ import annotations

import torch
import torchode

import stability

PEERS = {"dopri5": torchode.Dopri5, "tsit5": torchode.Tsit5}


def duffing(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """x'' = −0.2 x' + x − x³ + 0.3 cos t, as y = (x, x') of shape [B, 2]; t is 0-d or [B]."""
    return torch.stack([y[:, 1], -0.2 * y[:, 1] + y[:, 0] - y[:, 0] ** 3 + 0.3 * torch.cos(t)], -1)


def torchode_fixed(method: str, y0: torch.Tensor, t1: float, h: float) -> torch.Tensor:
    term = torchode.ODETerm(duffing)
    solver = torchode.AutoDiffAdjoint(PEERS[method](term=term), torchode.FixedStepController())
    t_eval = torch.tensor([[0.0, t1]] * y0.shape[0], dtype=y0.dtype)
    problem = torchode.InitialValueProblem(y0=y0, t_eval=t_eval)
    return solver.solve(problem, dt0=torch.full((y0.shape[0],), h, dtype=y0.dtype)).ys[:, -1]


def main() -> None:
    y0 = torch.tensor([[1.0, 0.0], [0.5, -0.3], [-1.2, 0.4], [0.0, 1.0]], dtype=torch.float64)
    t1 = 4.0
    print(f"torchode {torchode.__version__}; forced Duffing, batch 4, float64, t in [0, {t1}], fixed steps")
    print(f"{'method':>7} {'steps':>6} {'max |ours - torchode|':>22} {'max |y|':>8}")
    for method in PEERS:
        for steps in (10, 40, 400):
            ours = stability.odeint(duffing, y0, [0.0, t1], method=method, step_size=t1 / steps)[-1]
            peer = torchode_fixed(method, y0, t1, t1 / steps)
            difference, size = float((ours - peer).abs().max()), float(ours.abs().max())
            print(f"{method:>7} {steps:>6} {difference:>22.2e} {size:>8.3f}")


if __name__ == "__main__":
    main()
